"""Resumable checkpoints: atomic writes, the last few kept, corrupt ones skipped on resume.

Checkpoints load with ``torch.load(weights_only=True)``: they hold only tensors and plain
containers (state dicts, RNG states as uint8 tensors, the loss log as a list of dicts), so a
checkpoint on a shared file system cannot run code when read. A file that needs the full
unpickler (an arbitrary pickled object) is refused with a CheckpointError naming it, rather than
skipped as a truncated one is.

Across ranks (``Resumable(..., dist=harness)``): rank 0 writes, every rank waits at a barrier,
every rank loads the same file; each rank's RNG state is gathered and saved (``rng_ranks``), so
rank r resumes with its own draws.
"""
from __future__ import annotations

import io
import re
import sys
from pathlib import Path

from ..util import write_atomic

_NAME = re.compile(r"step_(\d+)\.pt$")


def save(state: dict, ckpt_dir, step: int, keep: int = 2) -> Path:
    import torch

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:07d}.pt"
    with write_atomic(path) as tmp:  # a kill mid-write leaves the previous checkpoint intact
        torch.save(state, tmp)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def load(path):
    """One checkpoint file with ``weights_only=True``; a file holding arbitrary pickled objects
    is a CheckpointError naming it."""
    import pickle

    import torch

    from ..errors import CheckpointError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            first = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise CheckpointError(
                f"{path}: refused: the checkpoint holds pickled objects other than tensors and "
                f"plain containers ({first}); it was not written by this project's trainer or "
                f"was tampered with (loading it would run code). Delete it to start over."
            ) from None
        raise


def load_latest(ckpt_dir, log=None, required=("step",)) -> dict | None:
    """The newest checkpoint that loads; a truncated or corrupt one is reported and skipped."""
    from ..errors import CheckpointError

    log = log or sys.stderr
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = load(path)
            if not isinstance(state, dict) or any(k not in state for k in required):
                raise ValueError(f"missing one of {list(required)}")
        except CheckpointError:
            raise
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
                 stop_after: int | None = None, rng: bool = True, keep: int = 2, dist=None):
        if every < 1:
            raise ValueError(f"ckpt_every must be ≥ 1, got {every}")
        self.ckpt_dir, self.parts, self.every, self.total = Path(ckpt_dir), dict(parts), every, total
        self.stop_after, self.rng, self.keep = stop_after, rng, keep
        # dist: anything with world_size, rank, is_main, barrier() (the training harness)
        self.dist = dist
        self.world = dist.world_size if dist is not None else 1

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

        if self.world > 1:
            self.dist.barrier()  # a checkpoint rank 0 is writing is complete before anyone reads
        state = load_latest(self.ckpt_dir, log if self._main else io.StringIO(),
                            required=("step", *list(self.parts)[:1]))
        if state is None:
            return 0, []
        missing = [name for name in self.parts if name not in state]
        if missing:
            raise ValueError(f"{self.ckpt_dir}: checkpoint of step {state['step']} lacks "
                             f"{missing}; it was written by another trainer (delete the folder "
                             f"to start over)")
        for name, part in self.parts.items():
            self._set(part, state[name])
        if self.rng:
            ranks = state.get("rng_ranks")
            if ranks is not None and len(ranks) == self.world:
                torch.set_rng_state(ranks[self.dist.rank if self.dist is not None else 0])
            elif "rng" in state:
                torch.set_rng_state(state["rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state(state["cuda_rng"])
        return state["step"], [dict(r) for r in state.get("log", [])]

    @property
    def _main(self) -> bool:
        return self.dist is None or self.dist.is_main

    def _rng_states(self) -> dict:
        import torch

        out = {"rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            out["cuda_rng"] = torch.cuda.get_rng_state()
        if self.world > 1:
            import torch.distributed as td

            ranks = [None] * self.world
            td.all_gather_object(ranks, out["rng"])
            out["rng_ranks"] = [torch.as_tensor(r) for r in ranks]
        return out

    def step_done(self, done: int, log_rows: list) -> bool:
        """Save when due (every ``every`` steps, at the end, at ``stop_after``); True to stop."""
        stop = self.stop_after is not None and done >= self.stop_after
        if done % self.every == 0 or done == self.total or stop:
            rng = self._rng_states() if self.rng else {}  # a collective: every rank calls it
            if self._main:
                state = {name: self._get(part) for name, part in self.parts.items()}
                state.update(step=done, log=[dict(r) for r in log_rows], **rng)
                save(state, self.ckpt_dir, done, self.keep)
            if self.world > 1:
                self.dist.barrier()
        if stop and self._main:
            print(f"stopping after step {done} as asked (--stop-after)", file=sys.stderr)
        return stop
