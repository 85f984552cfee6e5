"""One training harness for every study's trainer, built on Hugging Face ``accelerate``.

A study keeps its model, its batch → loss step and its data; the harness owns the rest: device
placement, DDP across the job's processes (``accelerate`` ``prepare``), bf16 autocast, gradient
accumulation to the configured effective batch, gradient clipping, gradient checkpointing, a
``DataLoader`` with workers over a seeded, rank-split sampler, checkpoint/resume consistent over
ranks, the progress bar (rank 0), the loss log (``train_log.csv``), the run summary
(``train_summary.json``) and ``--stop-after``.

Usage (a study's trainer)::

    h = Harness(cfg["train"], seed=seed, out_dir=out.parent, where="rankclip.train",
                threads=threads, stop_after=stop_after, progress=progress)
    torch.manual_seed(seed); model = build(...)
    h.setup(model, lambda m: torch.optim.AdamW(m.parameters(), lr=...),
            lambda opt: make_scheduler(opt, warmup, steps))     # scheduler factory optional
    def step(batch):                # batch: collated per-rank micro-batch, already on h.device
        out = h.model(*batch)       # h.model: the DDP-wrapped model; h.unwrapped: the module
        return {"loss": ..., "clip": ...}
    result = h.fit(step, dataset, steps=tc["steps"], ckpt_every=tc["ckpt_every"])
    if "stopped_at" in result: return result
    h.save_final(h.unwrapped.state_dict(), out)          # rank 0 writes, atomically

``fit`` returns the run summary (also written to ``train_summary.json``) or
``{"stopped_at": n}`` after ``--stop-after n``.

``setup(models, make_optimizer, make_scheduler=None, extra_state=None)``
    ``models``: one ``nn.Module`` or a dict name → module (``h.model`` / ``h.unwrapped`` then
    are dicts). ``make_optimizer`` receives the unwrapped module(s) already on ``h.device``.
    ``extra_state``: more checkpointed parts, name → object with ``state_dict()`` /
    ``load_state_dict()`` or a ``(get, set)`` pair (peft adapter-only state).
``fit(step, data, *, steps, ckpt_every, log_every=10, order=None, collate=None,
      before_step=None, after_step=None, group=False, summary=None, desc=None, columns=None,
      log_last=True, log_file="train_log.csv", summary_file="train_summary.json")``
    ``data``: a map-style dataset (``__len__`` / ``__getitem__``; ``__getitems__`` is used when
    present; `Tensors` wraps aligned tensors), or a ``torch.utils.data.IterableDataset`` that
    splits itself by rank and DataLoader worker and never ends (a stream of webdataset shards,
    `mmablate.data.shards.ShardStream`): the harness then batches ``micro_batch`` items per
    rank (`stream_loader`), takes no ``order``, and on resume tells the dataset how many
    micro-batches this rank had consumed (its ``start_at`` hook). Map-style datasets are read
    exactly as before. ``order(step) -> LongTensor`` gives the
    ``effective_batch`` dataset indices of one optimizer step (default `epoch_order`: a
    permutation per epoch seeded by ``seed`` and the epoch; `SampledOrder` /
    ``h.sampled_order(n, generator)``: draws with replacement from one generator, checkpointed);
    micro-batch ``j`` of the step is its ``j``-th slice of ``batch_size`` indices, and rank ``r``
    takes the ``r``-th contiguous ``batch_size / world_size`` of that slice — so the ranks'
    micro-batches concatenated in rank order are the one-process micro-batch, and a resumed run
    continues the data order exactly.
    ``step(batch) -> dict`` of scalar losses with a ``"loss"`` key; the harness runs
    backward, accumulation (``accelerate``'s ``accumulate`` / ``backward``: loss / k per
    micro-batch, DDP sync on the last), clipping, ``optimizer.step``, ``scheduler.step`` and
    ``zero_grad``. With ``group=True`` the step receives ``(micro_batches, backward)`` — the list
    of this optimizer step's micro-batches and a callable to run each backward pass
    (``with backward.no_sync():`` around a micro-batch's forward and backward defers DDP's
    gradient all-reduce to a later one) — for objectives over the whole
    effective batch (`accum_features`: CLIP's cached-feature accumulation as open_clip_train's
    ``accum_freq``); it returns one dict of losses and the harness does not rescale them.
    ``before_step(step)`` runs before each optimizer step's forward passes, resumed runs
    included (e.g. a loss weight that depends on the epoch);
    ``after_step(step)`` runs after each optimizer step (e.g. the logit-scale clamp).
    ``ckpt_every=None``: no checkpoints. Logged: step, lr and the losses, averaged over the
    micro-batches and the ranks, every ``log_every`` steps and at the last (``log_last``);
    ``columns`` fixes the CSV's columns; ``summary``: extra keys for the summary JSON;
    ``log_file`` / ``summary_file`` (relative to ``out_dir``, None = not written). After fit,
    ``h.log_rows`` holds the log.
Module functions: ``check(block, where, world_size)`` (the config check, no torch),
``accum_features(micro, backward, features, loss)``, ``epoch_order``, `SampledOrder`,
`Tensors`, `as_is` (collate for ``__getitems__`` datasets), `StepSampler`.
Other members: ``world_size``, ``rank``, ``is_main``, ``device``, ``accum`` (micro-batches per
optimizer step), ``micro_batch`` (per-rank micro-batch), ``accelerator``, ``gather(t)`` (all
ranks' tensors concatenated, with gradients, for losses over the whole batch), ``barrier()``,
``print(...)`` (rank 0, stderr), ``save_final(obj, path)`` (rank 0 writes, atomic), ``settings``
({accum, micro_batch, effective_batch}), ``t0`` (start time).

Where this departs from plain accelerate use: accelerate's prepared DataLoader and scheduler are
not used — the sampler is the harness's (step-indexed, so resume needs no data-loader state),
and the scheduler steps once per optimizer step (accelerate's wrapper steps it once per process).
The test hook ``MMABLATE_TEST_SIGKILL=RANK:STEP`` makes that rank SIGKILL itself after STEP
(the kill-and-resume test).

Config keys read from the training block (all optional; typed by the config schema, ``check``
adds the checks across keys, without torch):
``batch_size`` (the GLOBAL micro-batch, summed over ranks), ``effective_batch`` (samples per
optimizer step over all ranks; default ``batch_size``; accumulation = effective_batch /
batch_size), ``grad_checkpointing`` (false), ``bf16`` (true; autocast bf16 only on CUDA — the CPU
stays fp32), ``num_workers`` (0), ``max_grad_norm`` (null = no clipping).

Numbers at one process, no accumulation: the data order, the RNG draws and the arithmetic are the
hand-written loops' (the ``DataLoader`` has its own generator, so creating it draws nothing from
torch's global RNG; ``accelerator.backward`` divides by 1).

Launching: ``python -m mmablate launch --nproc N -- <subcommand ...>`` (`mmablate.launch`)
starts N processes with ``torchrun``; the harness reads torchrun's ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK`` through ``accelerate`` (CUDA → NCCL; the CPU → gloo, ``DistributedType.MULTI_CPU``).
Multi-node jobs are out of scope: one job is one node (docs/slurm.md, "Multi-GPU jobs").
"""
from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

