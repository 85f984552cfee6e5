"""Preflight: cheap checks of every enabled study's input files, before any job runs.

Each study may ship ``mmablate.studies.<id>.preflight.check_inputs(block, where)``: ``block`` is
its resolved config block (``config["studies"][id]``, the overlays merged), ``where`` the config
file names for messages. It checks what is cheap — a file or folder exists, a parquet's schema
(not its data), a small JSON's top-level shape, a model folder's config and tokenizer files, a
shard's first member — and raises `mmablate.errors.DataError`/`ConfigError` naming the file and
the dotted config key. It returns at once when the block reads no files (the world at the tiny
and smoke scales), so there it costs the import of one small module per study.

`run` is called

* at DAG build (workflow/rules/common.smk, in the main snakemake process only: not again in
  each job a cluster executor starts), so ``snakemake -n`` fails before any job;
* by ``python -m mmablate check-config``.

What is not cheap (a corrupt shard mid-stream, a judge that is down or answers garbage) fails at
job time instead, with an error naming the file or endpoint.

``preflight: false`` (``--config preflight=false``) skips it: to plan or size the paper DAG on a
machine without its data (``snakemake -n --profile profiles/slurm --configfile
config/scales/paper.yaml`` with stand-in paths, the profile and sizing tests). The studies'
config checks (mmablate.pipeline.validate: e.g. a data root that is not a directory) still run.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import time


def enabled(config: dict) -> bool:
    """Whether the config asks for preflight (default yes; ``--config`` gives a string)."""
    flag = config.get("preflight", True)
    return not (flag is False or str(flag).lower() in ("false", "0", "no", "off"))


def study_check(study: str):
    """The study's ``check_inputs`` function, or None where it has no preflight module."""
    name = f"mmablate.studies.{study}.preflight"
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:  # the study's package itself is absent
        return None
    return getattr(importlib.import_module(name), "check_inputs", None)


def run(config: dict, configfiles=("<config>",), studies=None) -> dict:
    """Runs each enabled study's ``check_inputs``; returns {study: seconds} of those checked.
    Raises what the first failing check raises. Does nothing when `enabled(config)` is false."""
    from .pipeline import STUDIES

    if not enabled(config):
        return {}
    where = " + ".join(str(c) for c in configfiles) or "<config>"
    done = {}
    for study in (studies if studies is not None else STUDIES):
        block = config.get("studies", {}).get(study)
        if not block or not block.get("enabled", False):
            continue
        fn = study_check(study)
        if fn is None:
            continue
        t0 = time.perf_counter()
        fn(copy.deepcopy(block), where)
        done[study] = time.perf_counter() - t0
    return done
