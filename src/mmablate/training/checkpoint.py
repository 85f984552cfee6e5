"""Resumable checkpoints: atomic writes, the last few kept, corrupt ones skipped on resume."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_NAME = re.compile(r"step_(\d+)\.pt$")


def save(state: dict, ckpt_dir, step: int, keep: int = 2) -> Path:
    import torch

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(ckpt_dir, log=None) -> dict | None:
    """The newest checkpoint that loads; a truncated or corrupt one is reported and skipped."""
    import torch

    log = log or sys.stderr
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if "step" not in state or "model" not in state:
                raise ValueError("missing 'step' or 'model'")
        except Exception as e:
            print(f"[checkpoint] {path}: unreadable ({type(e).__name__}: {e}); "
                  f"trying an older one", file=log)
            continue
        print(f"[checkpoint] resuming from {path} (step {state['step']})", file=log)
        return state
    return None
