"""Diffusion-DPO (Wallace et al., 2023) with LoRA adapters (peft) on the UNet's attention: the
training loop. The objective (shared noise and timestep, the adapters-off reference, β) is in
`losses.py`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .losses import adapters_off, dpo_loss, dpo_step_losses, per_sample_mse  # noqa: F401 (re-exported)
from ...util import write_atomic

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(unet, rank: int, alpha: float | None = None):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                target_modules=TARGETS))
    return [p for p in unet.parameters() if p.requires_grad]


def lora_module(unet):
    """The UNet as the harness trains it: its forward is the UNet's, its ``state_dict`` only the
    LoRA adapters (peft's), so the harness's checkpoints stay adapter-sized as before (the
    harness checkpoints its model's ``state_dict``; this adapter keeps that ours)."""
    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    class LoraUNet(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, *a, **kw):
            return self.unet(*a, **kw)

        def state_dict(self, *a, **kw):
            return get_peft_model_state_dict(self.unet)

        def load_state_dict(self, state, strict: bool = True, assign: bool = False):
            res = set_peft_model_state_dict(self.unet, state)
            if strict and getattr(res, "unexpected_keys", None):
                raise RuntimeError(f"adapter keys do not fit the UNet: {res.unexpected_keys[:3]}")
            return res

    return LoraUNet(unet)


class LatentPairs:
    """The selected pairs' model-space tensors, cached once per DPO job as sharded files (one
    ``<k>-w.npy`` / ``<k>-l.npy`` / ``<k>.json`` triple per input parquet shard holding selected
    pairs) and read memory-mapped: item k is selection position k (the selection's order, as
    ``Pairs.subset`` gave it before). ``__getitems__(idx)`` → (winners, losers, idx) tensors, the
    batch `harness.Tensors` gave; ``captions[k]`` is its prompt."""

    def __init__(self, parts: list[dict], cache_dir: Path, n: int):
        self.paths, self.captions = [], [None] * n
        self.where = np.zeros((n, 2), np.int64)  # selection position → (part, row in part)
        for j, meta in enumerate(parts):
            k = meta["key"]
            self.paths.append((cache_dir / f"{k}-w.npy", cache_dir / f"{k}-l.npy"))
            for r, (pos, cap) in enumerate(zip(meta["positions"], meta["captions"])):
                self.where[pos] = (j, r)
                self.captions[pos] = cap
        self._maps = None
        self.shape = self._arrays()[0][0].shape[1:] if self.paths else None
        # the pixel model's tensors were channels-last (a permuted uint8 image): kept so, since
        # the convolutions' arithmetic (and so the trained numbers) depends on the layout
        self.channels_last = bool(parts and parts[0].get("channels_last"))

    def _arrays(self):
        # opened per process (DataLoader workers map the files themselves, nothing is copied)
        if self._maps is None:
            self._maps = [(np.load(w, mmap_mode="r"), np.load(l, mmap_mode="r")) for w, l in self.paths]
        return self._maps

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def __len__(self):
        return len(self.captions)

    def __getitems__(self, idx):
        import torch

        maps = self._arrays()
        idx = np.asarray(idx, np.int64)
        w = np.empty((len(idx), *self.shape), np.float32)
        l = np.empty_like(w)
        for j in np.unique(self.where[idx, 0]):
            at = np.where(self.where[idx, 0] == j)[0]
            rows = self.where[idx[at], 1]
            w[at] = maps[j][0][rows]
            l[at] = maps[j][1][rows]
        w, l = torch.from_numpy(w), torch.from_numpy(l)
        if self.channels_last:
            w = w.contiguous(memory_format=torch.channels_last)
            l = l.contiguous(memory_format=torch.channels_last)
        return w, l, torch.as_tensor(idx)


def cache_latents(sel: dict, t2i, cache_dir, seed: int, h, num_workers: int = 0,
                  model_key=None, batch: int = 32, progress: bool = True) -> LatentPairs:
    """Streams the selected pairs from their parquet shards (only the row groups holding them,
    decoded and resized in DataLoader workers: shortest side bilinear to the model's image
    size, centre crop, as Diffusion-DPO's transform without its random flip) and encodes them
    once, in batches of `batch` on the job's device (bf16 autocast on CUDA), into the model
    space (pixels, or one posterior sample of the VAE drawn from a generator seeded by `seed`
    and the shard; stored float16 for VAE latents, float32 for pixels).

    Resumable per shard: a shard whose ``<k>.json`` exists, names the same rows and model, and
    whose arrays load, is kept. Ranks encode disjoint shards (round robin), then wait for each
    other. Global pair indices (ties dropped, shard after shard, as `load_pairs`) are mapped to
    (shard, row) by reading only each shard's label columns."""
    import contextlib

    import torch
    from tqdm import tqdm

    from ...data.pickapic import kept_rows, shard_files, stream_pairs
    from ...errors import DataError

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = shard_files(sel["pairs"])
    kept = [kept_rows(f) for f in files]
    offsets = np.cumsum([0] + [len(k) for k in kept])
    idx = np.asarray(sel["indices"], np.int64)
    if idx.min() < 0 or idx.max() >= offsets[-1]:
        raise DataError(f"{sel['pairs']}: selection index {int(idx.max())} beyond the "
                        f"{int(offsets[-1])} non-tied pairs; the selection is of other data")
    shard_of = np.searchsorted(offsets, idx, side="right") - 1
    todo = []
    for i in np.unique(shard_of):
        pos = np.where(shard_of == i)[0]  # selection positions in this shard
        rows = kept[i][idx[pos] - offsets[i]]
        order = np.argsort(rows, kind="stable")  # the stream delivers rows in file order
        todo.append({"key": f"{int(i):05d}", "shard": int(i), "rows": rows[order].tolist(),
                     "positions": pos[order].tolist()})
    model_key = json.dumps(model_key, sort_keys=True)

    def done(meta):
        p = cache_dir / f"{meta['key']}.json"
        try:
            old = json.loads(p.read_text())
            ok = old["rows"] == meta["rows"] and old["model"] == model_key
            for s in "wl":
                ok = ok and np.load(cache_dir / f"{meta['key']}-{s}.npy", mmap_mode="r").shape[0] == len(meta["rows"])
            return old if ok else None
        except (OSError, ValueError, KeyError):
            return None

    cuda = h.device.type == "cuda"
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and h.cfg.get("bf16", True)
           else contextlib.nullcontext())
    dtype = np.float16 if t2i.vae is not None else np.float32
    mine = [m for k, m in enumerate(todo) if k % h.world_size == h.rank and not done(m)]
    bar = tqdm(total=sum(len(m["rows"]) for m in mine), desc="encode selected pairs",
               disable=not (progress and h.is_main) or not mine, mininterval=5, file=sys.stderr)
    for meta in mine:
        i = meta["shard"]
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out = {"w": [], "l": []}
        caps, got, cl = [], [], False
        for unit in stream_pairs(sel["pairs"], size=t2i.image_size, resample="bilinear",
                                 num_workers=num_workers, shards=[i],
                                 rows={i: np.asarray(meta["rows"])}):
            if not unit["caption"]:
                continue
            caps += unit["caption"]
            got += unit["rows"].tolist()
            for s, key in (("w", "winner"), ("l", "loser")):
                for a in range(0, len(unit[key]), batch):
                    with amp:
                        z = t2i.to_latent(unit[key][a:a + batch], generator=g)
                    cl = cl or (z.dim() == 4 and not z.is_contiguous()
                                and z.is_contiguous(memory_format=torch.channels_last))
                    out[s].append(z.float().cpu().numpy().astype(dtype))
            bar.update(len(unit["caption"]))
        if got != meta["rows"]:
            raise DataError(f"{files[i]}: the selected rows did not stream back in order")
        for s in "wl":
            with write_atomic(cache_dir / f"{meta['key']}-{s}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.concatenate(out[s]))
        with write_atomic(cache_dir / f"{meta['key']}.json") as tmp:
            tmp.write_text(json.dumps({**meta, "captions": caps, "model": model_key,
                                       "source": str(files[i]), "channels_last": bool(cl)}))
    bar.close()
    h.barrier()
    parts = [done(m) for m in todo]
    if any(p is None for p in parts):
        raise DataError(f"{cache_dir}: a latent shard is missing after encoding")
    return LatentPairs(parts, cache_dir, len(idx))


def step_draws(h, n_pairs: int, shape, num_train_timesteps: int, seed: int, batch_size: int):
    """The `diffusion.StepDraws` of a DPO run on harness `h`: one generator (seeded
    ``seed · 7919``) draws each optimizer step's pair indices, then the noise, then the timesteps
    of the whole effective batch; ``shape``: one pair's model-space tensor shape."""
    import torch

    from .diffusion import StepDraws

    g = torch.Generator().manual_seed(seed * 7919)
    eff = h.settings["effective_batch"]

    def draw(step):
        idx = torch.randint(0, n_pairs, (eff,), generator=g)
        noise = torch.randn((eff, *shape), generator=g)
        t = torch.randint(0, num_train_timesteps, (eff,), generator=g)
        return idx, {"noise": noise, "t": t}

    return StepDraws(draw, g, batch_size=batch_size, micro_batch=h.micro_batch,
                     accum=h.accum, rank=h.rank)


def make_step(h, t2i, captions, draws, beta: float):
    """The harness step of Diffusion-DPO: batch = (winners, losers, pair ids) of a micro-batch;
    its slice of the step's noise and timesteps from ``draws``; the prompts' text states from
    ``t2i`` (``captions[id]``); the policy is ``h.model`` (the DDP-wrapped `lora_module`)."""

    def step(batch):
        bw, bl, ids = batch
        d = draws.take()
        cond = t2i.text_states([captions[i] for i in ids.tolist()])
        loss, acc = dpo_step_losses(t2i, bw, bl, cond, beta, noise=d["noise"], t=d["t"],
                                    policy=h.model)
        return {"loss": loss, "implicit_acc": acc}

    return step


def train_dpo(cfg: dict, seed: int, out_dir, threads: int = 1, stop_after: int | None = None,
              progress: bool = True) -> dict:
    """LoRA Diffusion-DPO on the selected pairs, on the training harness (``dpo``:
    ``effective_batch``, ``max_grad_norm`` (default 1.0 as before; null: none), ``bf16``,
    ``grad_checkpointing``, ``num_workers``, ``lr_schedule``: cosine (default) or constant after
    the warm-up, ``weight_decay``); saves the adapter (peft format) to out_dir/lora.

    The selected pairs are streamed once from their shards into model-space files under
    out_dir/latents (`cache_latents`) and read memory-mapped by the harness's DataLoader; on the
    world's pixel model these are the pixels the previous whole-table loader gave, bit for bit.
    Departure from the Diffusion-DPO authors' ``train.py``: they VAE-encode each micro-batch
    (a fresh posterior sample and a random horizontal flip every step); here each image has one
    posterior sample and no flip — 91× fewer encoder forwards at the paper recipe
    (benchmarks/README.md, "Pair ranking at paper scale").

    One generator (seeded ``seed · 7919``, its state checkpointed) draws each optimizer step's
    pair indices, then the noise, then the timesteps of the whole effective batch
    (`diffusion.StepDraws`): at one process without accumulation these are the hand-written
    loop's draws; with k micro-batches of B/k every pair keeps the noise and timestep it has in
    one batch of B, so the accumulated gradient is that batch's."""
    import torch

    from ...errors import DataError
    from ...training.harness import Harness, as_is
    from ...training.schedule import make_scheduler
    from .diffusion import load_t2i

    t0 = time.time()
    out_dir = Path(out_dir)
    tc = cfg["train"]
    sel = json.loads(Path(cfg["selection"]).read_text())
    if not sel["indices"]:
        raise DataError(f"{cfg['selection']}: the selection keeps zero pairs; nothing to train on")
    n_sel = len(sel["indices"])
    block = {"max_grad_norm": 1.0, **tc}  # clipping at 1.0 unless the block says otherwise
    if not tc.get("effective_batch"):  # a selection smaller than a batch trains on all of it
        block["batch_size"] = min(tc["batch_size"], n_sel)
    h = Harness(block, seed=seed, out_dir=out_dir, where="studies.pairrank.dpo",
                threads=threads, stop_after=stop_after, progress=progress)
    torch.manual_seed(seed)
    device = h.device.type
    t2i = load_t2i(cfg["model"], device)
    # the selected pairs streamed once into model-space files, read memory-mapped by the loader
    pairs = cache_latents(sel, t2i, out_dir / "latents", seed, h, tc.get("num_workers", 0),
                          model_key=cfg["model"], progress=progress)
    params = add_lora(t2i.unet, tc["lora_rank"], tc.get("lora_alpha"))
    eff = h.settings["effective_batch"]
    draws = step_draws(h, len(pairs), pairs.shape, t2i.noise_scheduler().config.num_train_timesteps,
                       seed, block["batch_size"])
    # checkpoints: the adapters only (`lora_module`), the optimizer, the schedule and the
    # generator's state after the last finished step's draws
    h.setup(lora_module(t2i.unet),
            lambda m: torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc.get("weight_decay", 0.0)),
            lambda opt: make_scheduler(opt, tc["warmup"], tc["steps"], tc.get("lr_schedule", "cosine")),
            extra_state={"generator": draws.part})

    step = make_step(h, t2i, pairs.captions, draws, tc["beta"])
    result = h.fit(step, pairs, collate=as_is, steps=tc["steps"],
                   ckpt_every=tc["ckpt_every"], log_every=tc.get("log_every", 10),
                   order=draws.order, after_step=draws.step_finished,
                   desc=f"diffusion-dpo seed {seed}")
    if "stopped_at" in result:
        return result
    first_loss = h.log_rows[0]["loss"]
    summary = {"seed": seed, "steps": tc["steps"], "resumed_from": result["resumed_from"],
               "n_pairs": len(pairs), "first_loss": first_loss, "final_loss": result["final_loss"],
               "wall_s": round(time.time() - t0, 2), "device": device,
               "world_size": h.world_size, "effective_batch": eff}
    if h.is_main:
        from peft import get_peft_model_state_dict

        lora = out_dir / "lora"
        lora.mkdir(parents=True, exist_ok=True)
        torch.save(get_peft_model_state_dict(t2i.unet), lora / "adapter.pt")
        (lora / "adapter_config.json").write_text(json.dumps(
            {"rank": tc["lora_rank"], "alpha": tc.get("lora_alpha") or tc["lora_rank"],
             "target_modules": TARGETS}))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    h.barrier()
    return summary


def load_lora(unet, lora_dir):
    """Adds the saved adapter to `unet` (a base model loaded by `load_t2i`)."""
    import torch
    from peft import set_peft_model_state_dict

    from ...errors import CheckpointError

    lora_dir = Path(lora_dir)
    try:
        meta = json.loads((lora_dir / "adapter_config.json").read_text())
        state = torch.load(lora_dir / "adapter.pt", map_location="cpu", weights_only=True)
    except (FileNotFoundError, json.JSONDecodeError, RuntimeError) as e:
        raise CheckpointError(f"{lora_dir}: cannot read the LoRA adapter ({e})") from None
    add_lora(unet, meta["rank"], meta["alpha"])
    res = set_peft_model_state_dict(unet, state)
    if getattr(res, "unexpected_keys", None):
        raise CheckpointError(f"{lora_dir}: adapter keys do not fit the UNet: "
                              f"{res.unexpected_keys[:3]}")
    unet.requires_grad_(False)
    return unet
