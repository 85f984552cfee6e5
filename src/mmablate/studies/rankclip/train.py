"""CLIP pretraining from scratch with the RankCLIP objective (also the plain CLIP base, λ = 0).

Deterministic given (stage config, seed) on the CPU: the data order of every step is derived from
the seed and the epoch, so a run killed and resumed from its last checkpoint reaches the same
weights as an uninterrupted one.
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from ...training import checkpoint
from ...training.schedule import make_scheduler, param_groups, set_threads


def _batch_indices(n: int, batch: int, step: int, seed: int):
    import torch

    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[k * batch:(k + 1) * batch]


def train(cfg: dict, seed: int, world_dir, out, threads: int = 1, stop_after: int | None = None,
          progress: bool = True) -> dict:
    import torch
    from tqdm import tqdm

    from ...data.imagetext import ImageTextCsv
    from ...models import clip as clipm
    from .losses import RankCLIPLoss

    set_threads(threads)
    out = Path(out)
    ckpt_dir = out.parent / "ckpt"
    t0 = time.time()
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, preprocess, tok = clipm.build(cfg["model"])
    model.to(device)
    tc = cfg["train"]
    data = ImageTextCsv(Path(world_dir) / cfg["data"]["train_csv"], preprocess,
                        limit=tc.get("max_samples"))
    texts = tok(data.captions)
    if tc["batch_size"] > len(data):
        raise ValueError(f"train.batch_size {tc['batch_size']} exceeds the {len(data)} samples")
    loss_fn = RankCLIPLoss(cfg["loss"]["rank_weight"], cfg["loss"]["decay"])
    cuda = device == "cuda"
    # fused AdamW is one kernel per step on CUDA (the CPU path keeps the reference implementation)
    opt = torch.optim.AdamW(param_groups(model, tc["weight_decay"]), lr=tc["lr"],
                            betas=tuple(tc.get("betas", (0.9, 0.98))), eps=1e-6,
                            **({"fused": True} if cuda else {}))
    images_all, texts_all = data.images, texts
    # No host-to-device copy in the loop: the preloaded set moves to the GPU once when it fits
    # (larger sets are copied per batch).
    if cuda and images_all.numel() * images_all.element_size() < tc.get("gpu_preload_bytes", 4 << 30):
        images_all, texts_all = images_all.to(device), texts_all.to(device)
    sched = make_scheduler(opt, tc["warmup"], tc["steps"])
    ckpt = checkpoint.Resumable(ckpt_dir, {"model": model, "optimizer": opt, "scheduler": sched},
                                every=tc["ckpt_every"], total=tc["steps"], stop_after=stop_after)
    start, log_rows = ckpt.resume()
    model.train()
    # bf16 autocast as open_clip's amp_bf16 (RankCLIP trains in mixed precision); the losses in
    # fp32. Attention runs through torch's fused SDPA kernels (nn.MultiheadAttention in open_clip).
    bf16 = cuda and tc.get("bf16", True)
    bar = tqdm(range(start, tc["steps"]), desc=f"train seed {seed}", disable=not progress,
               mininterval=5, file=sys.stderr, initial=start, total=tc["steps"])
    for step in bar:
        idx = _batch_indices(len(data), tc["batch_size"], step, seed)
        if cuda and images_all.is_cuda:
            idx = idx.to(device, non_blocking=True)
        images = images_all[idx].to(device, non_blocking=True)
        tokens = texts_all[idx].to(device, non_blocking=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            o = model(images, tokens)
            losses = loss_fn(o["image_features"].float(), o["text_features"].float(),
                             o["logit_scale"].float())
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # clamp the temperature as CLIP does (logit scale ≤ 100)
            model.logit_scale.clamp_(0, 4.6052)
        if step % tc.get("log_every", 10) == 0 or step == tc["steps"] - 1:
            row = {"step": step, "lr": sched.get_last_lr()[0]}
            row.update({k: float(v.detach()) for k, v in losses.items()})
            log_rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        if ckpt.step_done(step + 1, log_rows):
            return {"stopped_at": step + 1}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out.with_suffix(".tmp"))
    out.with_suffix(".tmp").replace(out)
    keys = sorted({k for r in log_rows for k in r})
    with open(out.parent / "train_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(log_rows)
    summary = {"seed": seed, "steps": tc["steps"], "resumed_from": start,
               "final_loss": log_rows[-1]["loss"] if log_rows else None,
               "wall_s": round(time.time() - t0, 2), "device": device,
               "params": sum(p.numel() for p in model.parameters())}
    (out.parent / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
