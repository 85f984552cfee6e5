"""PC-CLIP finetuning: align the combination of two image embeddings with the embedding of the
text describing how the first image differs from the second.

* `embed_pairs` — the base model's image embeddings, computed once per base model (as the
  authors precompute theirs: ``CLIP_ViT-L_14_train.pkl``) and shared by every text-encoder-only
  variant (the image encoder is frozen there): each distinct image of the training and the
  evaluation pairs is read through a `DataLoader` (decoded in its workers) and encoded once, in
  batches on the claimed device; the file holds the per-pair rows (``a``/``b``, ``eval_a``/
  ``eval_b``). The paper draws its pairs among 1,000 COCO images, so this encodes 1,000 images,
  not 2 × the pair count;
* `finetune` — trains the text transformer (``trainable: transformer``, the authors':
  ``torch.optim.Adam(model.transformer.parameters())``; ``text``: the whole text tower —
  token and positional embeddings, transformer, final norm, text projection) with the image
  encoder frozen (``encoders: text``, the paper's), or that and the image encoder
  (``text_image``), plus the concatenation's projection where ``combine: concat``. The logit
  scale is not trained (the loss's temperature is 1 by default, `losses.PairLoss`).
  Optimiser: ``adam`` (the authors': Adam, no weight decay) or ``adamw`` (open_clip's decay
  groups, betas 0.9/0.98, eps 1e-6); schedule ``exponential`` (the authors': ExponentialLR,
  ``gamma`` per epoch) or ``cosine`` (linear warm-up then cosine). The budget is ``steps`` or
  ``epochs`` over the captioned pairs (an epoch = ⌊pairs / effective_batch⌋ steps: the
  harness's epoch order drops the last partial batch of each epoch's permutation, where the
  authors' DataLoader keeps it — at 20,000 pairs and batch 512, 39 of 40 batches, 2.4 % of an
  epoch's pairs, a different 2.4 % each epoch). Runs on the training harness
  (`mmablate.training.harness`): resumable checkpoints, loss curve CSV, N ranks, accumulation;
  image pairs (``text_image``) stream through its `DataLoader`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ...errors import CheckpointError, DataError
from ...training.schedule import make_scheduler, set_threads
from ...util import write_atomic


def load_clip(model_cfg: dict, weights: str | None):
    """(model, preprocess, tokenizer): the base CLIP, or a PC-CLIP checkpoint's CLIP part."""
    from ...models import clip as clipm

    model, preprocess, tok = clipm.build(model_cfg)
    if weights:
        clipm.load_weights(model, weights)
    return model, preprocess, tok


class ImageFiles:
    """Map-style dataset of image files, decoded and preprocessed in the DataLoader's workers."""

    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = list(paths), preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from ...data.imagetext import open_image

        return self.preprocess(open_image(self.paths[i]))


class PairImages:
    """Map-style dataset of (image A, image B[, caption tokens]) per pair (``text_image``
    finetuning): images decoded in the DataLoader's workers, never all held at once."""

    def __init__(self, rows, preprocess, texts=None):
        self.rows, self.preprocess, self.texts = rows, preprocess, texts

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        from ...data.imagetext import open_image

        r = self.rows[i]
        a = self.preprocess(open_image(r["image_a"]))
        b = self.preprocess(open_image(r["image_b"]))
        return (a, b) if self.texts is None else (a, b, self.texts[i])


def image_loader(dataset, batch: int = 256, workers: int = 0):
    """In-order DataLoader (workers decode; pinned memory when a GPU is visible)."""
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                      pin_memory=torch.cuda.is_available(),
                      **({"prefetch_factor": 4} if workers else {}))


def encode_files(model, preprocess, paths, batch: int = 256, workers: int = 0,
                 desc: str = "image embeddings", progress: bool = True):
    """Unit-norm image embeddings of image files, read through a DataLoader and encoded in
    batches on the model's device (left there), float32."""
    import torch
    from tqdm import tqdm

    from ...device import module_device

    dev = module_device(model)
    out = []
    loader = image_loader(ImageFiles(paths, preprocess), batch, workers)
    with torch.no_grad():
        for x in tqdm(loader, desc=desc, disable=not progress, mininterval=5):
            out.append(model.encode_image(x.to(dev, non_blocking=True), normalize=True).float())
    if not out:
        raise DataError("no images to encode")
    return torch.cat(out)


