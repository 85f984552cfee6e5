# Shared by every module: resolves the config into variants and stage configs (mmablate.pipeline).
import sys
from pathlib import Path

SRC_DIR = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC_DIR)
# Jobs run this workflow's own package, whether or not (or wherever) it is pip-installed.
shell.prefix(f'export PYTHONPATH="{SRC_DIR}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; ')
from mmablate.errors import MMAblateError
from mmablate.imports import claims_gpu, stage_sources
from mmablate.pipeline import Pipeline, configfile_order, stage_job

try:
    P = Pipeline(config, configfile_order(workflow.configfiles, "config/config.yaml"))
    if workflow.is_main_process:  # not again inside each job a cluster executor starts
        # each enabled study's cheap input checks (mmablate.preflight; `--config
        # preflight=false` skips them, e.g. to plan the paper DAG without its data)
        from mmablate.preflight import run as _preflight

        _preflight(config, P.configfiles)
except MMAblateError as _e:  # a config error: the message names file(s) and key; no traceback
    print(f"error: {_e}", file=sys.stderr)
    sys.exit(1)
for _note in P.notes:  # plans skipped (study disabled) or overridden
    print(f"mmablate: {_note}", file=sys.stderr)
R = P.results
ENV = "../../envs/mmablate.yaml"
# Stages that train or run models get `resources: gpu=GPU` (`compute_resources`: where their
# command is declared a GPU stage, `set_defaults(gpu=True)`): profiles/slurm sets gpus=1, so
# each asks SLURM for one GPU (a profile's set-resources may give one more GPUs; its command then
# starts that many processes, `mmablate launch --nproc {resources.gpu}`); locally
# `--config gpus=1 --resources gpu=<n GPUs>` and the GPU stage's command claims its own device
# (mmablate.gpu).
GPU = int(config.get("gpus", 0))


# Compute rules: never more concurrent model jobs than this machine has cores, whatever --cores
# says (mmablate.jobs): each reserves config `threads` × ceil(cores / CPUs) slots and runs torch
# with config `threads` threads ({resources.torch_threads}). Under SLURM the factor is 1.
def _slot_factor():
    from mmablate.jobs import slot_factor

    ex = workflow.executor_plugin.name if workflow.executor_plugin is not None else "local"
    return slot_factor(workflow.global_resources.get("_cores"), None, ex)


def COMPUTE_THREADS(wildcards):
    from mmablate.jobs import compute_slots

    return compute_slots(P.threads, _slot_factor())


def TORCH_THREADS(wildcards, threads):
    from mmablate.jobs import torch_threads

    return torch_threads(threads, _slot_factor())


def compute_resources(command):
    """A compute rule's resources (with `threads: COMPUTE_THREADS`): torch's thread count, and
    gpu=GPU when `python -m mmablate <command>` is a GPU stage (mmablate.imports.claims_gpu).
    Use as `resources: **compute_resources("<command>")`."""
    return {"gpu": GPU, "torch_threads": TORCH_THREADS} if claims_gpu(command) else \
        {"torch_threads": TORCH_THREADS}


# Every stage's log and benchmark file, named after its job (mmablate.pipeline.stage_job):
# logs/<study>/<stage>/{h}[/s{seed}].log and <results>/benchmarks/<the same>.tsv.
def stage_log(stage):
    return f"logs/{stage_job(stage)}.log"


def stage_benchmark(stage):
    return f"{R}/benchmarks/{stage_job(stage)}.tsv"


# The run's hooks: the SLURM request check before any sbatch; the fork server of local runs.
include: "hooks.smk"

def stage_input(stage):
    """The resolved stage config of job {h}: an input, so an edit of its content reruns it."""
    return lambda w: P.config_path(stage, w.h)


def upstream(stage):
    """The one input function of every rule: the outputs of the jobs a job of `stage` reads,
    by input name, as its stage config named them (stage + hash: mmablate.pipeline.Ref).
    Use as `unpack(upstream("<stage>"))`."""
    return lambda w: P.inputs(stage, w.h, getattr(w, "seed", None))
