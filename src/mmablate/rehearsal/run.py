"""``python -m mmablate rehearse``: the paper DAG end to end on this machine, and what ran.

1. The overlay is checked against its allow-list (mmablate.rehearsal.overlay) and the assets are
   written where missing (``write_assets``: idempotent, seconds when they are there).
2. The judge stand-in (``mmablate.rehearsal.judge.JudgeServer``, 127.0.0.1:18765) starts.
3. The plan: ``snakemake -n --forceall all --configfile config/scales/paper.yaml
   config/scales/rehearsal.yaml`` — every job of the paper DAG, by rule (its "Job stats").
4. The run: ``snakemake all --cores N --configfile …`` (the same files, plus any extra snakemake
   arguments), its output shown and kept in ``<results>/rehearsal/snakemake.log``.
5. The judge stops; the coverage report: per rule, the jobs the plan has, the jobs that were
   already up to date when the run started (the run's own "Job stats" are the jobs it had to
   run), the jobs that ran (snakemake's ``Finished jobid: N (Rule: r)`` lines) and their wall
   time (the log's timestamps, from the job's ``rule r:`` block to its ``Finished`` line).
   Written to ``<results>/rehearsal/coverage.json``. The command fails when snakemake failed or
   a rule of the plan is not covered: some of its jobs neither ran nor were up to date. With
   ``--fresh`` (the rehearsal's results folder removed first) every job must run.

Snakemake's log is the record used: it is what the scheduler itself says it ran, one line per
finished job, in this run only. (The per-job benchmark files under ``<results>/benchmarks``
hold the same wall times, but naming their rule needs each rule's benchmark pattern, and they
stay from earlier runs.)
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

PAPER = "config/scales/paper.yaml"
OVERLAY = "config/scales/rehearsal.yaml"
DEFAULT_ASSETS = "rehearsal/assets"
JUDGE_PORT = 18765

_TS = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_LOG = re.compile(r"^\s+log: (.+)$")
_FINISHED = re.compile(r"Finished jobid: (\d+) \(Rule: (\w+)\)")


# ---- reading snakemake's output -----------------------------------------------------------------
def job_stats(text: str) -> dict[str, int]:
    """rule → job count of the first "Job stats:" table in snakemake's output ("total" left out)."""
    i = text.find("Job stats:")
    if i < 0:
        return {}
    out = {}
    for line in text[i:].splitlines()[1:]:
        if not line.strip():
            if out:
                break
            continue
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            out[parts[0]] = int(parts[1])
    return out


def finished_jobs(text: str) -> dict[int, dict]:
    """jobid → {rule, log, start, end, wall_s} of every job the run finished (start/end: the
    log's timestamps, to the second; start None where the job's block was not seen; log: the
    job's log file(s) as snakemake lists them, or None)."""
    ts = None
    pending_rule = pending_log = None
    starts: dict[int, tuple[str, datetime | None]] = {}
    logs: dict[int, str] = {}
    out: dict[int, dict] = {}
    for line in text.splitlines():
        m = _TS.match(line.strip())
        if m:
            ts = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            continue
        m = _RULE.match(line)
        if m:
            pending_rule, pending_log = m.group(1), None
            continue
        m = _LOG.match(line)
        if m and pending_rule is not None:
            pending_log = m.group(1).strip()
            continue
        m = _JOBID.match(line)
        if m and pending_rule is not None:
            starts.setdefault(int(m.group(1)), (pending_rule, ts))
            if pending_log:
                logs[int(m.group(1))] = pending_log
            pending_rule = pending_log = None
            continue
        m = _FINISHED.search(line)
        if m:
            jid, rule = int(m.group(1)), m.group(2)
            start = starts.get(jid, (rule, None))[1]
            out[jid] = {"rule": rule, "log": logs.get(jid),
                        "start": start.isoformat() if start else None,
                        "end": ts.isoformat() if ts else None,
                        "wall_s": (ts - start).total_seconds() if start and ts else None}
    return out


def coverage(planned: dict, needed: dict, finished: dict) -> dict:
    """Per rule of the plan: planned, up to date before the run, ran, wall seconds, covered."""
    ran: dict[str, int] = {}
    wall: dict[str, float] = {}
    for j in finished.values():
        ran[j["rule"]] = ran.get(j["rule"], 0) + 1
        wall[j["rule"]] = wall.get(j["rule"], 0.0) + (j["wall_s"] or 0.0)
    rules = {}
    for rule in sorted(set(planned) | set(ran)):
        p, n, r = planned.get(rule, 0), needed.get(rule, 0), ran.get(rule, 0)
        rules[rule] = {"planned": p, "up_to_date": p - n, "ran": r,
                       "wall_s": round(wall.get(rule, 0.0), 1),
                       "covered": p > 0 and r >= n and (p - n) + r >= p}
    return rules