from ..util import write_atomic

HARNESS_KEYS = ("effective_batch", "grad_checkpointing", "bf16", "num_workers", "max_grad_norm")


def check(block: dict, where: str, world_size: int = 1) -> dict:
    """Config check (no torch): {accum, micro_batch, effective_batch} or a ConfigError naming
    ``where.<key>``. Only what the schema cannot say (workflow/schemas/config.schema.yaml types
    and ranges every harness key of every training block): effective_batch a multiple of
    batch_size, and batch_size split over `world_size` processes."""
    from ..errors import ConfigError

    bs = block["batch_size"]
    eff = block.get("effective_batch")
    eff = bs if eff is None else eff
    if eff % bs:
        raise ConfigError(f"{where}.effective_batch: {eff} is not a multiple of {where}.batch_size "
                          f"{bs} (accumulation steps = effective_batch / batch_size)")
    if bs % world_size:
        raise ConfigError(f"{where}.batch_size: {bs} does not split over {world_size} processes "
                          f"(per-process batch = batch_size / world size)")
    return {"accum": eff // bs, "micro_batch": bs // world_size, "effective_batch": eff}


def epoch_order(n: int, effective_batch: int, seed: int):
    """The default data order: step s takes slice k of epoch e's permutation of range(n), the
    permutation drawn from a generator seeded ``seed * 100_003 + e`` (RankCLIP's and PC-CLIP's
    order before the harness)."""
    import torch

    from ..errors import ConfigError

    if effective_batch > n:
        raise ConfigError(f"effective batch {effective_batch} exceeds the {n} training samples")
    per_epoch = n // effective_batch
    cache = {}

    def order(step: int):
        epoch, k = divmod(step, per_epoch)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(
                seed * 100_003 + epoch))
        return cache[epoch][k * effective_batch:(k + 1) * effective_batch]

    return order


