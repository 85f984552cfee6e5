"""The rehearsal's wall time and jobs per rule, from a fresh results folder.

    python benchmarks/rehearsal.py [--cores 2] [--overlay partial.yaml] [-- extra snakemake args]

Runs `python -m mmablate rehearse --fresh` (assets written where missing, the judge stand-in, the
paper DAG with config/scales/rehearsal.yaml, mmablate.rehearsal.run) in the repository root and
prints: the wall time of the snakemake run, the assets' and the plan's time, per rule the jobs it
ran and their summed wall time (snakemake's log timestamps: seconds, concurrent jobs overlap),
the fork server's per-command CPU seconds (`.snakemake/log/mmablate-forkserver.<pid>.log`:
the forked workers; the ranks of `mmablate launch` are fresh processes and are not in it), the
load average before and after (the machine must be idle for the wall time to mean anything),
and writes everything to benchmarks/out/rehearsal-<UTC time>.json. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def forkserver_cpu(since: float) -> dict:
    """command → [workers, CPU s, wall s] from the fork-server logs written since `since`."""
    out: dict[str, list] = {}
    for f in glob.glob(str(REPO / ".snakemake/log/mmablate-forkserver.*.log")):
        if os.path.getmtime(f) < since:
            continue
        cmd_of = {}
        for line in open(f, errors="replace"):
            m = re.match(r"worker (\d+): (\S+)", line)
            if m:
                cmd_of[m.group(1)] = m.group(2)
                continue
            m = re.match(r"worker (\d+) exit -?\d+: ([\d.]+) s wall, ([\d.]+) s CPU", line)
            if m:
                c = out.setdefault(cmd_of.get(m.group(1), "?"), [0, 0.0, 0.0])
                c[0] += 1
                c[2] += float(m.group(2))
                c[1] += float(m.group(3))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--overlay", action="append", default=[])
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    extra = a.snakemake_args[1:] if a.snakemake_args[:1] == ["--"] else a.snakemake_args
    os.chdir(REPO)
    from mmablate.rehearsal.run import OVERLAY, PAPER, print_report, rehearse

    load0 = os.getloadavg()
    t0 = time.time()
    rec = rehearse(cores=a.cores, extra=extra, fresh=True,
                   configfiles=(PAPER, OVERLAY, *a.overlay))
    load1 = os.getloadavg()
    print_report(rec)
    fs = forkserver_cpu(t0)
    if fs:
        print("\nfork-server workers (CPU s by command; launch ranks are not among them):")
        for cmd, (n, cpu, wall) in sorted(fs.items(), key=lambda kv: -kv[1][1]):
            print(f"  {cmd:<18} {n:>4} workers {cpu:>8.0f} CPU s {wall:>8.0f} wall s")
    print(f"\nload average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min); "
          f"{os.cpu_count()} CPUs")
    out = REPO / "benchmarks/out" / time.strftime("rehearsal-%Y%m%dT%H%M%SZ.json", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**rec, "loadavg_before": load0, "loadavg_after": load1,
                               "forkserver": fs, "cpus": os.cpu_count()}, indent=1) + "\n")
    print(f"record: {out}")
    return 0 if rec["snakemake_rc"] == 0 and not rec["uncovered"] else 1


if __name__ == "__main__":
    sys.exit(main())
