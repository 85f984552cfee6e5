"""The plans in config/plans/ → each study's ablations (the rule the pipeline applies).

Rule (also in config/plans/README.md):
- every `*.txt` / `*.md` file in the plans directory (config key `plans_dir`, default
  `config/plans`, relative to the workflow root) is a plan; files are read in name order;
- a plan's title names its study; a study's ablations are the union of its plans' ablations in
  file order (plans 001 + 002 → pcclip's four ablations);
- plans accumulate as a research log: a later plan ablating a part an earlier plan already
  ablates is a *follow-up*; its ablation is its own table, id `<part>_p<plan>` (`<plan>` the
  file name's leading token, e.g. `rank_weight_p005` for `005_….txt`), beside the first plan's
  (whose id stays `<part>`); variants it shares with other plans resolve to the same config
  hash and run once (one plan ablating a part twice is refused by the parser);
- a study block that lists `ablations:` explicitly in the config (e.g. an overlay trimming the
  values for a quick run) uses those instead of its plans; `check-config` says so;
- a plan whose study is disabled is parsed and checked, then skipped with a note; a plan that does not check stops the pipeline before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .parse import Plan, PlanError, parse_plan

PLAN_SUFFIXES = (".txt", ".md")


def plan_files(plans_dir) -> list[Path]:
    d = Path(plans_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir()
                  if p.is_file() and p.suffix in PLAN_SUFFIXES and not p.name.startswith(".")
                  and p.name.lower() != "readme.md")


def plan_tag(path) -> str:
    """A plan's short name for ids: its file name's leading token (`005` of
    `005_5f77….txt`), lower-cased, other characters as `_`."""
    import re

    stem = Path(path).stem
    head = stem.split("_")[0] or stem
    return re.sub(r"[^a-z0-9]+", "_", head.lower()).strip("_") or "x"


@dataclass
class PlanSet:
    plans: list = field(default_factory=list)       # [Plan]
    by_study: dict = field(default_factory=dict)    # study → [ablation in config form]
    sources: dict = field(default_factory=dict)     # study → [plan file]
    origins: dict = field(default_factory=dict)     # (study, ablation id) → its plan file
    followups: dict = field(default_factory=dict)   # (study, follow-up id) → the earlier plan

    def origin(self, study: str, ablation_id: str) -> Plan:
        path = self.origins[(study, ablation_id)]
        return next(p for p in self.plans if p.path == path)


def load_plans(files) -> PlanSet:
    """Parses every plan; all problems of all files are raised together (one ConfigError)."""
    ps, errors, seen = PlanSet(), [], {}
    for f in files:
        try:
            plan: Plan = parse_plan(f)
        except PlanError as e:
            errors.append(str(e))
            continue
        ps.plans.append(plan)
        ps.sources.setdefault(plan.study, []).append(plan.path)
        for a in plan.ablations:
            k = (plan.study, a.id)
            cfg = a.config()
            if k in seen:  # a follow-up on a part an earlier plan ablates: its own table
                fid = f"{a.id}_p{plan_tag(plan.path)}"
                if (plan.study, fid) in seen:
                    p0, l0 = seen[(plan.study, fid)]
                    errors.append(f"{plan.path}:{a.line}: conflict: ablation {plan.study}.{fid} "
                                  f"({a.key}) is already planned by {p0}:{l0} (two plan files "
                                  "with the same number; rename one)")
                    continue
                cfg["id"] = fid
                seen[(plan.study, fid)] = (plan.path, a.line)
                ps.followups[(plan.study, fid)] = seen[k][0]
            else:
                seen[k] = (plan.path, a.line)
            ps.origins[(plan.study, cfg["id"])] = plan.path
            ps.by_study.setdefault(plan.study, []).append(cfg)
    if errors:
        raise ConfigError("plan(s) do not check:\n" + "\n".join(errors))
    return ps