class SampledOrder:
    """Indices drawn with replacement from one sequential generator, ``randint(0, n, (count,))``
    per step (the reward twins' and captioners' order before the harness). Resumable: it is
    checkpointed with the run (the generator's state before the first step not yet done, also
    when the DataLoader has drawn ahead), so a resumed run draws what an uninterrupted one does.
    The steps must be drawn in order."""

    def __init__(self, n: int, count: int, generator):
        self.n, self.count, self.g = n, count, generator
        self._states, self._next, self.done = {}, None, 0

    def __call__(self, step: int):
        import torch

        if self._next is not None and step != self._next:
            raise ValueError(f"SampledOrder: step {step} drawn out of order (expected {self._next})")
        self._states[step] = self.g.get_state()
        self._next = step + 1
        return torch.randint(0, self.n, (self.count,), generator=self.g)

    def mark_done(self, done: int):
        self.done = done
        for k in [k for k in self._states if k < done]:
            del self._states[k]

    def state_dict(self):
        return {"generator": self._states.get(self.done, self.g.get_state()), "step": self.done}

    def load_state_dict(self, state):
        self.g.set_state(state["generator"])
        self._next = self.done = int(state["step"])
        self._states = {}


def accum_features(micro, backward, features, loss):
    """Cached-feature accumulation for an objective over the whole effective batch (open_clip_
    train's ``accum_freq``), for ``fit(..., group=True)`` steps.

    ``features(batch) -> (tuple of per-sample tensors, extra)``; ``loss(tensors, extra) -> dict``
    with ``"loss"``. One micro-batch: features, loss, backward. k micro-batches: the features of
    all are computed without gradients, then each micro-batch is recomputed with gradients, put
    in its place among the cached ones, and the loss of the whole effective batch back-propagated
    (no division by k: the k backward passes together give the full-batch gradient; DDP syncs
    the gradients once, in the last). ``extra``
    (parameters the loss uses directly, e.g. the logit scale) is detached in all but the last
    recomputation, so its gradient is counted once — open_clip_train back-propagates it in every
    micro-batch and so gives the logit scale k times its full-batch gradient; this is exact.
    """
    import contextlib

    import torch

    if len(micro) == 1:
        feats, extra = features(micro[0])
        losses = loss(feats, extra)
        backward(losses["loss"])
        return losses
    with torch.no_grad():
        cache = [features(b)[0] for b in micro]
    last = len(micro) - 1
    for j, b in enumerate(micro):
        no_sync = getattr(backward, "no_sync", None)
        with no_sync() if (no_sync and j < last) else contextlib.nullcontext():
            feats, extra = features(b)
            full = tuple(torch.cat([c[i] for c in cache[:j]] + [f] + [c[i] for c in cache[j + 1:]])
                         for i, f in enumerate(feats))
            # the loss depends on `extra` (the logit scale) once, not once per micro-batch
            losses = loss(full, extra if j == last else _detach(extra))
            backward(losses["loss"])
    return losses


