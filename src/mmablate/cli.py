"""`python -m mmablate <command>` — the one entry point every Snakemake rule calls.

Heavy libraries (torch, open_clip, ...) are imported inside the commands that need them, so
light stages (tables, collection, config checks) start in well under a second.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import MMAblateError


def _stage_cfg(path: str) -> dict:
    from .util import read_json

    return read_json(path)


def cmd_world(a):
    import shutil

    from .util import write_json
    from .world.datasets import write_world

    cfg = _stage_cfg(a.config)
    out = Path(a.out).parent
    for sub in ("cc3m", "imagenet"):
        shutil.rmtree(out / sub, ignore_errors=True)
    t0 = time.time()
    summary = write_world(cfg, out)
    summary["wall_s"] = round(time.time() - t0, 2)
    write_json(a.out, summary)


def cmd_collect(a):
    from .report.collect import collect

    print(f"{collect(a.ablation, a.out)} rows -> {a.out}")


def cmd_concat(a):
    from .report.collect import concat

    print(f"{concat(a.inputs, a.out)} rows -> {a.out}")


def cmd_table(a):
    from .report.tables import make_tables

    make_tables(a.ablation, a.metrics, a.md, a.tex, a.csv)


def cmd_figure(a):
    from .report.figures import make_figure

    make_figure(a.ablation, a.metrics, a.png, a.pdf)


def cmd_check_config(a):
    from .config import load
    from .pipeline import Pipeline

    from .preflight import enabled as preflight_enabled
    from .preflight import run as preflight

    cfg = load(a.configfiles)
    P = Pipeline(cfg, a.configfiles, write=False)
    for note in P.notes:
        print(f"note: {note}")
    checked = preflight(cfg, a.configfiles)  # each enabled study's input files (cheap checks)
    if checked:
        print("preflight: inputs of " + ", ".join(f"{s} ({t:.2f} s)" for s, t in checked.items())
              + " checked")
    elif not preflight_enabled(cfg):
        print("preflight: skipped (preflight: false)")
    for ab in P.ablations:
        print(f"{ab.name}: key {ab.key}")
        for r in ab.rows:
            print(f"  {r.label:<14} {'baseline ' if r.is_baseline else '         '}{r.config_hash}")
    jobs = sum(len(v) for v in P.stages.values())
    print(f"{len(P.ablations)} ablations, {jobs} stage configs, seeds {P.seeds}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mmablate", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("world", help="generate the synthetic world from a stage config")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True, help="summary JSON; the world is written beside it")
    s.set_defaults(fn=cmd_world)

    import importlib

    from .pipeline import STUDIES

    for study in STUDIES:  # each study registers its own commands
        importlib.import_module(f"mmablate.studies.{study}.cli").register(sub)

    s = sub.add_parser("collect", help="tidy metrics CSV of one ablation")
    s.add_argument("--ablation", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_collect)

    s = sub.add_parser("concat", help="concatenate tidy metrics CSVs")
    s.add_argument("--out", required=True)
    s.add_argument("inputs", nargs="*")
    s.set_defaults(fn=cmd_concat)

    s = sub.add_parser("table", help="paper-style table of one ablation")
    for k in ("ablation", "metrics", "md", "tex", "csv"):
        s.add_argument(f"--{k}", required=True)
    s.set_defaults(fn=cmd_table)

    s = sub.add_parser("figure", help="figure of one ablation")
    for k in ("ablation", "metrics", "png", "pdf"):
        s.add_argument(f"--{k}", required=True)
    s.set_defaults(fn=cmd_figure)

    from .plans.cli import register as register_plan

    register_plan(sub)  # `plan check|show FILE...`

    s = sub.add_parser("gpu-status", help="GPU slots held by running jobs on this machine")
    s.set_defaults(fn=cmd_gpu_status)

    from .bench import add_arguments as bench_args

    s = sub.add_parser("bench", help="time training steps of each study's own trainer at paper shapes")
    bench_args(s)
    s.set_defaults(fn=cmd_bench)

    from .launch import add_arguments as launch_args

    s = sub.add_parser("launch", help="run a subcommand as N processes (torchrun), one per GPU")
    launch_args(s)
    s.set_defaults(fn=cmd_launch)

    s = sub.add_parser("slurm-check", help="check a SLURM profile's per-rule sizes against sinfo")
    s.add_argument("--profile", default="profiles/slurm")
    s.add_argument("--configfile", nargs="*", default=None,
                   help="config overlays after config/config.yaml (default: the profile's scale: "
                        "config/scales/paper.yaml for profiles/slurm)")
    s.add_argument("--sinfo", default=None,
                   help="a file with `sinfo -h -N -o '%%P|%%n|%%c|%%m|%%G|%%l|%%a'` output "
                        "(default: run sinfo)")
    s.set_defaults(fn=cmd_slurm_check)

    s = sub.add_parser("rehearsal-assets",
                       help="write the rehearsal's stand-in datasets and miniature models")
    s.add_argument("out", help="the assets' root (config/scales/rehearsal.yaml: rehearsal/assets)")
    s.add_argument("--only", nargs="+", default=None, metavar="MODULE",
                   help="only these asset modules (mmablate.rehearsal.ASSET_MODULES)")
    s.set_defaults(fn=cmd_rehearsal_assets)

    from .rehearsal.run import add_arguments as rehearse_args

    s = sub.add_parser("rehearse", help="the paper DAG end to end on this machine (rehearsal "
                                        "assets, judge stand-in, snakemake), and what ran")
    rehearse_args(s)
    s.set_defaults(fn=cmd_rehearse)

    from .cost import add_arguments as cost_args

    s = sub.add_parser("cost", help="GPU-hours of a config's grid before it runs, against the "
                                    "SLURM profile (docs/cost.md)")
    cost_args(s)
    s.set_defaults(fn=cmd_cost)

    s = sub.add_parser("check-config", help="validate config files and list the variants")
    s.add_argument("configfiles", nargs="+")
    s.set_defaults(fn=cmd_check_config)
    return p


def subcommands() -> dict:
    """name → the subcommand's parser (its defaults: `fn`, the function it runs; `gpu`)."""
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def gpu_subcommands() -> set:
    """Subcommands marked as GPU stages (``set_defaults(gpu=True)``): `main` claims a GPU."""
    return {name for name, p in subcommands().items() if p.get_default("gpu")}


