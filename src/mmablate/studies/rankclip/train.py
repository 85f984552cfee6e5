"""CLIP pretraining from scratch with the RankCLIP objective (also the plain CLIP base, λ = 0).

Runs on the training harness (`mmablate.training.harness`): one process or N ranks
(`mmablate launch --nproc N`), bf16 on CUDA, gradient accumulation to ``train.effective_batch``.

* Across ranks the image and text features are gathered WITH gradients (open_clip's
  ``gather_features(gather_with_grad=True)``) before the CLIP and the ranking losses, so both losses
  are over the whole global batch and N ranks train as one process on the same batch does.
* Accumulation (``effective_batch`` = k × ``batch_size``) is open_clip_train's ``accum_freq``:
  the features of all k micro-batches are computed once without gradients, then each micro-batch
  is recomputed with gradients and the loss over the whole effective batch is back-propagated
  through its features, so k micro-batches give the gradient of one batch of k × batch_size.
* Deterministic given (stage config, seed) on the CPU: the data order of every step is derived
  from the seed and the epoch, so a run killed and resumed from its last checkpoint reaches the
  same weights as an uninterrupted one.

Data (``data`` block): webdataset shards in img2dataset's layout (``data.train_shards``: a folder
or brace pattern under ``data.root``; `mmablate.data.shards`) — streamed (`ShardStream`, the
paper scale: decoded in the harness's DataLoader workers, split by rank and worker, shuffle
buffer ``data.shuffle_buffer``) or, with ``data.cache: true``, decoded once into memory and read
in the harness's seeded epoch order (the tiny world's 8,000 32-px pairs; kept decoded under
``<data.root>/.decoded`` for the next job with the same model); or an open_clip-style
CSV (``data.train_csv``, small sets). ``data.train_transform``: ``open_clip_train`` (open_clip's
training transform, ``create_model_and_transforms``' first: RandomResizedCrop at scale 0.9–1) or
``eval`` (resize + centre crop). The authors' code trains with the evaluation-style transform
(Jam1ezhang/RankCLIP ``pkgs/openai/clip.py``: ``Resize``, ``CenterCrop``, ``Normalize`` for
training and evaluation alike); the paper scale uses open_clip's training transform, as
open_clip_train does.

Budget: ``train.steps``, or ``train.epochs`` over the sample count (the shards' stats files or
``data.num_samples``): steps = epochs × ⌊samples / effective batch⌋, as the authors' loop
(``num_batches × epochs`` with ``drop_last``; 64 epochs at batch 128 in their parser).

Loss (``loss`` block): λ = ``rank_weight``, µ = ``decay``, ``scale`` ``paper`` (default) or
``authors_code`` (`losses` module docstring). ``authors_code`` ramps the term by epoch as the
authors' loop does (epochs numbered from 1, Jam1ezhang/RankCLIP ``rankclip/main.py``
``range(start_epoch + 1, epochs + 1)``); the epoch of optimizer step s (from 0) is
``⌊s / ⌊samples / effective batch⌋⌋ + 1``, the epoch of the harness's data order, and the
epoch count is ``⌈steps / ⌊samples / effective batch⌋⌉`` (= ``train.epochs`` with an epoch
budget; with ``train.steps`` a last partial epoch counts). The tiny world: 8,000 pairs at 128
→ 62 steps an epoch, 250 steps → 5 epochs, ramp 0, 0.75, 1.5, 2, 2 (the 5th: steps 248–249).

AdamW: betas ``train.betas``, eps ``train.eps``, default 0.9/0.98 and 1e-6 (open_clip_train's
defaults for ViTs); the paper overlay sets the authors' 0.9/0.999 and 1e-8 (RankCLIP
``rankclip/parser.py``: ``--beta1 0.9 --beta2 0.999 --eps 1e-8``, ``--weight_decay 0.1``,
``--lr 5e-4``, ``--num_warmup_steps 10000``; no decay on bn/ln/bias/logit_scale, as
`param_groups`).
"""
from __future__ import annotations

from pathlib import Path

from ...training.harness import Harness, Tensors, accum_features
from ...training.schedule import make_scheduler, param_groups


class _ImageText:
    """Items (image, tokens) of an ImageTextCsv; preloaded images are indexed per batch."""

    def __init__(self, data, tokens):
        self.data, self.tokens = data, tokens

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data.image(i), self.tokens[i]


def make_step(h, loss_fn):
    """The harness step (``group=True``) of RankCLIP: features of all ranks gathered with
    gradients, cached-feature accumulation over the step's micro-batches (`accum_features`)."""

    def features(batch):
        images, tokens = batch
        o = h.model(images, tokens)
        # the losses in fp32 (autocast covers the towers), over the whole batch of all ranks
        return ((h.gather(o["image_features"].float()), h.gather(o["text_features"].float())),
                o["logit_scale"].float())

    def step(micro, backward):
        return accum_features(micro, backward, features,
                              lambda f, scale: loss_fn(f[0], f[1], scale))

    return step


def resolve_steps(tc: dict, n: int, eff: int) -> int:
    """``train.steps``, or ``train.epochs`` × ⌊n / eff⌋ (the authors' drop-last epochs)."""
    from ...errors import ConfigError

    if tc.get("steps"):
        return int(tc["steps"])
    if not tc.get("epochs"):
        raise ConfigError("train: set train.steps or train.epochs")
    per_epoch = n // eff
    if per_epoch < 1:
        raise ConfigError(f"train.epochs: {n} samples make no full batch of {eff}")
    return int(tc["epochs"]) * per_epoch


