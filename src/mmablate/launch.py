"""`python -m mmablate launch --nproc N [--log-dir D] -- <subcommand args...>`: one job, N processes.

* ``N <= 1``: the subcommand runs in this process, exactly as ``python -m mmablate <subcommand>``
  (a GPU stage claims its one GPU as always; same numbers as without ``launch``): `mmablate.cli`
  dispatches it, this module only checks the command line (`subcommand_argv`).
* ``N > 1``: when the machine has GPUs, N free device slots are claimed first
  (``mmablate.gpu.claim(count=N)``: ``CUDA_VISIBLE_DEVICES`` = the N ids, held for the whole
  job), then ``torch.distributed.run`` (torchrun) starts N ranks of
  ``python -m mmablate <subcommand ...>`` on this node (``--standalone``: a free rendezvous port,
  so concurrent jobs do not collide). Each rank's stdout and stderr go to
  ``<log dir>/<run id>_*/attempt_0/<local rank>/{stdout,stderr}.log`` and, prefixed with the rank,
  to this process's output. The ranks do not claim GPUs again (``TORCHELASTIC_RUN_ID`` is set);
  the training harness takes ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` through ``accelerate``
  (CUDA: NCCL, one device per local rank; no GPU: gloo on the CPU). In a local snakemake run
  (``launch`` itself a fork-server worker) each rank's process hands its command to the run's
  fork server (mmablate.forkserver): no rank imports torch & co. again.
* When a rank fails, the whole job stops (torchrun terminates the others) and ``launch`` exits 1,
  naming the rank that failed first, its exit code or signal and its log file.

Multi-node jobs are out of scope: one job is one node (docs/slurm.md, "Multi-GPU jobs"); on SLURM
the job asks for N GPUs on one node.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def add_arguments(s):
    s.add_argument("--nproc", type=int, default=1,
                   help="processes (one per GPU) for the subcommand; <= 1 runs it in-process")
    s.add_argument("--log-dir", default=None,
                   help="folder for the per-rank logs (default: a new temporary folder)")
    s.add_argument("argv", nargs=argparse.REMAINDER,
                   help="-- then the mmablate subcommand and its arguments")


def rank_logs(log_dir, local_rank: int) -> list[Path]:
    """The stderr (then stdout) log of `local_rank` in the newest run under `log_dir`."""
    runs = sorted(Path(log_dir).glob("*/attempt_*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return []
    d = runs[-1] / str(local_rank)
    return [p for p in (d / "stderr.log", d / "stdout.log") if p.exists()] or [d]


def _describe(failure) -> str:
    code = failure.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by signal {failure.signal_name()}"
        except Exception:
            return f"exit code {code}"
    return f"exit code {code}"


def subcommand_argv(a) -> list[str]:
    """The launched subcommand's arguments (after ``--``); refuses none and ``launch`` itself."""
    from .errors import MMAblateError

    argv = list(a.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise MMAblateError("launch: no subcommand given (usage: mmablate launch --nproc N -- "
                            "<subcommand> [args...])")
    if argv[0] == "launch":
        raise MMAblateError("launch: the subcommand cannot be `launch` itself")
    return argv


def run_distributed(argv: list[str], nproc: int, log_dir=None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from . import gpu

    claimed = gpu.claim(count=nproc)
    if claimed is not None:
        print(f"launch: {nproc} ranks on GPUs {claimed}", file=sys.stderr)
    else:
        print(f"launch: {nproc} ranks on the CPU (gloo)", file=sys.stderr)
    log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="mmablate-launch-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    args = torchrun.parse_args([
        "--nproc-per-node", str(nproc), "--standalone", "--max-restarts", "0",
        "--log-dir", str(log_dir), "--redirects", "3", "--tee", "3",
        "--module", "mmablate", *argv])
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun's default for N > 1
    from .forkserver import ENV, LAUNCH_ENV

    served = os.environ.pop(LAUNCH_ENV, None)
    if served:  # this launch is a fork-server worker: its ranks are forked from the server too
        os.environ[ENV] = served
        print("launch: the ranks fork from the run's fork server", file=sys.stderr)
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        failures = sorted(e.failures.items(), key=lambda kv: kv[1].timestamp)
        first_rank, first = failures[0]
        for rank, f in failures:
            logs = rank_logs(log_dir, f.local_rank)
            where = logs[0] if logs else log_dir
            print(f"launch: rank {rank} (local rank {f.local_rank}, pid {f.pid}) failed: "
                  f"{_describe(f)}; its log: {where}", file=sys.stderr)
        print(f"launch: `{' '.join(argv)}` failed at rank {first_rank}; see "
              f"{(rank_logs(log_dir, first.local_rank) or [log_dir])[0]}", file=sys.stderr)
        return 1
    print(f"launch: all {nproc} ranks finished; per-rank logs in {log_dir}", file=sys.stderr)
    return 0
