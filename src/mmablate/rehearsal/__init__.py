"""The rehearsal: the paper-scale DAG end to end on one CPU (docs/rehearsal.md).

``python -m mmablate rehearsal-assets OUT`` writes, small and deterministic, without downloads:
every dataset ``config/scales/paper.yaml`` reads, in the layout its publisher distributes it, and
every model it names as a randomly initialised miniature of the same class, saved the way its
loader reads it. ``config/scales/rehearsal.yaml`` (overlaid on paper.yaml) points the paper
config's paths at them and shrinks only model sizes, budgets, batch sizes and worker counts, so
every code path that runs is the paper's. Numbers mean nothing.

Layout: one module per study (``rehearsal/<study>.py``) exposes ``write_assets(out: Path) -> dict``
writing that study's datasets and models under ``out`` (its own sub-folders) and returning a
summary (what was written); datasets two studies share (ImageNet-1K val) have their own module.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

#: the modules whose ``write_assets(out)`` the ``rehearsal-assets`` command calls, in order
ASSET_MODULES = ("imagenet", "rankclip", "pcclip", "pairrank", "mmalign")


def write_assets(out, only=None) -> dict:
    """Writes every rehearsal asset under `out` (or the modules in `only`); returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in ASSET_MODULES:
        if only and name not in only:
            continue
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue  # not written yet
        t0 = time.time()
        summary[name] = mod.write_assets(out)
        print(f"rehearsal-assets: {name} in {time.time() - t0:.1f} s", flush=True)
    return summary