def _detach(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(v) for v in x)
    if isinstance(x, dict):
        return {k: _detach(v) for k, v in x.items()}
    return x


class _Backward:
    """The ``backward`` a group step receives: ``backward(loss)``; ``with backward.no_sync():``
    around a micro-batch's forward and backward defers DDP's gradient all-reduce (DDP decides at
    the forward whether the next backward syncs, so the forward must be inside too)."""

    def __init__(self, harness):
        self.h = harness

    def __call__(self, loss):
        loss.backward()

    def no_sync(self):
        import contextlib

        stack = contextlib.ExitStack()
        if self.h.world_size > 1:
            for m in self.h._wrapped:
                stack.enter_context(self.h.accelerator.no_sync(m))
        return stack


class _NoCheckpoint:
    """``fit(ckpt_every=None)``: no checkpoints (a short stage that reruns from the start)."""

    def __init__(self, stop_after):
        self.stop_after = stop_after

    def resume(self, log=None):
        return 0, []

    def step_done(self, done, log_rows):
        return self.stop_after is not None and done >= self.stop_after


class StepSampler:
    """Batch sampler: this rank's indices of every micro-batch of steps [start, stop)."""

    def __init__(self, order, start: int, stop: int, accum: int, batch_size: int, rank: int,
                 world_size: int):
        self.order, self.start, self.stop, self.accum = order, start, stop, accum
        self.bs, self.rank, self.world = batch_size, rank, world_size
        self.per_rank = batch_size // world_size

    def __len__(self):
        return max(0, self.stop - self.start) * self.accum

    def __iter__(self):
        for step in range(self.start, self.stop):
            idx = self.order(step)
            if len(idx) != self.accum * self.bs:
                raise ValueError(f"order({step}) gave {len(idx)} indices, expected "
                                 f"{self.accum * self.bs} (effective batch)")
            for j in range(self.accum):
                lo = j * self.bs + self.rank * self.per_rank
                yield [int(i) for i in idx[lo:lo + self.per_rank]]