def report_lines(rules: dict) -> list[str]:
    lines = [f"{'rule':<20} {'planned':>7} {'ran':>5} {'up to date':>10} {'job wall s':>10}"]
    for rule, c in sorted(rules.items(), key=lambda kv: (-kv[1]["wall_s"], -kv[1]["planned"],
                                                         kv[0])):
        mark = "" if c["covered"] else "   <- NOT COVERED"
        lines.append(f"{rule:<20} {c['planned']:>7} {c['ran']:>5} {c['up_to_date']:>10} "
                     f"{c['wall_s']:>10.0f}{mark}")
    tot = {k: sum(c[k] for c in rules.values()) for k in ("planned", "ran", "up_to_date", "wall_s")}
    lines.append(f"{'total':<20} {tot['planned']:>7} {tot['ran']:>5} {tot['up_to_date']:>10} "
                 f"{tot['wall_s']:>10.0f}")
    return lines


def run_logged(cmd: list[str], log_path: Path, env=None, cwd=None, echo=True) -> tuple[int, str]:
    """Runs `cmd`, its output (stderr merged) echoed and written to `log_path`; (rc, text)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    chunks = []
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, cwd=cwd, bufsize=1)
        try:
            for line in p.stdout:
                chunks.append(line)
                log.write(line)
                log.flush()
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            p.terminate()
            raise
        rc = p.wait()
    return rc, "".join(chunks)


# ---- the rehearsal --------------------------------------------------------------------------
def judge_server(port: int = JUDGE_PORT):
    """The judge stand-in's context manager, or a no-op (with a note) where it is not in this
    checkout yet."""
    try:
        from .judge import JudgeServer
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.judge":
            raise
        print("rehearse: no judge stand-in in this checkout (mmablate.rehearsal.judge): the "
              "judged benchmarks and online pairs have no endpoint", file=sys.stderr)
        return contextlib.nullcontext(None)
    return JudgeServer(port=port)


def judge_port(cfg: dict) -> int:
    """The port of the merged config's judge endpoints (the stand-in listens where the jobs will
    call it, in both roles: ``judge.rank`` and ``judge.bench``); rehearsal.yaml's own port
    where none is set. Two roles on two ports: a ConfigError (the stand-in serves one)."""
    from urllib.parse import urlparse

    from ..errors import ConfigError

    j = ((cfg.get("studies") or {}).get("mmalign") or {}).get("judge") or {}
    ports = {role: urlparse(url).port for role in ("rank", "bench")
             if (url := (j.get(role) or {}).get("endpoint"))}
    if len(set(ports.values())) > 1:
        raise ConfigError("rehearse: studies.mmalign.judge.rank.endpoint and .bench.endpoint "
                          f"name two ports ({ports}); the judge stand-in serves both roles on "
                          "one: give them the same endpoint")
    return next(iter(ports.values()), None) or JUDGE_PORT


def assets_overlay(assets: str, overlay_file: str, out: Path) -> Path | None:
    """Where the assets are not at rehearsal.yaml's `rehearsal/assets`: an overlay with each
    path under it moved to `assets` (None where nothing moves)."""
    import yaml

    if Path(assets).resolve() == Path(DEFAULT_ASSETS).resolve():
        return None

    def move(d):
        if isinstance(d, dict):
            moved = {k: move(v) for k, v in d.items()}
            return {k: v for k, v in moved.items() if v is not None and v != {}}
        if isinstance(d, str) and (d == DEFAULT_ASSETS or d.startswith(DEFAULT_ASSETS + "/")):
            return str(Path(assets) / d[len(DEFAULT_ASSETS):].lstrip("/"))
        return None

    moved = move(yaml.safe_load(Path(overlay_file).read_text()) or {})
    if not moved:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# written by `mmablate rehearse --assets`: rehearsal.yaml's asset paths "
                   "moved\n" + yaml.safe_dump(moved, sort_keys=True))
    return out


def rehearse(cores: int = 2, assets: str = DEFAULT_ASSETS, extra=(), fresh: bool = False,
             configfiles=(PAPER, OVERLAY), write_assets_first: bool = True,
             echo: bool = True, judge: bool = True) -> dict:
    """The rehearsal (see the module docstring) in the current directory, the workflow's root.
    Returns the coverage record (also written to <results>/rehearsal/coverage.json)."""
    from ..config import load
    from ..errors import ConfigError
    from . import overlay as overlay_rules
    from . import write_assets

    if not Path("Snakefile").is_file():
        raise ConfigError(f"{os.getcwd()}: no Snakefile here; run `rehearse` in the workflow's "
                          f"folder (the repository's root)")
    files = [str(f) for f in configfiles]
    if OVERLAY in files:
        overlay_rules.check_files(OVERLAY, ["config/config.yaml", PAPER])
    cfg = load(["config/config.yaml", *files])
    results = Path(cfg.get("results") or "results")
    if not cfg.get("rehearsal"):
        raise ConfigError(f"{' + '.join(files)}: not a rehearsal config (no `rehearsal: true`)")
    if fresh and results.exists():
        if results.resolve() == Path("results").resolve():
            raise ConfigError(f"{' + '.join(files)}: results: {results}: the rehearsal's results "
                              f"root must not be the default results/ (--fresh deletes it)")
        shutil.rmtree(results)
    record_dir = results / "rehearsal"
    t_start = time.time()
    if write_assets_first:
        summary = write_assets(assets)
        print(f"rehearse: assets in {assets}: {', '.join(summary) or 'none'}", flush=True)
    moved = assets_overlay(assets, OVERLAY, record_dir / "assets-overlay.yaml")
    if moved is not None:
        files.append(str(moved))
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")  # every model is local: a hub id left is an error
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    snake = [sys.executable, "-m", "snakemake", "all"]
    cf = ["--configfile", *files]
    # the judge stand-in serves mmalign's judged benchmarks and online pairs only
    judge = judge and bool(cfg.get("studies", {}).get("mmalign", {}).get("enabled"))
    port = judge_port(cfg)
    try:
        ctx = judge_server(port) if judge else contextlib.nullcontext(None)
        server = ctx.__enter__()
    except OSError as e:
        raise ConfigError(f"rehearse: the judge stand-in cannot listen on 127.0.0.1:{port} "
                          f"({e}): another rehearsal or judge holds the port (set "
                          f"studies.mmalign.judge.rank.endpoint and .bench.endpoint to another "
                          f"port in an --overlay; "
                          f"{OVERLAY} names {JUDGE_PORT})") from None
    with contextlib.ExitStack() as stack:
        stack.push(ctx)
        if server is not None:
            print(f"rehearse: judge stand-in on {server.url}", flush=True)
        rc, plan_text = run_logged([*snake, "-n", "--forceall", "--quiet", "rules", *cf,
                                    *extra], record_dir / "plan.log", env=env, echo=False)
        planned = job_stats(plan_text)
        if rc != 0 or not planned:
            sys.stdout.write(plan_text[-5000:])
            raise ConfigError(f"rehearse: the dry run of {' + '.join(files)} failed (exit {rc}); "
                              f"see {record_dir / 'plan.log'}")
        t_run = time.time()
        rc, text = run_logged([*snake, "--cores", str(cores), *cf, *extra],
                              record_dir / "snakemake.log", env=env, echo=echo)
        t_end = time.time()
    needed = job_stats(text)  # the jobs this run had to do ({} when nothing was to be done)
    finished = finished_jobs(text)
    rules = coverage(planned, needed, finished)
    rec = {"configfiles": files, "cores": cores, "snakemake_rc": rc, "fresh": fresh,
           "wall_s": round(t_end - t_run, 1), "total_s": round(t_end - t_start, 1),
           "planned_jobs": sum(planned.values()),
           "ran_jobs": sum(c["ran"] for c in rules.values()),
           "rules": rules, "uncovered": [r for r, c in rules.items() if not c["covered"]],
           "jobs": {str(k): v for k, v in sorted(finished.items())},
           "log": str(record_dir / "snakemake.log")}
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / "coverage.json").write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def print_report(rec: dict) -> None:
    print()
    print(f"rehearsal: {rec['ran_jobs']} of the paper DAG's {rec['planned_jobs']} jobs ran in "
          f"{rec['wall_s']:.0f} s on {rec['cores']} cores (snakemake exit {rec['snakemake_rc']}; "
          f"{rec['total_s']:.0f} s with assets and plan)")
    for line in report_lines(rec["rules"]):
        print("  " + line)
    if rec["uncovered"]:
        print(f"rehearsal: NOT every rule of the paper DAG ran: {', '.join(rec['uncovered'])} "
              f"(log: {rec['log']})")
    else:
        print(f"rehearsal: every rule of the paper DAG ran or was up to date "
              f"(record: {Path(rec['log']).parent / 'coverage.json'})")


def main(a) -> int:
    extra = list(a.snakemake_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    rec = rehearse(cores=a.cores, assets=a.assets, extra=extra, fresh=a.fresh,
                   configfiles=(PAPER, OVERLAY, *(a.overlay or [])),
                   write_assets_first=not a.no_assets)
    print_report(rec)
    return 0 if rec["snakemake_rc"] == 0 and not rec["uncovered"] else 1


def add_arguments(s) -> None:
    import argparse

    s.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    s.add_argument("--assets", default=DEFAULT_ASSETS,
                   help=f"where the assets are written and read (default {DEFAULT_ASSETS})")
    s.add_argument("--fresh", action="store_true",
                   help="remove the rehearsal's results folder first: every job runs")
    s.add_argument("--overlay", action="append", metavar="YAML",
                   help="a config overlay after rehearsal.yaml (repeatable), e.g. disabling "
                        "studies for a partial rehearsal; the coverage is then of that DAG")
    s.add_argument("--no-assets", action="store_true",
                   help="do not (re)write the assets first (they must be there)")
    s.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                   help="-- then extra snakemake arguments (e.g. -- --keep-going)")
