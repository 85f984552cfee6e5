"""Supervised fine-tuning of the tiny LLaVA on the world's instruction data (the shared base).

The paper starts from LLaVA-1.6-7B, already instruction-tuned; the tiny scale has to make its
own: a LLaVA built from config is trained on LLaVA-format instruction data (descriptions and
questions), with the language-model loss on the answer tokens only, as LLaVA's own SFT.
Resumable (checkpoints every `ckpt_every` steps), loss curve in ``train_log.csv``.
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from ...training import checkpoint
from ...training.schedule import make_scheduler, set_threads


def encode_records(proc, records, images_cache=None):
    """Tokenises (prompt, answer) records once: prompt ids (image tokens expanded by the
    processor), answer ids + eos, and the index of each record's image in `pixel_values`."""

    from .data import open_image
    from .model import prompt

    paths = sorted({r["image"] for r in records})
    index = {p: i for i, p in enumerate(paths)}
    imgs = [open_image(p) for p in paths]
    pixel_values = proc.image_processor(imgs, return_tensors="pt")["pixel_values"]
    tok = proc.tokenizer
    out = []
    B = 512
    for i in range(0, len(records), B):
        chunk = records[i:i + B]
        enc = proc(images=[imgs[index[r["image"]]] for r in chunk],
                   text=[prompt(proc, r["question"]) for r in chunk])
        for r, ids in zip(chunk, enc["input_ids"]):
            ans = tok(" " + r["answer"] + " " + tok.eos_token, add_special_tokens=False)["input_ids"]
            out.append((list(ids), ans, index[r["image"]]))
    return out, pixel_values


def collate(items, pixel_values, pad_id):
    """Right-padded batch with labels only on the answer tokens."""
    import torch

    L = max(len(p) + len(a) for p, a, _ in items)
    ids = torch.full((len(items), L), pad_id)
    att = torch.zeros((len(items), L), dtype=torch.long)
    lab = torch.full((len(items), L), -100)
    for k, (p, a, _) in enumerate(items):
        n = len(p) + len(a)
        ids[k, :n] = torch.tensor(p + a)
        att[k, :n] = 1
        lab[k, len(p):n] = torch.tensor(a)
    return {"input_ids": ids, "attention_mask": att, "labels": lab,
            "pixel_values": pixel_values[[i for _, _, i in items]]}


def train_sft(cfg: dict, out_dir, threads: int = 1, stop_after=None, progress=True) -> dict:
    import torch
    from tqdm import tqdm

    from .data import load_llava_instruct
    from .model import build_tiny

    set_threads(threads)
    t0 = time.time()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "ckpt"
    seed, tc = cfg["seed"], cfg["train"]
    torch.manual_seed(seed)
    records = load_llava_instruct(cfg["data"]["file"], cfg["data"]["images"], tc.get("max_records"))
    model, proc = build_tiny(cfg["model"], cfg["colours"], cfg["shapes"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    items, pixel_values = encode_records(proc, records)
    opt = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    sched = make_scheduler(opt, tc["warmup"], tc["steps"])
    # the data order comes from per-step generators, so torch's global RNG is not saved
    ckpt = checkpoint.Resumable(ckpt_dir, {"model": model, "optimizer": opt, "scheduler": sched},
                                every=tc["ckpt_every"], total=tc["steps"], stop_after=stop_after,
                                rng=False)
    start, log_rows = ckpt.resume()
    model.train()
    bs = tc["batch_size"]
    bar = tqdm(range(start, tc["steps"]), desc="sft", disable=not progress, mininterval=5,
               file=sys.stderr, initial=start, total=tc["steps"])
    for step in bar:
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        idx = torch.randint(len(items), (bs,), generator=g).tolist()
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], pixel_values,
                                                     proc.tokenizer.pad_token_id).items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % tc["log_every"] == 0 or step == tc["steps"] - 1:
            log_rows.append({"step": step, "loss": float(loss), "lr": sched.get_last_lr()[0]})
            bar.set_postfix(loss=f"{float(loss):.3f}")
        if ckpt.step_done(step + 1, log_rows):
            return {"stopped_at": step + 1}
    model.save_pretrained(out_dir / "model")
    proc.save_pretrained(out_dir / "model")
    with open(out_dir / "train_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["step", "loss", "lr"])
        w.writeheader()
        w.writerows(log_rows)
    summary = {"steps": tc["steps"], "resumed_from": start, "records": len(records),
               "final_loss": log_rows[-1]["loss"], "wall_s": round(time.time() - t0, 2),
               "params": sum(p.numel() for p in model.parameters()), "device": device}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