def encode_pairs(model, preprocess, rows, batch: int = 256, workers: int = 0,
                 progress: bool = True):
    """(f(A), f(B)) of pair rows: each distinct image file encoded once."""
    paths = sorted({r["image_a"] for r in rows} | {r["image_b"] for r in rows})
    emb = encode_files(model, preprocess, paths, batch, workers, progress=progress)
    index = {p: i for i, p in enumerate(paths)}
    ia = [index[r["image_a"]] for r in rows]
    ib = [index[r["image_b"]] for r in rows]
    return emb[ia], emb[ib]


def loader_settings(cfg: dict) -> tuple[int, int]:
    """(batch, workers) of the image DataLoaders of the embed and eval stages."""
    lc = cfg.get("loader") or {}
    return int(lc.get("batch_size", 256)), int(lc.get("num_workers", 0))


def embed_pairs(cfg: dict, base: str | None, out, threads: int = 1, progress: bool = True) -> dict:
    import torch

    from .data import read_pairs

    set_threads(threads)
    t0 = time.time()
    from ...device import torch_device

    model, preprocess, _ = load_clip(cfg["model"], base)
    model.eval().to(torch_device())
    batch, workers = loader_settings(cfg)
    train = read_pairs(cfg["pairs"], "train")
    ev = read_pairs(cfg["pairs"], "eval")
    paths = sorted({r[k] for r in train + ev for k in ("image_a", "image_b")})
    emb = encode_files(model, preprocess, paths, batch, workers, progress=progress).cpu()
    index = {p: i for i, p in enumerate(paths)}

    def rows_of(rows, key):
        return emb[[index[r[key]] for r in rows]]

    out_obj = {"a": rows_of(train, "image_a"), "b": rows_of(train, "image_b"),
               "eval_a": rows_of(ev, "image_a"), "eval_b": rows_of(ev, "image_b"),
               "n": len(train), "n_eval": len(ev), "pairs": cfg["pairs"]}  # on the CPU: loads anywhere
    with write_atomic(out) as tmp:
        torch.save(out_obj, tmp)
    return {"n": len(train), "n_eval": len(ev), "images": len(paths), "dim": int(emb.shape[1]),
            "device": str(torch_device()), "wall_s": round(time.time() - t0, 2)}


def load_embeddings(path, n_pairs: int, dim: int, split: str = "train"):
    """(f(A), f(B)) of the `split` pairs from an `embed_pairs` file, checked against the pair
    count and the model's embedding dimension."""
    from ...util import load_torch_file

    emb = load_torch_file(path, "image embeddings", DataError)
    keys = ("a", "b") if split == "train" else ("eval_a", "eval_b")
    for k in keys:
        if k not in emb:
            raise DataError(f"{path}: no {k!r} embeddings")
        if emb[k].ndim != 2 or emb[k].shape[1] != dim:
            raise DataError(f"{path}: image embeddings {k!r} have shape {tuple(emb[k].shape)}, "
                            f"but the model's embedding dimension is {dim} (mismatched embedding "
                            f"dimensions: were they computed with another model?)")
        if emb[k].shape[0] != n_pairs:
            what = "training" if split == "train" else "evaluation"
            raise DataError(f"{path}: {emb[k].shape[0]} embeddings for {n_pairs} {what} pairs")
    return emb[keys[0]], emb[keys[1]]


def embed_dim(model) -> int:
    return int(model.text_projection.shape[1]) if model.text_projection is not None else \
        int(model.token_embedding.weight.shape[1])


def _towers(clip, text_only: bool):
    """The CLIP part of one finetuning batch as one module, so that DDP sees a forward through its
    wrapper (calling ``encode_text`` on the bare model would skip DDP's gradient sync)."""
    import torch

    class Towers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip, self.text_only = clip, text_only

        def forward(self, a, b, texts):
            if self.text_only:  # a, b: the frozen image encoder's precomputed embeddings
                fa, fb = a, b
            else:
                fa = self.clip.encode_image(a, normalize=True).float()
                fb = self.clip.encode_image(b, normalize=True).float()
            return fa, fb, self.clip.encode_text(texts, normalize=True).float()

        def train(self, mode: bool = True):
            super().train(mode)
            if self.text_only:
                self.clip.visual.eval()  # the frozen image tower stays in eval mode
            return self

    return Towers()


