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

    P = Pipeline(load(a.configfiles), a.configfiles, write=False)
    for note in P.notes:
        print(f"note: {note}")
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

    s = sub.add_parser("bench", help="time one training step of each study's paper-scale model")
    bench_args(s)
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("check-config", help="validate config files and list the variants")
    s.add_argument("configfiles", nargs="+")
    s.set_defaults(fn=cmd_check_config)
    return p


def cmd_gpu_status(a):
    from .gpu import lock_dir, status, visible_devices

    print(f"devices: {visible_devices() or 'none'}; locks in {lock_dir()}")
    for dev, holder in status():
        print(f"  gpu {dev}: {holder or 'free'}")


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