def authors_epochs(steps: int, per_epoch: int) -> int:
    """The epoch count of the ``authors_code`` ramp: the epochs the loop enters (module
    docstring); at least 2 (the authors' ramp divides by epochs − 1)."""
    from ...errors import ConfigError

    epochs = -(-steps // per_epoch)
    if epochs < 2:
        raise ConfigError(f"loss.scale authors_code: the ramp 3·(epoch − 1)/(epochs − 1) needs "
                          f"at least 2 epochs; {steps} steps of {per_epoch} an epoch make "
                          f"{epochs}")
    return epochs


def training_data(cfg: dict, root, seed: int, train_pp, eval_pp, tok, progress: bool = True):
    """(dataset, sample count, extra summary) of the stage's ``data`` block (see the module
    docstring): a `ShardStream`, a cached `Tensors` of the shards, or the CSV's `Tensors`."""
    from ...data import shards as S
    from ...data.imagetext import ImageTextCsv
    from ...errors import ConfigError

    d, tc = cfg["data"], cfg["train"]
    kind = d.get("train_transform", "open_clip_train")
    transform = {"open_clip_train": train_pp, "eval": eval_pp}.get(kind)
    if transform is None:
        raise ConfigError(f"data.train_transform: {kind!r}; known: open_clip_train, eval")
    limit = tc.get("max_samples")
    if d.get("train_shards"):
        shards = S.expand_shards(d["train_shards"], root)
        if d.get("cache", False):
            if kind == "open_clip_train":
                raise ConfigError("data.cache: a cached set is transformed once; the random crop "
                                  "of train_transform open_clip_train would be frozen (use eval, "
                                  "or stream with cache: false)")
            # decoded once per data set and model, not once per job (`read_all`'s cache)
            images, texts, skipped = S.read_all(
                shards, transform, tok, progress=progress, cache_dir=Path(root) / ".decoded",
                key={"model": cfg["model"], "train_transform": kind})
            if limit:
                images, texts = images[:limit], texts[:limit]
            return Tensors(images, texts), len(images), {"skipped_corrupt": skipped}
        if limit:
            raise ConfigError("train.max_samples: only for a cached or CSV set (a stream reads "
                              "whole shards; list fewer shards instead)")
        n = S.num_samples(shards, d.get("num_samples"))
        stream = S.ShardStream(shards, transform, tok, seed=seed,
                               shuffle_buffer=d.get("shuffle_buffer", 1000),
                               counts=S.shard_counts(shards))
        return stream, n, {"shards": len(shards)}
    data = ImageTextCsv(Path(root) / d["train_csv"], transform, limit=limit)
    texts = tok(data.captions)
    return (Tensors(data.images, texts) if data.images is not None else _ImageText(data, texts),
            len(data), {})


def train(cfg: dict, seed: int, world_dir, out, threads: int = 1, stop_after: int | None = None,
          progress: bool = True) -> dict:
    import torch

    from ...errors import ConfigError
    from ...models import clip as clipm
    from .losses import RankCLIPLoss

    out = Path(out)
    tc = cfg["train"]
    h = Harness(tc, seed=seed, out_dir=out.parent, where="train", threads=threads,
                stop_after=stop_after, progress=progress)
    torch.manual_seed(seed)
    model, train_pp, eval_pp, tok = clipm.build_for_training(cfg["model"])
    dataset, n, extra = training_data(cfg, world_dir, seed, train_pp, eval_pp, tok,
                                      progress=progress and h.is_main)
    eff = h.settings["effective_batch"]
    if eff > n:
        key = "effective_batch" if tc.get("effective_batch") else "batch_size"
        raise ConfigError(f"train.{key} {eff} exceeds the {n} samples")
    steps = resolve_steps(tc, n, eff)
    if tc["warmup"] >= steps > 1:
        raise ConfigError(f"train.warmup: {tc['warmup']} must be below the {steps} steps")
    lc = cfg["loss"]
    loss_fn = RankCLIPLoss(lc["rank_weight"], lc["decay"], lc.get("scale", "paper"))
    before_step = None
    if loss_fn.scale == "authors_code" and loss_fn.rank_weight > 0:
        per_epoch = n // eff
        epochs = authors_epochs(steps, per_epoch)

        def before_step(s):
            loss_fn.set_epoch(s // per_epoch + 1, epochs)
    cuda = h.device.type == "cuda"
    h.setup(model,
            # fused AdamW is one kernel per step on CUDA (the CPU keeps the reference one)
            lambda m: torch.optim.AdamW(param_groups(m, tc["weight_decay"]), lr=tc["lr"],
                                        betas=tuple(tc.get("betas", (0.9, 0.98))),
                                        eps=tc.get("eps", 1e-6),
                                        **({"fused": True} if cuda else {})),
            lambda opt: make_scheduler(opt, tc["warmup"], steps))

    step = make_step(h, loss_fn)

    def clamp(_step):
        with torch.no_grad():  # clamp the temperature as CLIP does (logit scale ≤ 100)
            h.unwrapped.logit_scale.clamp_(0, 4.6052)

    result = h.fit(step, dataset, steps=steps, ckpt_every=tc["ckpt_every"],
                   log_every=tc.get("log_every", 10), group=True, after_step=clamp,
                   before_step=before_step,
                   desc=f"train seed {seed}",
                   summary=dict(extra, num_samples=n, epochs=round(steps * eff / n, 3)))
    if "stopped_at" in result:
        return result
    h.save_final(h.unwrapped.state_dict(), out)
    return result
