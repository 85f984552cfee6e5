"""PC-CLIP finetuning: align the combination of two image embeddings with the embedding of the
text describing how the first image differs from the second.

* `embed_pairs` — the base model's image embeddings of every training pair, computed once per
  base model and shared by every text-encoder-only variant (the image encoder is frozen there);
* `finetune` — trains the text encoder (``encoders: text``, the paper's) or the text and image
  encoders jointly (``text_image``), plus the concatenation's projection where ``combine: concat``.
  The logit scale stays at the pretrained model's value. Runs on the training harness
  (`mmablate.training.harness`): resumable checkpoints, loss curve CSV, N ranks, accumulation.
"""
from __future__ import annotations

import time
from pathlib import Path

from ...errors import CheckpointError, DataError
from ...training.schedule import make_scheduler, param_groups, set_threads


def load_clip(model_cfg: dict, weights: str | None):
    """(model, preprocess, tokenizer): the base CLIP, or a PC-CLIP checkpoint's CLIP part."""
    from ...models import clip as clipm

    model, preprocess, tok = clipm.build(model_cfg)
    if weights:
        clipm.load_weights(model, weights)
    return model, preprocess, tok


def pair_images(rows, preprocess):
    from ...data.imagetext import open_image
    import torch

    a = torch.stack([preprocess(open_image(r["image_a"])) for r in rows])
    b = torch.stack([preprocess(open_image(r["image_b"])) for r in rows])
    return a, b


def encode_images(model, images, batch: int = 256):
    """Unit-norm image embeddings, computed on the model's device (and left there)."""
    import torch

    from ...device import module_device

    dev = module_device(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(model.encode_image(images[i:i + batch].to(dev), normalize=True).float())
    return torch.cat(out)


def embed_pairs(cfg: dict, base: str | None, out, threads: int = 1) -> dict:
    import torch

    from .data import read_pairs

    set_threads(threads)
    t0 = time.time()
    from ...device import torch_device

    model, preprocess, _ = load_clip(cfg["model"], base)
    model.eval().to(torch_device())
    rows = read_pairs(cfg["pairs"], "train")
    a, b = pair_images(rows, preprocess)
    emb = {"a": encode_images(model, a).cpu(), "b": encode_images(model, b).cpu(),
           "n": len(rows), "pairs": cfg["pairs"]}  # saved on the CPU: loads anywhere
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(emb, out)
    return {"n": len(rows), "dim": int(emb["a"].shape[1]), "wall_s": round(time.time() - t0, 2)}


def load_embeddings(path, n_pairs: int, dim: int):
    from ...util import load_torch_file

    emb = load_torch_file(path, "image embeddings", DataError)
    for k in ("a", "b"):
        if k not in emb:
            raise DataError(f"{path}: no {k!r} embeddings")
        if emb[k].ndim != 2 or emb[k].shape[1] != dim:
            raise DataError(f"{path}: image embeddings {k!r} have shape {tuple(emb[k].shape)}, "
                            f"but the model's embedding dimension is {dim} (mismatched embedding "
                            f"dimensions: were they computed with another model?)")
        if emb[k].shape[0] != n_pairs:
            raise DataError(f"{path}: {emb[k].shape[0]} embeddings for {n_pairs} training pairs")
    return emb["a"], emb["b"]


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


def finetune(cfg: dict, seed: int, base: str | None, captions_csv, embeddings: str | None, out,
             threads: int = 1, stop_after: int | None = None, progress: bool = True) -> dict:
    """On the training harness (`mmablate.training.harness`): N ranks gather the combined image
    vectors and the caption embeddings with gradients before the loss (the contrastive and hinge
    losses are over the whole batch); ``effective_batch`` > ``batch_size`` accumulates as
    open_clip_train's ``accum_freq`` (cached features, the loss over the whole effective batch)."""
    import torch

    from ...training.harness import Harness, Tensors, accum_features
    from .data import read_captions, read_pairs
    from .losses import Combine, PairLoss

    out = Path(out)
    fc = cfg["finetune"]
    tcfg = dict(fc)
    torch.manual_seed(seed)
    model, preprocess, tok = load_clip(cfg["model"], base)
    dim = embed_dim(model)
    rows = read_pairs(cfg["pairs"], "train", need_images=fc["encoders"] == "text_image")
    caps = read_captions(captions_csv, len(rows))
    keep = sorted(caps)
    if tcfg["batch_size"] > len(keep) and tcfg.get("effective_batch") in (None, tcfg["batch_size"]):
        tcfg["batch_size"] = tcfg["effective_batch"] = len(keep)  # as many pairs as there are
    h = Harness(tcfg, seed=seed, out_dir=out.parent, where="finetune", threads=threads,
                stop_after=stop_after, progress=progress)
    if h.settings["effective_batch"] > len(keep):
        raise DataError(f"{captions_csv}: {len(keep)} captioned pairs, fewer than "
                        f"finetune.effective_batch {h.settings['effective_batch']}")
    texts = tok([caps[i] for i in keep])
    text_only = fc["encoders"] == "text"
    if text_only:
        if embeddings is None:
            raise DataError("a text-encoder-only finetuning needs the precomputed image embeddings")
        ea, eb = load_embeddings(embeddings, len(rows), dim)
        data = Tensors(ea[keep], eb[keep], texts)
        for p in model.visual.parameters():
            p.requires_grad_(False)
    else:
        ia, ib = pair_images([rows[i] for i in keep], preprocess)
        data = Tensors(ia, ib, texts)
    model.logit_scale.requires_grad_(False)  # the pretrained temperature, as the paper
    combine = Combine(fc["combine"], dim)
    loss_fn = PairLoss(fc["loss"], fc.get("margin", 0.2))

    def make_optimizer(m):
        groups = param_groups(m["model"].clip, fc["weight_decay"]) + \
            [{"params": list(m["combine"].parameters()), "weight_decay": fc["weight_decay"]}]
        groups = [g for g in groups if g["params"]]
        return torch.optim.AdamW(groups, lr=fc["lr"], betas=(0.9, 0.98), eps=1e-6)

    h.setup({"model": _towers(model, text_only), "combine": combine}, make_optimizer,
            lambda opt: make_scheduler(opt, fc["warmup"], fc["steps"]))

    def features(batch):
        fa, fb, t = h.model["model"](*batch)
        v = h.model["combine"](fa, fb)
        return (h.gather(v), h.gather(t)), model.logit_scale.exp().float()

    def step(micro, backward):
        return accum_features(micro, backward, features,
                              lambda f, scale: {"loss": loss_fn(f[0], f[1], scale)})

    result = h.fit(step, data, steps=fc["steps"], ckpt_every=fc["ckpt_every"],
                   log_every=fc.get("log_every", 10), group=True, columns=["step", "lr", "loss"],
                   summary={"pairs": len(keep)}, desc=f"pcclip finetune seed {seed}")
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
