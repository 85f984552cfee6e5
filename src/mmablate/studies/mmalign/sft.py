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

import numpy as np

from ...training.schedule import make_scheduler


def encode_record(proc, r) -> tuple:
    """One (prompt, answer) record, its image decoded from disk: (prompt ids with the image
    tokens expanded by the processor, answer ids + eos, pixel values, image size or None)."""
    from .data import open_image
    from .model import prompt

    tok = proc.tokenizer
    enc = proc(images=[open_image(r["image"])], text=[prompt(proc, r["question"])],
               return_tensors="pt")
    ans = tok(" " + r["answer"] + " " + tok.eos_token, add_special_tokens=False)["input_ids"]
    sizes = enc["image_sizes"][0] if "image_sizes" in enc else None  # LLaVA-1.6 (AnyRes)
    return enc["input_ids"][0].tolist(), ans, enc["pixel_values"][0], sizes


def encode_batch(proc, records) -> list[tuple]:
    """`encode_record` of several records with one processor call (the per-call overhead of
    the processor is most of a tiny record's cost: 3.4 ms a record one by one, ~1 ms batched).
    AnyRes processors pad their tiles per call, so they encode one record at a time."""
    from .data import open_image
    from .model import prompt

    if "image_grid_pinpoints" in proc.image_processor.to_dict() or len(records) == 1:
        return [encode_record(proc, r) for r in records]
    tok = proc.tokenizer
    enc = proc(images=[open_image(r["image"]) for r in records],
               text=[prompt(proc, r["question"]) for r in records])
    ans = tok([" " + r["answer"] + " " + tok.eos_token for r in records],
              add_special_tokens=False)["input_ids"]
    import torch

    pix = torch.as_tensor(np.asarray(enc["pixel_values"]))
    return [(list(ids), a, pix[k], None) for k, (ids, a) in enumerate(zip(enc["input_ids"], ans))]


def encode_records(proc, records):
    """Every record encoded at once (the eager reference of `Records`; tests)."""
    return [encode_record(proc, r) for r in records]


def collate(items, pad_id):
    """Right-padded batch with labels only on the answer tokens; AnyRes pixel values (one
    tensor of tiles per image) are zero-padded to the batch's largest tile count, which the
    model reads back from ``image_sizes``."""
    import torch

    L = max(len(p) + len(a) for p, a, *_ in items)
    ids = torch.full((len(items), L), pad_id)
    att = torch.zeros((len(items), L), dtype=torch.long)
    lab = torch.full((len(items), L), -100)
    for k, (p, a, *_) in enumerate(items):
        n = len(p) + len(a)
        ids[k, :n] = torch.tensor(p + a)
        att[k, :n] = 1
        lab[k, len(p):n] = torch.tensor(a)
    out = {"input_ids": ids, "attention_mask": att, "labels": lab}
    pix = [it[2] for it in items]
    if items[0][3] is not None:
        T = max(x.shape[0] for x in pix)
        pix = [torch.cat([x, x.new_zeros((T - x.shape[0], *x.shape[1:]))]) for x in pix]
        out["image_sizes"] = torch.stack([it[3] for it in items])
    out["pixel_values"] = torch.stack(pix)
    return out


class Records:
    """The instruction records as a map-style dataset: item i is record i encoded with its image
    decoded from disk when first asked for (in the DataLoader's workers when ``num_workers`` >
    0). ``cache``: keep each encoded item (the world's ~15k tiny records: ~20 MB, each image
    then decoded once); off, nothing is held beyond the batch (paper-sized data)."""

    def __init__(self, proc, records, cache=False):
        self.proc, self.records, self.cache = proc, records, {} if cache else None

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        i = int(i)
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        item = encode_record(self.proc, self.records[i])
        if self.cache is not None:
            self.cache[i] = item
        return item

    def __getitems__(self, idx):
        """A micro-batch's items (the DataLoader asks for them together): the records not yet
        cached encoded with one processor call."""
        idx = [int(i) for i in idx]
        have = self.cache or {}
        todo = sorted({i for i in idx if i not in have})
        new = dict(zip(todo, encode_batch(self.proc, [self.records[i] for i in todo]))) \
            if todo else {}
        if self.cache is not None:
            self.cache.update(new)
        return [have[i] if i in have else new[i] for i in idx]


def train_sft(cfg: dict, out_dir, threads: int = 1, stop_after=None, progress=True) -> dict:
    """Trains on the training harness (``sft``: ``effective_batch``, ``max_grad_norm`` (default
    1.0 as before; null: none), ``bf16``, ``grad_checkpointing``, ``num_workers``); images are
    decoded lazily by `Records` (``cache_items``: keep the encoded records, the tiny default).

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
    items = Records(proc, records, cache=bool(tc.get("cache_items", False)))
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

    result = h.fit(step, items, steps=tc["steps"], ckpt_every=tc["ckpt_every"],
                   log_every=tc["log_every"], order=order,
                   collate=lambda b: collate(b, pad), desc="sft",
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