def cmd_rehearsal_assets(a):
    import json

    from .errors import ConfigError
    from .rehearsal import ASSET_MODULES, write_assets

    unknown = [m for m in a.only or [] if m not in ASSET_MODULES]
    if unknown:
        raise ConfigError(f"rehearsal-assets --only: unknown module(s) {unknown}; known: "
                          f"{list(ASSET_MODULES)}")
    t0 = time.time()
    summary = write_assets(a.out, only=a.only)
    print(json.dumps(summary, indent=1, sort_keys=True, default=str))
    print(f"rehearsal-assets: {', '.join(summary) or 'nothing'} under {a.out} in "
          f"{time.time() - t0:.1f} s")


def cmd_rehearse(a):
    from .rehearsal.run import main as rehearse_main

    return rehearse_main(a)


def cmd_gpu_status(a):
    from .gpu import lock_dir, status, visible_devices

    print(f"devices: {visible_devices() or 'none'}; locks in {lock_dir()}")
    for dev, holder in status():
        print(f"  gpu {dev}: {holder or 'free'}")


def cmd_slurm_check(a):
    from .config import load as load_config
    from .jobs import load_rules, profile_requests, read_profile
    from .slurm_check import check, check_sizes

    prof = read_profile(a.profile)
    sizes = (prof.get("default-resources") or {}).get("mmablate_sizes")
    overlays = a.configfile if a.configfile is not None else \
        (["config/scales/paper.yaml"] if sizes == "paper" else ["config/scales/smoke.yaml"])
    cfg = load_config(["config/config.yaml", *overlays])
    check_sizes([sizes], cfg.get("scale"))
    # the rules and their declared resources are the same at every scale: read them with the
    # smoke config (the paper config names data roots that exist only on the cluster)
    reqs = profile_requests(prof, load_rules(".", ["config/config.yaml",
                                                   "config/scales/smoke.yaml"]))
    print(f"{'rule':<18} {'partition':<10} {'CPUs':>4} {'mem MB':>7} {'GPUs':>4} {'runtime':>7}")
    for r in reqs:
        gpus = f"{r.gpu_model}:{r.gpus}" if r.gpu_model else str(r.gpus)
        print(f"{r.rule:<18} {r.partition or '(default)':<10} {r.cpus:>4} {r.mem_mb or '-':>7} "
              f"{gpus:>4} {f'{r.runtime:g}' if r.runtime else '-':>7}")
    check(reqs, Path(a.sinfo).read_text() if a.sinfo else None)
    print(f"{len(reqs)} rules of {a.profile}: every request fits a node of its partition")


def cmd_launch(a):
    from .launch import run_distributed, subcommand_argv

    argv = subcommand_argv(a)
    if a.nproc <= 1:  # in this process, exactly as `python -m mmablate <subcommand>`
        return main(argv)
    return run_distributed(argv, a.nproc, a.log_dir)


def cmd_cost(a):
    from .cost import main as cost_main

    cost_main(a)


def cmd_bench(a):
    from .bench import main as bench_main

    bench_main(a)


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        if getattr(a, "gpu", False):
            # A GPU stage: pin this process to a free GPU before torch touches CUDA
            # (snakemake counts `gpu` resources but never assigns devices; see mmablate.gpu).
            from .gpu import claim

            claim()
        rc = a.fn(a)
    except MMAblateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return rc or 0