class Tensors:
    """Map-style dataset over aligned tensors (dim 0 = sample): item i is ``tuple(t[i])``; a
    batch is fetched in one indexing per tensor (``__getitems__``; pass ``collate=as_is``),
    identical to indexing the stacked tensors by the batch's indices."""

    def __init__(self, *tensors):
        n = {len(t) for t in tensors}
        if len(n) != 1:
            raise ValueError(f"Tensors: lengths differ {sorted(n)}")
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, idx):
        import torch

        idx = torch.as_tensor(idx, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def as_is(batch):
    """Collate function for datasets whose ``__getitems__`` returns the batch already formed."""
    return batch


def _enable_grad_checkpointing(m) -> bool:
    """The model's own switch (transformers ``gradient_checkpointing_enable``, diffusers
    ``enable_gradient_checkpointing``, open_clip ``set_grad_checkpointing``) on `m`, else on its top-most submodules that have one
    (a study's wrapper around a CLIP). Non-reentrant where the switch takes the option (DDP
    works with it)."""
    if hasattr(m, "gradient_checkpointing_enable"):
        try:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        except TypeError:
            m.gradient_checkpointing_enable()
        return True
    if hasattr(m, "enable_gradient_checkpointing"):  # diffusers' ModelMixin
        m.enable_gradient_checkpointing()
        return True
    if hasattr(m, "set_grad_checkpointing"):
        m.set_grad_checkpointing(True)
        return True
    found = [_enable_grad_checkpointing(c) for c in m.children()]
    return any(found)


def _destroy_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _kill_at():
    """``MMABLATE_TEST_SIGKILL=RANK:STEP``: that rank SIGKILLs itself once STEP is done — the
    fault-tolerance test's kill of one rank mid-run, at a step it chooses (no race with a timer)."""
    v = os.environ.get("MMABLATE_TEST_SIGKILL")
    if not v:
        return None
    rank, step = v.split(":")
    return int(rank), int(step)


def _to_device(batch, device):
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class Harness:
    def __init__(self, train_cfg: dict, *, seed: int, out_dir, where: str = "train",
                 threads: int | None = None, stop_after: int | None = None,
                 progress: bool = True, ckpt_dir=None):
        import torch
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState

        from .schedule import set_threads

        self.cfg, self.seed, self.where = dict(train_cfg), seed, where
        self.out_dir = Path(out_dir)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else self.out_dir / "ckpt"
        self.stop_after, self.progress, self.threads = stop_after, progress, threads
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.settings = check(self.cfg, where, world)
        cuda = torch.cuda.is_available()
        # A process trains once per Accelerator; tests train several times in one process.
        if not torch.distributed.is_initialized():
            AcceleratorState._reset_state(reset_partial_state=True)
        else:
            AcceleratorState._reset_state()
        GradientState._reset_state()
        self.accelerator = Accelerator(
            cpu=not cuda,
            mixed_precision="bf16" if cuda and self.cfg.get("bf16", True) else "no",
            gradient_accumulation_steps=self.settings["accum"])
        if threads is not None:
            set_threads(threads)  # after accelerate, which sets its own count under MULTI_CPU
        acc = self.accelerator
        if acc.num_processes > 1:
            import atexit

            atexit.register(_destroy_process_group)
        self.world_size, self.rank = acc.num_processes, acc.process_index
        if self.world_size != world:
            self.settings = check(self.cfg, where, self.world_size)
        self.is_main, self.device = acc.is_main_process, acc.device
        self.accum, self.micro_batch = self.settings["accum"], self.settings["micro_batch"]
        self.model = self.unwrapped = self.optimizer = self.scheduler = None
        self.log_rows: list[dict] = []
        self.t0 = time.time()

    # -- set-up ---------------------------------------------------------------------------
    def setup(self, models, make_optimizer, make_scheduler=None, extra_state=None):
        from ..errors import ConfigError

        acc = self.accelerator
        named = models if isinstance(models, dict) else {"model": models}
        if self.cfg.get("grad_checkpointing", False):
            for name, m in named.items():
                if not _enable_grad_checkpointing(m):
                    raise ConfigError(f"{self.where}.grad_checkpointing: {name} "
                                      f"({type(m).__name__}) has no gradient checkpointing switch")
        for m in named.values():
            m.to(self.device)
        self._dict = isinstance(models, dict)
        self.unwrapped = models
        self.optimizer = make_optimizer(models)
        self.scheduler = make_scheduler(self.optimizer) if make_scheduler else None
        trainable = {k: m for k, m in named.items()
                     if any(p.requires_grad for p in m.parameters())}
        wrapped = dict(named)
        prepared = acc.prepare(*trainable.values(), self.optimizer)
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        for k, w in zip(trainable, prepared[:-1]):
            wrapped[k] = w
        self.optimizer = prepared[-1]
        self._wrapped = list(wrapped[k] for k in trainable)
        self.model = wrapped if self._dict else wrapped["model"]
        self._extra = dict(extra_state or {})

    def _params(self):
        ps = []
        for m in (self.unwrapped.values() if self._dict else [self.unwrapped]):
            ps.extend(p for p in m.parameters() if p.requires_grad)
        return ps

    # -- collectives ------------------------------------------------------------------------
    def gather(self, t):
        """All ranks' `t` concatenated along dim 0 in rank order, with gradients (open_clip's
        gather_with_grad); `t` itself at one process."""
        if self.world_size == 1:
            return t
        import torch
        import torch.distributed.nn

        return torch.cat(torch.distributed.nn.all_gather(t), dim=0)

    def barrier(self):
        self.accelerator.wait_for_everyone()

    def print(self, *a):
        if self.is_main:
            print(*a, file=sys.stderr)

    # -- checkpoints ------------------------------------------------------------------------
    def _resumable(self, steps, every, order=None):
        from . import checkpoint

        if every is None:
            return _NoCheckpoint(self.stop_after)
        parts = {"model": self.unwrapped if not self._dict else None}
        if self._dict:
            parts = dict(self.unwrapped)
        parts["optimizer"] = self.optimizer
        if self.scheduler is not None:
            parts["scheduler"] = self.scheduler
        parts.update(self._extra)
        if hasattr(order, "state_dict"):
            parts["data_order"] = order
        return checkpoint.Resumable(self.ckpt_dir, parts, every=every, total=steps,
                                    stop_after=self.stop_after, dist=self)

    def save_final(self, obj, path):
        """Rank 0 writes `obj` to `path` atomically (torch.save to a temporary, then rename)."""
        import torch

        if self.is_main:
            with write_atomic(path) as tmp:
                torch.save(obj, tmp)
        self.barrier()

    # -- the loop ---------------------------------------------------------------------------
    def loader(self, data, sampler, collate=None):
        import torch
        from torch.utils.data import DataLoader

        nw = self.cfg.get("num_workers", 0)
        if collate is None and isinstance(data, Tensors):
            collate = as_is
        # its own generator: creating the iterator draws its base seed from it, not from
        # torch's global RNG (which the study's step may use)
        return DataLoader(data, batch_sampler=sampler, num_workers=nw, collate_fn=collate,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.seed),
                          persistent_workers=False, **({"prefetch_factor": 4} if nw else {}))

    def stream_loader(self, data, start: int = 0, collate=None):
        """DataLoader over an ``IterableDataset`` that splits itself by rank and worker (e.g.
        `mmablate.data.shards.ShardStream`): micro-batches of ``micro_batch`` consecutive items
        of one worker, fetched round-robin from the workers. The dataset's ``start_at(batches,
        micro_batch, num_workers, world_size)``, when it has one, is told the micro-batches this
        rank consumed before step ``start`` (a resumed run)."""
        import torch
        from torch.utils.data import DataLoader

        nw = self.cfg.get("num_workers", 0)
        if hasattr(data, "start_at"):
            data.start_at(start * self.accum, self.micro_batch, nw, self.world_size)
        return DataLoader(data, batch_size=self.micro_batch, num_workers=nw, collate_fn=collate,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.seed),
                          persistent_workers=False, **({"prefetch_factor": 4} if nw else {}))

    def sampled_order(self, n: int, generator) -> "SampledOrder":
        """`SampledOrder` of this run's effective batch (see there)."""
        return SampledOrder(n, self.settings["effective_batch"], generator)

    def fit(self, step, data, *, steps: int, ckpt_every: int | None, log_every: int = 10,
            order=None, collate=None, after_step=None, group: bool = False,
            before_step=None, summary: dict | None = None, desc: str | None = None, columns=None,
            log_last: bool = True,
            log_file: str | None = "train_log.csv",
            summary_file: str | None = "train_summary.json") -> dict:
        import torch
        from tqdm import tqdm

        if self.optimizer is None:
            raise RuntimeError("Harness.fit before Harness.setup")
        from torch.utils.data import IterableDataset

        acc = self.accelerator
        eff = self.settings["effective_batch"]
        if isinstance(data, IterableDataset):
            if order is not None:
                raise ValueError("fit: `order` is for map-style datasets; an IterableDataset "
                                 "orders its own samples")
            ckpt = self._resumable(steps, ckpt_every, None)
            start, log_rows = ckpt.resume()
            it = iter(self.stream_loader(data, start, collate))
        else:
            order = order or epoch_order(len(data), eff, self.seed)
            ckpt = self._resumable(steps, ckpt_every, order)
            start, log_rows = ckpt.resume()
            sampler = StepSampler(order, start, steps, self.accum, self.cfg["batch_size"],
                                  self.rank, self.world_size)
            it = iter(self.loader(data, sampler, collate))
        for m in self._wrapped:
            m.train()
        bar = tqdm(range(start, steps), desc=desc or f"train seed {self.seed}",
                   disable=not (self.progress and self.is_main), mininterval=5, file=sys.stderr,
                   initial=start, total=steps)
        kill_at = _kill_at()
        for s in bar:
            micro = [_to_device(next(it), self.device) for _ in range(self.accum)]
            if before_step is not None:
                before_step(s)
            if group:
                losses = self._group_step(step, micro)
            else:
                losses = self._accum_step(step, micro)
            if after_step is not None:
                after_step(s)
            if hasattr(order, "mark_done"):
                order.mark_done(s + 1)
            if s % log_every == 0 or (log_last and s == steps - 1):
                row = {"step": s}
                if self.scheduler is not None:
                    row["lr"] = self.scheduler.get_last_lr()[0]
                else:
                    row["lr"] = self.optimizer.param_groups[0]["lr"]
                names = sorted(losses)
                vals = torch.stack([losses[k].detach().float().reshape(()) for k in names])
                if self.world_size > 1:
                    vals = acc.reduce(vals.to(self.device), reduction="mean")
                row.update({k: float(v) for k, v in zip(names, vals.cpu())})
                log_rows.append(row)
                bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}")
            if ckpt.step_done(s + 1, log_rows):
                bar.close()
                self.log_rows = log_rows
                return {"stopped_at": s + 1}
            if kill_at == (self.rank, s + 1):
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        self.log_rows = log_rows
        return self._finish(steps, start, log_rows, summary or {}, columns, log_file,
                            summary_file)

    def _optimizer_step(self):
        acc = self.accelerator
        mg = self.cfg.get("max_grad_norm")
        if mg is not None:
            acc.clip_grad_norm_(self._params(), mg)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _accum_step(self, step, micro):
        """accelerate's accumulation: loss / accum per micro-batch, DDP sync on the last."""
        acc = self.accelerator
        total = {}
        for batch in micro:
            ctx = acc.accumulate(*self._wrapped)
            with ctx:
                with acc.autocast():
                    losses = step(batch)
                acc.backward(losses["loss"])
                if acc.sync_gradients:
                    self._optimizer_step()
            for k, v in losses.items():
                v = v.detach().float()
                total[k] = total[k] + v if k in total else v
        return {k: v / len(micro) for k, v in total.items()} if len(micro) > 1 else total

    def _group_step(self, step, micro):
        """The study runs the step's forward and backward passes itself (an objective over the
        whole effective batch); no loss rescaling. ``backward.no_sync()`` suppresses DDP's
        gradient sync for the forward + backward passes inside it (all but the last)."""
        acc = self.accelerator
        if acc.scaler is not None:
            raise RuntimeError("group steps do not support fp16 loss scaling")
        with acc.autocast():
            losses = step(micro, _Backward(self))
        acc.gradient_state._set_sync_gradients(True)
        self._optimizer_step()
        return losses

    def _finish(self, steps, start, log_rows, extra, columns, log_file, summary_file) -> dict:
        ps = list((self.unwrapped.values() if self._dict else [self.unwrapped]))
        summary = {"seed": self.seed, "steps": steps, "resumed_from": start,
                   "final_loss": log_rows[-1].get("loss") if log_rows else None,
                   "wall_s": round(time.time() - self.t0, 2), "device": self.device.type,
                   "params": sum(p.numel() for m in ps for p in m.parameters()),
                   "world_size": self.world_size, "effective_batch": self.settings["effective_batch"],
                   "accum": self.accum}
        summary.update(extra)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if log_file:
                keys = list(columns) if columns else sorted({k for r in log_rows for k in r})
                with open(self.out_dir / log_file, "w", newline="") as f:
                    w = csv.DictWriter(f, keys, extrasaction="ignore")
                    w.writeheader()
                    w.writerows(log_rows)
            if summary_file:
                (self.out_dir / summary_file).write_text(json.dumps(summary, indent=1))
        self.barrier()
        return summary
