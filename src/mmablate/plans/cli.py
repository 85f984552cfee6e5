"""`python -m mmablate plan check|show FILE...` — what a plan document will run, before it runs.

Exit status of `check`: 0 the plan checks (and will run, or a note says why not: study disabled,
overridden by the config); 1 it does not check (each problem with file:line and what is known).
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_BAD = 0, 1


def register(sub) -> None:
    p = sub.add_parser("plan", help="ablation plan documents: check / show what they run")
    ps = p.add_subparsers(dest="plan_cmd", required=True)
    s = ps.add_parser("check", help="parse plan(s), list keys, values, variants and metrics")
    s.add_argument("files", nargs="+")
    s.add_argument("--config", action="append", default=None,
                   help="config file(s) the variants are resolved against "
                        "(default: config/config.yaml of this workflow)")
    s.set_defaults(fn=cmd_check)
    s = ps.add_parser("show", help="print the ablations a plan parses to, in config (YAML) form")
    s.add_argument("files", nargs="+")
    s.set_defaults(fn=cmd_show)


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def cmd_show(a) -> int:
    import yaml

    from .parse import PlanError, parse_plan

    rc = EXIT_OK
    for f in a.files:
        try:
            plan = parse_plan(f)
        except PlanError as e:
            print(f"error: plan does not check:\n{e}", file=sys.stderr)
            rc = EXIT_BAD
            continue
        print(f"# {f} → study {plan.study}")
        print(yaml.safe_dump({"studies": {plan.study: {"ablations": [x.config() for x in
                                                                       plan.ablations]}}},
                             allow_unicode=True, sort_keys=False, width=100), end="")
    return rc


def cmd_check(a) -> int:
    rc = EXIT_OK
    for f in a.files:
        t0 = time.perf_counter()
        rc = max(rc, _check_one(Path(f), a.config))
        print(f"checked in {time.perf_counter() - t0:.2f} s")
    return rc


def _check_one(path: Path, config_files) -> int:
    from ..config import load
    from ..errors import ConfigError
    from ..pipeline import REPO, Pipeline, plans_dir
    from .load import load_plans, plan_files
    from .parse import PlanError, parse_plan
    from .registry import REGISTRY

    try:
        plan = parse_plan(path)
    except PlanError as e:
        print(f"error: {path}: plan does not check (nothing will run):\n{e}", file=sys.stderr)
        return EXIT_BAD
    spec = REGISTRY[plan.study]
    print(f"plan:   {path}")
    print(f"title:  {plan.title}" + (f"   (planner {plan.planner})" if plan.planner else ""))
    print(f"study:  {plan.study} — {spec.title}")
    for ln, note in plan.notes:
        print(f"note:   line {ln}: {note}")
    for ab in plan.ablations:
        print(f"ablation {plan.study}__{ab.id}   (line {ab.line}: {ab.name})")
        print(f"  part:    {ab.part}")
        print(f"  key:     {ab.key}")
        print("  values:  " + ", ".join(f"{_fmt(v)} (line {ln})"
                                        for v, ln in zip(ab.values, ab.value_lines)))
        print(f"  metrics: {', '.join(ab.metrics)}")

    cfg_files = config_files or [str(REPO / "config" / "config.yaml")]
    try:
        cfg = load(cfg_files)
        scfg = cfg["studies"].get(plan.study)
        if scfg is None:
            print(f"note: the config has no studies.{plan.study} block; the plan cannot run")
            return EXIT_OK
        if "ablations" in scfg:
            print(f"note: studies.{plan.study}.ablations is set in {' + '.join(cfg_files)} and "
                  "overrides the plans: this plan will NOT run until it is removed")
            return EXIT_OK
        if not scfg.get("enabled", False):
            print(f"note: studies.{plan.study}.enabled is false: variants below are what would "
                  "run once it is enabled")
            scfg["enabled"] = True
        in_dir = plan_files(plans_dir(cfg))
        others = [f for f in in_dir if f.resolve() != path.resolve()]
        with_plan = others + [path] if len(others) == len(in_dir) else in_dir
        cfg0 = copy.deepcopy(cfg)
        if plan.study not in load_plans(others).by_study:  # the DAG without this plan
            cfg0["studies"][plan.study]["enabled"] = False
        P0 = Pipeline(cfg0, cfg_files, write=False, plans=others)
        P1 = Pipeline(cfg, cfg_files, write=False, plans=with_plan)
    except ConfigError as e:
        print(f"error: {path}: the pipeline refuses this plan:\n{e}", file=sys.stderr)
        return EXIT_BAD

    # this plan's ablations as the pipeline names them (a follow-up on a part an earlier plan
    # ablates is its own table, `<part>_p<plan>`)
    rpath = path.resolve()
    ids = {aid for (st, aid), src in P1.planset.origins.items()
           if st == plan.study and Path(src).resolve() == rpath}
    mine = {f"{plan.study}__{aid}" for aid in ids}
    for (st, aid), earlier in P1.planset.followups.items():
        if st == plan.study and aid in ids:
            print(f"follow-up: {plan.study}__{aid} is its own table, beside the one of "
                  f"{Path(earlier).name} (same part)")
    by_hash = {}
    for ab in P1.ablations:
        for r in ab.rows:
            if r.kind == "variant":
                by_hash.setdefault(r.config_hash, []).append(f"{ab.name}: {r.label}")
    print(f"variants (config hash; seeds {P1.seeds}):")
    for ab in P1.ablations:
        if ab.name not in mine:
            continue
        print(f"  {ab.name}")
        for r in ab.rows:
            if r.kind != "variant":
                continue
            same = [x for x in by_hash[r.config_hash] if x != f"{ab.name}: {r.label}"]
            tag = "baseline" if r.is_baseline else "        "
            dd = f"   dedupes with {'; '.join(same)}" if same else ""
            print(f"    {r.label:<14} {tag} {r.config_hash}{dd}")
    jobs = new_jobs(P0, P1)
    counts = {}
    for st, _ in jobs:
        counts[st] = counts.get(st, 0) + 1
    print("new stage jobs this plan adds to the DAG (each runs once per seed where seeded): "
          + (", ".join(f"{st} ×{n}" for st, n in counts.items()) or "none (all dedupe)"))
    for st, h in jobs:
        print(f"  new job: {P1.output(st, h, '{seed}') if '{seed}' in P1.output_pattern(st) else P1.output(st, h)}")
    new_tables = [a.name for a in P1.ablations if a.name in mine]
    if new_tables:
        print("tables: " + ", ".join(f"{P1.results}/tables/{n}.md" for n in new_tables))
    return EXIT_OK


def new_jobs(P0, P1) -> list[tuple[str, str]]:
    """(stage, config hash) of every stage job P1 has and P0 has not, in P1's order."""
    return [(st, h) for st, hs in P1.stages.items() for h in hs if h not in P0.stages.get(st, {})]
