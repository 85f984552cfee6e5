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


class Resumable:
    """One training loop's checkpointing, shared by every study's trainer.

    ``parts`` maps a name to anything with ``state_dict()`` / ``load_state_dict()`` (model,
    optimizer, scheduler, an extra head) or to a ``(get, set)`` pair of callables (e.g. peft's
    adapter-only state). ``rng`` also saves and restores torch's global RNG, so a resumed run
    draws the same random numbers as an uninterrupted one.

        ckpt = Resumable(ckpt_dir, {"model": m, "optimizer": opt, "scheduler": sch},
                         every=100, total=steps, stop_after=stop_after)
        start, log_rows = ckpt.resume()
        for step in range(start, steps):
            ...
            if ckpt.step_done(step + 1, log_rows):
                return {"stopped_at": step + 1}
    """

    def __init__(self, ckpt_dir, parts: dict, *, every: int, total: int,
                 stop_after: int | None = None, rng: bool = True, keep: int = 2):
        if every < 1:
            raise ValueError(f"ckpt_every must be ≥ 1, got {every}")
        self.ckpt_dir, self.parts, self.every, self.total = Path(ckpt_dir), dict(parts), every, total
        self.stop_after, self.rng, self.keep = stop_after, rng, keep

    @staticmethod
    def _get(part):
        return part[0]() if isinstance(part, tuple) else part.state_dict()

    @staticmethod
    def _set(part, state):
        if isinstance(part, tuple):
            part[1](state)
        else:
            part.load_state_dict(state)

    def resume(self, log=None) -> tuple[int, list]:
        """Load the newest readable checkpoint into the parts; (first step to run, log rows)."""
        import torch

        state = load_latest(self.ckpt_dir, log)
        if state is None:
            return 0, []
        missing = [name for name in self.parts if name not in state]
        if missing:
            raise ValueError(f"{self.ckpt_dir}: checkpoint of step {state['step']} lacks "
                             f"{missing}; it was written by another trainer (delete the folder "
                             f"to start over)")
        for name, part in self.parts.items():
            self._set(part, state[name])
        if self.rng and "rng" in state:
            torch.set_rng_state(state["rng"])
        return state["step"], list(state.get("log", []))

    def step_done(self, done: int, log_rows: list) -> bool:
        """Save when due (every ``every`` steps, at the end, at ``stop_after``); True to stop."""
        import torch

        stop = self.stop_after is not None and done >= self.stop_after
        if done % self.every == 0 or done == self.total or stop:
            state = {name: self._get(part) for name, part in self.parts.items()}
            state.update(step=done, log=log_rows)
            if self.rng:
                state["rng"] = torch.get_rng_state()
            save(state, self.ckpt_dir, done, self.keep)
        if stop:
            print(f"stopping after step {done} as asked (--stop-after)", file=sys.stderr)
        return stop
