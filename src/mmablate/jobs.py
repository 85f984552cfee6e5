"""How the workflow's jobs are sized and placed: CPU slots on a local machine, the GPU rules and
the commands that claim a GPU, and a profile's per-rule SLURM requests.

* Local CPU slots (`slot_factor`, `torch_threads`): ``snakemake --cores 8`` on a 2-core machine
  would start 8 one-thread model jobs at once, each then taking 4× its CPU time, which stretches
  the serial stages on the critical path. Compute rules therefore reserve ``threads`` =
  config ``threads`` × ``ceil(cores / CPUs of this machine)`` scheduler slots, so no more compute
  jobs run at once than the machine has cores, whatever ``--cores`` says; the job itself still
  runs torch with config ``threads`` threads (``--threads {resources.torch_threads}``), so the
  numbers do not change. Under SLURM (and in any non-local executor) the factor is 1 and the
  profile's ``set-threads`` is what the job gets.
* The workflow's rules as snakemake reads them (`load_rules`) and the ``python -m mmablate``
  subcommands their shell lines run (`mmablate_commands`). A rule's ``resources: gpu`` comes
  from its command's declaration (``gpu=True``: cli.main then claims a free GPU, mmablate.gpu;
  `mmablate.imports.claims_gpu`, workflow/rules/common.smk).
* `profile_requests`: each rule's SLURM request as a profile sizes it, for
  ``python -m mmablate slurm-check`` (mmablate.slurm_check).
"""
from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

LOCAL_EXECUTORS = {"local", "dryrun", "touch"}


def machine_cpus() -> int:
    """CPUs this process may run on (the affinity mask: a container's or a job's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def slot_factor(cores: int | None, cpus: int | None = None, executor: str | None = "local") -> int:
    """Scheduler slots per torch thread: ceil(cores / machine CPUs) locally, 1 elsewhere."""
    cores = getattr(cores, "value", cores)  # a snakemake Resource or a number
    if executor not in LOCAL_EXECUTORS or not cores:
        return 1
    cpus = cpus or machine_cpus()
    return max(1, math.ceil(int(cores) / cpus))


def compute_slots(threads: int, factor: int) -> int:
    """The `threads:` a compute rule reserves (snakemake caps it at --cores)."""
    return max(1, int(threads)) * factor


def torch_threads(threads: int, factor: int) -> int:
    """The torch threads of a job granted `threads` slots (inverse of compute_slots)."""
    return max(1, math.ceil(int(threads) / factor))


# ---- rules and commands -------------------------------------------------------------------------
@dataclass
class RuleInfo:
    name: str
    resources: dict  # declared resources (name -> value or callable)
    shellcmd: str | None
    priority: int
    local: bool


def load_rules(workdir, configfiles=(), config: dict | None = None) -> list:
    """The workflow's rules (snakemake's own parser) in `workdir` (its Snakefile)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, OutputSettings, Quietness,
                                          ResourceSettings)

    workdir = Path(workdir).resolve()
    out, cwd = [], os.getcwd()  # the API changes into workdir
    try:
        out = _load(workdir, configfiles, config, SnakemakeApi, ConfigSettings, OutputSettings,
                    Quietness, ResourceSettings)
    finally:
        os.chdir(cwd)
    return out


def _load(workdir, configfiles, config, SnakemakeApi, ConfigSettings, OutputSettings, Quietness,
          ResourceSettings):
    out = []
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(),
                          config_settings=ConfigSettings(
                              configfiles=[workdir / c for c in configfiles],
                              config=dict(config or {})),
                          snakefile=workdir / "Snakefile", workdir=workdir)
        w = wf._workflow
        for r in w.rules:
            res = {k: (v.value if not v.is_evaluable() else v)  # callables stay unevaluated
                   for k, v in dict(r.resources).items() if not k.startswith("_")}
            local = r.name in w._localrules or r.norun  # `localrules:` (run where submitted)
            out.append(RuleInfo(r.name, res, r.shellcmd, r.priority, local))
    return out


def mmablate_commands(shellcmd: str | None) -> list:
    """The ``python -m mmablate`` subcommands a shell command runs, the launched one last
    (``launch --nproc N -- <subcommand> ...`` gives ['launch', '<subcommand>'])."""
    if not shellcmd:
        return []
    toks = shlex.split(shellcmd.replace(";", " ; "), posix=True)
    out = []
    for i in range(len(toks) - 2):
        if toks[i + 1:i + 3] == ["-m", "mmablate"] and Path(toks[i]).name.startswith("python"):
            j = i + 3
            if j < len(toks):
                out.append(toks[j])
                if toks[j] == "launch" and "--" in toks[j:]:
                    k = toks.index("--", j) + 1
                    if k < len(toks):
                        out.append(toks[k])
    return out


# ---- a profile's per-rule requests --------------------------------------------------------------
def read_profile(profile) -> dict:
    import yaml

    path = Path(profile)
    path = path / "config.yaml" if path.is_dir() else path
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        from .errors import ConfigError

        raise ConfigError(f"{path}: profile not found") from None


def profile_requests(prof: dict, rules) -> list:
    """Each non-local rule's request under a profile: default-resources, the rule's own
    constant resources, then the profile's set-resources and set-threads for it."""
    from .slurm_check import request_of

    base = dict(prof.get("default-resources") or {})
    sets = prof.get("set-resources") or {}
    threads = prof.get("set-threads") or {}
    gpus = None
    for item in prof.get("config") or []:
        k, _, v = str(item).partition("=")
        if k.strip() == "gpus":
            gpus = int(v)
    out = []
    for r in rules:
        if r.local or r.name == "all" or not r.shellcmd:
            continue
        res = dict(base)
        for k, v in r.resources.items():
            if not hasattr(v, "is_evaluable"):  # a constant (evaluated per job: skipped)
                res[k] = v
        if "gpu" in r.resources and gpus is not None:
            res["gpu"] = gpus
        res.update(sets.get(r.name) or {})
        out.append(request_of(r.name, res, threads.get(r.name, 1)))
    return out
