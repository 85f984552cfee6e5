"""Refuse, before anything is submitted, the SLURM jobs that no node of the cluster can run.

SLURM accepts a job that asks for more CPUs, memory or GPUs than any node of its partition has
and leaves it PENDING for ever (``Reason=PartitionConfig`` or ``Resources``), while Snakemake
waits silently. This module compares every job's request with what ``sinfo`` reports for each
partition and names the rule and the resource that cannot be met.

What really runs before submission: the ``onstart:`` hook in ``workflow/rules/hooks.smk``. When
the executor is ``slurm`` it calls `check_jobs` on the jobs Snakemake is about to submit (their
resources evaluated exactly as the plugin will read them: profile ``set-resources``, rule
``resources:``, ``set-threads``) and the run stops with `SlurmCheckError` before the first
``sbatch``. ``python -m mmablate slurm-check --profile profiles/slurm`` runs the same check on a
profile's per-rule sizes without a workflow run (see docs/slurm.md).

How a request is read (as snakemake-executor-plugin-slurm 2.8 turns resources into ``sbatch``):
CPUs ``cpus_per_task``, else ``cpus_per_gpu`` × GPUs, else the job's threads; memory
``mem_mb_per_cpu`` × CPUs, else ``mem_mb``; GPUs ``gpu``/``gpus`` (model ``gpu_model``) or a
``gres`` "gpu[:model]:N"; ``runtime`` minutes; partition ``slurm_partition``, else the
cluster's default partition. Only single-node jobs exist in this workflow (multi-node is out of
scope), so a request fits when one node of its partition has all of it.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .errors import MMAblateError

# one line per (node, partition): partition (default marked *), node, CPUs, memory MB, gres,
# partition time limit, partition availability
SINFO_FORMAT = "%P|%n|%c|%m|%G|%l|%a"


class SlurmCheckError(MMAblateError):
    pass


@dataclass
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: dict = field(default_factory=dict)  # GPU model ("" when the gres has none) -> count

    def gpu_count(self, model: str | None = None) -> int:
        return sum(n for m, n in self.gpus.items() if model is None or m == model)


@dataclass
class Partition:
    name: str
    default: bool = False
    max_minutes: float | None = None  # None: no time limit
    up: bool = True
    nodes: list = field(default_factory=list)


@dataclass(frozen=True)
class Request:
    rule: str
    partition: str | None  # None: the cluster's default partition
    cpus: int
    mem_mb: int | None
    gpus: int = 0
    gpu_model: str | None = None
    runtime: float | None = None  # minutes
    cpus_key: str = "cpus_per_task"  # the resource the CPU count came from (for messages)


def parse_gres(text: str) -> dict:
    """``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:1``, ``(null)`` → {model: n}."""
    out: dict = {}
    for item in (text or "").split(","):
        item = item.split("(")[0].strip()
        parts = item.split(":")
        if not parts or parts[0] != "gpu":
            continue
        if len(parts) == 2:
            model, n = "", parts[1]
        elif len(parts) >= 3:
            model, n = parts[1], parts[2]
        else:
            model, n = "", "1"
        try:
            out[model] = out.get(model, 0) + int(n)
        except ValueError:
            raise SlurmCheckError(f"sinfo: cannot read the gres {text!r}") from None
    return out


def parse_time(text: str) -> float | None:
    """A SLURM time limit (``infinite``, ``D-HH:MM:SS``, ``HH:MM:SS``, ``MM:SS``, ``MM``) → minutes."""
    t = text.strip().lower()
    if t in ("infinite", "unlimited", "n/a", ""):
        return None
    days = 0
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
    f = [int(x) for x in t.split(":")]
    if len(f) == 3:
        h, m, s = f
    elif len(f) == 2:
        h, (m, s) = (0, f) if days == 0 else (f[0], (f[1], 0))
    else:
        h, m, s = (f[0], 0, 0) if days else (0, f[0], 0)
    return days * 1440 + h * 60 + m + s / 60


def parse_sinfo(text: str) -> dict:
    """Partitions (name → Partition) from ``sinfo -h -N -o '%P|%n|%c|%m|%G|%l|%a'``."""
    parts: dict = {}
    for ln, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 7:
            raise SlurmCheckError(f"sinfo line {ln}: expected 7 fields ({SINFO_FORMAT}), got "
                                  f"{line!r}")
        pname, node, cpus, mem, gres, limit, avail = (x.strip() for x in f)
        default = pname.endswith("*")
        pname = pname.rstrip("*")
        p = parts.setdefault(pname, Partition(pname, default, parse_time(limit), avail == "up"))
        p.default = p.default or default
        try:
            p.nodes.append(Node(node, int(cpus.rstrip("+")), int(mem.rstrip("+")), parse_gres(gres)))
        except ValueError:
            raise SlurmCheckError(f"sinfo line {ln}: cannot read CPUs {cpus!r} or memory "
                                  f"{mem!r}") from None
    return parts


def run_sinfo() -> str:
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True,
                           text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmCheckError("sinfo not found: run on a machine of the SLURM cluster (its login "
                              "node)") from None
    except subprocess.TimeoutExpired:
        raise SlurmCheckError("sinfo did not answer within 60 s (is slurmctld up?)") from None
    if p.returncode != 0:
        raise SlurmCheckError(f"sinfo failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def _int(v, rule, key):
    if v is None or v == "":
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise SlurmCheckError(f"rule {rule}: {key}={v!r} is not a whole number") from None


def request_of(rule: str, res: Mapping, threads: int = 1) -> Request:
    """The request snakemake-executor-plugin-slurm makes for a job with resources `res`."""
    g = res.get
    gpus = 0
    for key in ("gpu", "gpus", "nvidia_gpu"):
        if g(key) is not None:
            gpus = _int(g(key), rule, key) or 0
            break
    model = g("gpu_model") or None
    gres = str(g("gres") or "")
    if "gpu" in gres:
        gg = parse_gres(gres)
        gpus = max(gpus, sum(gg.values()))
        model = model or next((m for m in gg if m), None)
    if _int(g("cpus_per_task"), rule, "cpus_per_task"):
        cpus, key = max(1, _int(g("cpus_per_task"), rule, "cpus_per_task")), "cpus_per_task"
    elif gpus and _int(g("cpus_per_gpu"), rule, "cpus_per_gpu"):
        cpus, key = _int(g("cpus_per_gpu"), rule, "cpus_per_gpu") * gpus, "cpus_per_gpu"
    else:
        cpus, key = max(1, int(threads or 1)), "threads"
    per_cpu = _int(g("mem_mb_per_cpu"), rule, "mem_mb_per_cpu")
    mem = per_cpu * cpus if per_cpu else _int(g("mem_mb"), rule, "mem_mb")
    rt = g("runtime")
    return Request(rule, g("slurm_partition") or None, cpus, mem, gpus, model,
                   float(rt) if rt not in (None, "") else None, key)


def _describe(n: Node) -> str:
    gpu = ",".join(f"gpu:{m + ':' if m else ''}{c}" for m, c in n.gpus.items()) or "no GPU"
    return f"{n.name}: {n.cpus} CPUs, {n.mem_mb} MB, {gpu}"


def problems(requests: Iterable[Request], partitions: Mapping) -> list:
    """One message per distinct request that no node can run (empty: every job can run)."""
    out, seen = [], set()
    default = next((p for p in partitions.values() if p.default), None)
    for r in requests:
        if r in seen:
            continue
        seen.add(r)
        if r.partition is None:
            if default is None:
                out.append(f"rule {r.rule}: no slurm_partition and the cluster has no default "
                           f"partition (sinfo lists {sorted(partitions)})")
                continue
            p = default
        elif r.partition not in partitions:
            out.append(f"rule {r.rule}: slurm_partition={r.partition!r} is not a partition of "
                       f"this cluster (sinfo lists {sorted(partitions)})")
            continue
        else:
            p = partitions[r.partition]
        where = f"partition {p.name!r}"
        if not p.up:
            out.append(f"rule {r.rule}: {where} is not up")
        if r.runtime is not None and p.max_minutes is not None and r.runtime > p.max_minutes:
            out.append(f"rule {r.rule}: runtime={r.runtime:g} min exceeds the time limit of "
                       f"{where} ({p.max_minutes:g} min)")
        nodes = p.nodes
        short = []
        if r.cpus > max((n.cpus for n in nodes), default=0):
            short.append(f"{r.cpus_key}={r.cpus} CPUs, but the largest node of {where} has "
                         f"{max((n.cpus for n in nodes), default=0)}")
        if r.mem_mb is not None and r.mem_mb > max((n.mem_mb for n in nodes), default=0):
            short.append(f"mem_mb={r.mem_mb}, but the largest node of {where} has "
                         f"{max((n.mem_mb for n in nodes), default=0)} MB")
        if r.gpus and r.gpus > max((n.gpu_count(r.gpu_model) for n in nodes), default=0):
            what = f"GPUs of model {r.gpu_model!r}" if r.gpu_model else "GPUs"
            short.append(f"gpu={r.gpus}{f' (gpu_model={r.gpu_model!r})' if r.gpu_model else ''}, "
                         f"but no node of {where} has more than "
                         f"{max((n.gpu_count(r.gpu_model) for n in nodes), default=0)} {what}")
        if short:
            out += [f"rule {r.rule}: {s}" for s in short]
        elif not any(n.cpus >= r.cpus and (r.mem_mb is None or n.mem_mb >= r.mem_mb)
                     and n.gpu_count(r.gpu_model) >= r.gpus for n in nodes):
            out.append(f"rule {r.rule}: no single node of {where} has {r.cpus} CPUs, "
                       f"{r.mem_mb} MB and {r.gpus} GPUs together "
                       f"({'; '.join(_describe(n) for n in nodes)})")
    return out


def check(requests: Iterable[Request], sinfo_text: str | None = None) -> None:
    """Raises SlurmCheckError naming every rule and resource no node can provide."""
    partitions = parse_sinfo(run_sinfo() if sinfo_text is None else sinfo_text)
    if not partitions:
        raise SlurmCheckError("sinfo lists no partitions")
    bad = problems(list(requests), partitions)
    if bad:
        nodes = "; ".join(f"{p.name}{'*' if p.default else ''} [{', '.join(_describe(n) for n in p.nodes)}]"
                          for p in partitions.values())
        raise SlurmCheckError(
            f"SLURM requests that no node can run ({len(bad)} problem(s); the jobs would stay "
            f"PENDING; nothing was submitted):\n  " + "\n  ".join(bad) +
            f"\nthe cluster (sinfo): {nodes}\nFix the sizes in the profile's set-resources "
            f"(docs/slurm.md); smoke and tiny scales: --profile profiles/slurm-small")


SIZES = {"paper": "profiles/slurm", "small": "profiles/slurm-small"}


def sizes_for(scale: str) -> str:
    return "paper" if scale == "paper" else "small"


def check_sizes(jobs_sizes: Iterable, scale: str | None) -> None:
    """A profile sized for another scale (`mmablate_sizes` in its default-resources) is refused:
    paper sizes for a smoke job would wait for 16-CPU nodes; small ones kill paper jobs."""
    if scale is None:
        return
    want = sizes_for(scale)
    got = sorted({s for s in jobs_sizes if s})
    wrong = [s for s in got if s != want]
    if wrong:
        raise SlurmCheckError(
            f"the config's scale is {scale!r} but the profile's jobs are sized for "
            f"{wrong[0]!r} (default-resources: mmablate_sizes): use --profile {SIZES[want]}")


def check_jobs(jobs, sinfo_text: str | None = None, scale: str | None = None) -> int:
    """The onstart hook: checks Snakemake jobs (their evaluated resources and threads)."""
    jobs = list(jobs)
    check_sizes((j.resources.get("mmablate_sizes") for j in jobs), scale)
    reqs = [request_of(j.rule.name, j.resources, j.threads) for j in jobs]
    check(reqs, sinfo_text)
    return len(reqs)
