"""Supervised fine-tuning of the tiny LLaVA on the world's instruction data (the shared base).

The paper starts from LLaVA-1.6-7B, already instruction-tuned; the tiny scale has to make its
own: a LLaVA built from config is trained on LLaVA-format instruction data (descriptions and
questions), with the language-model loss on the answer tokens only, as LLaVA's own SFT.
Resumable (checkpoints every `ckpt_every` steps), loss curve in ``train_log.csv``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ...training.schedule import make_scheduler


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


class _Items:
    """The encoded records as a map-style dataset (item i: (prompt ids, answer ids, image))."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def train_sft(cfg: dict, out_dir, threads: int = 1, stop_after=None, progress=True) -> dict:
    """Trains on the training harness (``sft``: ``effective_batch``, ``max_grad_norm`` (default
    1.0 as before; null: none), ``bf16``, ``grad_checkpointing``, ``num_workers``).

    Step s trains on ``effective_batch`` records drawn with replacement by a generator seeded
    ``seed · 100003 + s`` (a function of the step: resuming needs no generator state), micro-batch
    j taking the j-th ``batch_size`` of them. The loss of a micro-batch is the mean over its answer
    tokens (the model's own loss), so with accumulation the step's loss weighs micro-batches
    equally rather than tokens equally (exact only when micro-batches hold as many answer
    tokens); at one micro-batch per step it is the hand-written loop's loss."""
    import torch

    from ...training.harness import Harness
    from .data import load_llava_instruct
    from .model import build_tiny

    t0 = time.time()
    out_dir = Path(out_dir)
    seed, tc = cfg["seed"], cfg["train"]
    h = Harness({"max_grad_norm": 1.0, **tc}, seed=seed, out_dir=out_dir,
                where="studies.mmalign.sft", threads=threads, stop_after=stop_after,
                progress=progress)
    torch.manual_seed(seed)
    records = load_llava_instruct(cfg["data"]["file"], cfg["data"]["images"], tc.get("max_records"))
    model, proc = build_tiny(cfg["model"], cfg["colours"], cfg["shapes"])
    items, pixel_values = encode_records(proc, records)
    eff = h.settings["effective_batch"]

    def order(step):
        g = torch.Generator().manual_seed(seed * 100_003 + step)
        return torch.randint(len(items), (eff,), generator=g)

    h.setup(model, lambda m: torch.optim.AdamW(m.parameters(), lr=tc["lr"],
                                               weight_decay=tc["weight_decay"]),
            lambda opt: make_scheduler(opt, tc["warmup"], tc["steps"]))
    pad = proc.tokenizer.pad_token_id

    def step(batch):
        return {"loss": h.model(**batch).loss}

    result = h.fit(step, _Items(items), steps=tc["steps"], ckpt_every=tc["ckpt_every"],
                   log_every=tc["log_every"], order=order,
                   collate=lambda b: collate(b, pixel_values, pad), desc="sft",
                   columns=["step", "loss", "lr"])
    if "stopped_at" in result:
        return result
    summary = {"steps": tc["steps"], "resumed_from": result["resumed_from"],
               "records": len(records), "final_loss": result["final_loss"],
               "wall_s": round(time.time() - t0, 2),
               "params": sum(p.numel() for p in model.parameters()), "device": h.device.type,
               "world_size": h.world_size, "effective_batch": eff}
    if h.is_main:
        model.save_pretrained(out_dir / "model")
        proc.save_pretrained(out_dir / "model")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    h.barrier()
    return summary
