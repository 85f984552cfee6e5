"""The plans in config/plans/ → each study's ablations (the rule the pipeline applies).

Rule (also in config/plans/README.md):
- every `*.txt` / `*.md` file in the plans directory (config key `plans_dir`, default
  `config/plans`, relative to the workflow root) is a plan; files are read in name order;
- a plan's title names its study; a study's ablations are the union of its plans' ablations in
  file order (plans 001 + 002 → pcclip's four ablations);
- two plans ablating the same part of one study is a conflict: an error naming both files and
  lines (edit or remove one); there is no silent "last one wins";
- a study block that lists `ablations:` explicitly in the config (e.g. an overlay trimming the
  values for a quick run) uses those instead of its plans; `check-config` says so;
- a plan whose study is disabled or not installed in this checkout is parsed and checked, then
  skipped with a note; a plan that does not check stops the pipeline before anything runs.
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


@dataclass
class PlanSet:
    plans: list = field(default_factory=list)       # [Plan]
    by_study: dict = field(default_factory=dict)    # study → [ablation in config form]
    sources: dict = field(default_factory=dict)     # study → [plan file]

    def origin(self, study: str, ablation_id: str) -> Plan:
        for p in self.plans:
            if p.study == study and any(a.id == ablation_id for a in p.ablations):
                return p
        raise KeyError((study, ablation_id))


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
            if k in seen:
                p0, l0 = seen[k]
                errors.append(f"{plan.path}:{a.line}: conflict: ablation {plan.study}.{a.id} "
                              f"({a.key}) is already planned by {p0}:{l0}; a part is ablated by "
                              "one plan only (edit or remove one of them)")
                continue
            seen[k] = (plan.path, a.line)
            ps.by_study.setdefault(plan.study, []).append(a.config())
    if errors:
        raise ConfigError("plan(s) do not check:\n" + "\n".join(errors))
    return ps
