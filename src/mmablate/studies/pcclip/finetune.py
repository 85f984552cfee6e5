"""PC-CLIP finetuning: align the combination of two image embeddings with the embedding of the
text describing how the first image differs from the second.

* `embed_pairs` — the base model's image embeddings of every training pair, computed once per
  base model and shared by every text-encoder-only variant (the image encoder is frozen there);
* `finetune` — trains the text encoder (``encoders: text``, the paper's) or the text and image
  encoders jointly (``text_image``), plus the concatenation's projection where ``combine: concat``.
  The logit scale stays at the pretrained model's value. Resumable checkpoints, loss curve CSV.
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from ...errors import CheckpointError, DataError
from ...training import checkpoint
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


def _batch(n: int, batch: int, step: int, seed: int):
    import torch

    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)[k * batch:(k + 1) * batch]


def finetune(cfg: dict, seed: int, base: str | None, captions_csv, embeddings: str | None, out,
             threads: int = 1, stop_after: int | None = None, progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from .data import read_captions, read_pairs
    from .losses import Combine, PairLoss

    set_threads(threads)
    t0 = time.time()
    torch.manual_seed(seed)
    out = Path(out)
    ckpt_dir = out.parent / "ckpt"
    fc = cfg["finetune"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess, tok = load_clip(cfg["model"], base)
    dim = embed_dim(model)
    rows = read_pairs(cfg["pairs"], "train", need_images=fc["encoders"] == "text_image")
    caps = read_captions(captions_csv, len(rows))
    keep = sorted(caps)
    texts = tok([caps[i] for i in keep])
    if fc["encoders"] == "text":
        if embeddings is None:
            raise DataError("a text-encoder-only finetuning needs the precomputed image embeddings")
        ea, eb = load_embeddings(embeddings, len(rows), dim)
        ea, eb = ea[keep], eb[keep]
        for p in model.visual.parameters():
            p.requires_grad_(False)
    else:
        ia, ib = pair_images([rows[i] for i in keep], preprocess)
    model.logit_scale.requires_grad_(False)  # the pretrained temperature, as the paper
    combine = Combine(fc["combine"], dim).to(device)
    loss_fn = PairLoss(fc["loss"], fc.get("margin", 0.2))
    model.to(device)
    groups = param_groups(model, fc["weight_decay"]) + \
        [{"params": list(combine.parameters()), "weight_decay": fc["weight_decay"]}]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=fc["lr"], betas=(0.9, 0.98), eps=1e-6)
    sched = make_scheduler(opt, fc["warmup"], fc["steps"])
    ckpt = checkpoint.Resumable(ckpt_dir, {"model": model, "combine": combine, "optimizer": opt,
                                           "scheduler": sched},
                                every=fc["ckpt_every"], total=fc["steps"], stop_after=stop_after)
    start, log_rows = ckpt.resume()
    model.train()
    if fc["encoders"] == "text":
        model.visual.eval()
    bf16 = device == "cuda"
    bs = min(fc["batch_size"], len(keep))
    bar = tqdm(range(start, fc["steps"]), desc=f"pcclip finetune seed {seed}", file=sys.stderr,
               disable=not progress, mininterval=5, initial=start, total=fc["steps"])
    for step in bar:
        idx = _batch(len(keep), bs, step, seed)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            if fc["encoders"] == "text":
                fa, fb = ea[idx].to(device), eb[idx].to(device)
            else:
                fa = model.encode_image(ia[idx].to(device), normalize=True).float()
                fb = model.encode_image(ib[idx].to(device), normalize=True).float()
            t = model.encode_text(texts[idx].to(device), normalize=True).float()
            loss = loss_fn(combine(fa, fb), t, model.logit_scale.exp().float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % fc.get("log_every", 10) == 0 or step == fc["steps"] - 1:
            log_rows.append({"step": step, "lr": sched.get_last_lr()[0], "loss": float(loss)})
            bar.set_postfix(loss=f"{float(loss):.3f}")
        if ckpt.step_done(step + 1, log_rows):
            return {"stopped_at": step + 1}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "combine": combine.state_dict(),
                "combine_op": fc["combine"], "dim": dim}, out.with_suffix(".tmp"))
    out.with_suffix(".tmp").replace(out)
    with open(out.parent / "train_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["step", "lr", "loss"])
        w.writeheader()
        w.writerows(log_rows)
    summary = {"seed": seed, "steps": fc["steps"], "resumed_from": start, "pairs": len(keep),
               "final_loss": log_rows[-1]["loss"] if log_rows else None, "device": device,
               "wall_s": round(time.time() - t0, 2)}
    (out.parent / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


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