def trainable_text(model, which: str):
    """The text-side parameters finetuned: ``transformer`` (the authors': model.transformer) or
    ``text`` (every parameter outside the image tower but the logit scale)."""
    if which == "transformer":
        return list(model.transformer.parameters())
    if which == "text":
        return [p for n, p in model.named_parameters()
                if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")]
    raise DataError(f"finetune.trainable: {which!r}; known: transformer, text")


def budget(fc: dict, n_pairs: int, effective_batch: int) -> tuple[int, int]:
    """(steps, steps per epoch): ``epochs`` × ⌊n / effective batch⌋ when ``epochs`` is set,
    else ``steps``."""
    per_epoch = max(1, n_pairs // effective_batch)
    if fc.get("epochs"):
        return int(fc["epochs"]) * per_epoch, per_epoch
    return int(fc["steps"]), per_epoch


def make_optimizer_for(fc: dict, groups_model, extra_params, trainable):
    """Adam (the authors': no weight decay) or AdamW (open_clip's decay groups)."""
    import torch

    from ...training.schedule import param_groups

    ids = {id(p) for p in trainable}
    if fc.get("optimizer", "adamw") == "adam":
        params = list(trainable) + list(extra_params)
        return torch.optim.Adam(params, lr=fc["lr"], weight_decay=fc.get("weight_decay", 0.0))
    groups = [{"params": [p for p in g["params"] if id(p) in ids],
               "weight_decay": g["weight_decay"]} for g in param_groups(groups_model,
                                                                         fc["weight_decay"])]
    groups.append({"params": list(extra_params), "weight_decay": fc["weight_decay"]})
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=fc["lr"], betas=(0.9, 0.98), eps=1e-6)


def make_schedule_for(fc: dict, steps: int, per_epoch: int):
    """``exponential``: lr × gamma^epoch (torch's ExponentialLR stepped once per epoch, as the
    authors'), after an optional linear warm-up; ``cosine``: warm-up then cosine decay."""
    import torch

    warmup = int(fc.get("warmup", 0))
    if fc.get("schedule", "cosine") == "exponential":
        gamma = float(fc.get("gamma", 0.9))

        def f(s):
            w = (s + 1) / warmup if s < warmup else 1.0
            return w * gamma ** (s // per_epoch)

        return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, f)
    return lambda opt: make_scheduler(opt, warmup, steps)


def whole_set_batch(n_kept: int, world: int, where) -> int:
    """The batch of a set smaller than ``finetune.batch_size``: as many pairs as there are,
    split evenly over the job's ranks (torchrun's ``WORLD_SIZE``; the harness refuses a batch
    that does not split)."""
    n = n_kept - n_kept % world
    if n == 0:
        raise DataError(f"{where}: {n_kept} kept caption(s) cannot make a batch over {world} "
                        f"ranks")
    return n


def make_step(h, loss_fn, logit_scale):
    """The harness step (``group=True``) of the finetuning, over ``h.model`` = {"model": the
    `_towers` module, "combine": the `Combine` head}: the combined image vectors and the caption
    embeddings of all ranks gathered with gradients, cached-feature accumulation over the step's
    micro-batches (`accum_features`); ``logit_scale``: the CLIP's (log) logit-scale parameter."""
    from ...training.harness import accum_features

    def features(batch):
        fa, fb, t = h.model["model"](*batch)
        v = h.model["combine"](fa, fb)
        return (h.gather(v), h.gather(t)), logit_scale.exp().float()

    def step(micro, backward):
        return accum_features(micro, backward, features,
                              lambda f, scale: {"loss": loss_fn(f[0], f[1], scale)})

    return step


def finetune(cfg: dict, seed: int, base: str | None, captions_csv, embeddings: str | None, out,
             threads: int = 1, stop_after: int | None = None, progress: bool = True) -> dict:
    """On the training harness (`mmablate.training.harness`): N ranks gather the combined image
    vectors and the caption embeddings with gradients before the loss (the contrastive and hinge
    losses are over the whole batch); ``effective_batch`` > ``batch_size`` accumulates as
    open_clip_train's ``accum_freq`` (cached features, the loss over the whole effective batch)."""
    import torch

    from ...training.harness import Harness, Tensors
    from .data import read_captions, read_pairs
    from .losses import Combine, PairLoss

    out = Path(out)
    fc = cfg["finetune"]
    tcfg = {k: v for k, v in fc.items()}
    torch.manual_seed(seed)
    model, preprocess, tok = load_clip(cfg["model"], base)
    dim = embed_dim(model)
    rows = read_pairs(cfg["pairs"], "train", need_images=fc["encoders"] == "text_image")
    caps = read_captions(captions_csv, len(rows))
    keep = sorted(caps)
    if tcfg["batch_size"] > len(keep) and tcfg.get("effective_batch") in (None, tcfg["batch_size"]):
        n = whole_set_batch(len(keep), int(os.environ.get("WORLD_SIZE", "1")), captions_csv)
        tcfg["batch_size"] = tcfg["effective_batch"] = n
    h = Harness(tcfg, seed=seed, out_dir=out.parent, where="finetune", threads=threads,
                stop_after=stop_after, progress=progress)
    if h.settings["effective_batch"] > len(keep):
        raise DataError(f"{captions_csv}: {len(keep)} captioned pairs, fewer than "
                        f"finetune.effective_batch {h.settings['effective_batch']}")
    steps, per_epoch = budget(fc, len(keep), h.settings["effective_batch"])
    texts = tok([caps[i] for i in keep])
    text_only = fc["encoders"] == "text"
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = trainable_text(model, fc.get("trainable", "text"))
    if not text_only:
        trainable += list(model.visual.parameters())
    for p in trainable:
        p.requires_grad_(True)
    if text_only:
        if embeddings is None:
            raise DataError("a text-encoder-only finetuning needs the precomputed image embeddings")
        ea, eb = load_embeddings(embeddings, len(rows), dim)
        data = Tensors(ea[keep], eb[keep], texts)
    else:  # images decoded in the harness DataLoader's workers (finetune.num_workers)
        data = PairImages([rows[i] for i in keep], preprocess, texts)
    combine = Combine(fc["combine"], dim)
    loss_fn = PairLoss(fc["loss"], fc.get("margin", 0.2), fc.get("temperature", 1.0))

    def make_optimizer(m):
        return make_optimizer_for(fc, m["model"].clip, m["combine"].parameters(), trainable)

    h.setup({"model": _towers(model, text_only), "combine": combine}, make_optimizer,
            make_schedule_for(fc, steps, per_epoch))

    step = make_step(h, loss_fn, model.logit_scale)
    result = h.fit(step, data, steps=steps, ckpt_every=fc["ckpt_every"],
                   log_every=fc.get("log_every", 10), group=True, columns=["step", "lr", "loss"],
                   summary={"pairs": len(keep), "steps_per_epoch": per_epoch,
                            "trainable_params": sum(p.numel() for p in trainable)},
                   desc=f"pcclip finetune seed {seed}")
    if "stopped_at" in result:
        return result
    h.save_final({"model": model.state_dict(), "combine": combine.state_dict(),
                  "combine_op": fc["combine"], "dim": dim}, out)
    return result


def load_finetuned(model, path):
    """Loads a PC-CLIP checkpoint into `model`; returns the trained `Combine`."""
    from ...util import load_torch_file
    from .losses import Combine

    path = Path(path)
    state = load_torch_file(path, "checkpoint (PC-CLIP)")
    for k in ("model", "combine", "combine_op", "dim"):
        if k not in state:
            raise CheckpointError(f"{path}: not a PC-CLIP checkpoint (no {k!r})")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the configured model: {e}") from None
    if state["dim"] != embed_dim(model):
        raise CheckpointError(f"{path}: combine head of dimension {state['dim']} for a model of "
                              f"embedding dimension {embed_dim(model)}")
    combine = Combine(state["combine_op"], state["dim"])
    combine.load_state_dict(state["combine"])
    return combine
