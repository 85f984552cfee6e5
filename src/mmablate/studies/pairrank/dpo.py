"""Diffusion-DPO (Wallace et al., 2023) with LoRA adapters (peft) on the UNet's attention: the
training loop. The objective (shared noise and timestep, the adapters-off reference, β) is in
`losses.py`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .losses import adapters_off, dpo_loss, dpo_step_losses, per_sample_mse  # noqa: F401 (re-exported)

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


def train_dpo(cfg: dict, seed: int, out_dir, threads: int = 1, stop_after: int | None = None,
              progress: bool = True) -> dict:
    """LoRA Diffusion-DPO on the selected pairs, on the training harness (``dpo``:
    ``effective_batch``, ``max_grad_norm`` (default 1.0 as before; null: none), ``bf16``,
    ``grad_checkpointing``, ``num_workers``); saves the adapter (peft format) to out_dir/lora.

    One generator (seeded ``seed · 7919``, its state checkpointed) draws each optimizer step's
    pair indices, then the noise, then the timesteps of the whole effective batch
    (`diffusion.StepDraws`): at one process without accumulation these are the hand-written
    loop's draws; with k micro-batches of B/k every pair keeps the noise and timestep it has in
    one batch of B, so the accumulated gradient is that batch's."""
    import torch

    from ...data.pickapic import load_pairs
    from ...errors import DataError
    from ...training.harness import Harness, Tensors
    from ...training.schedule import make_scheduler
    from .diffusion import StepDraws, load_t2i

    t0 = time.time()
    out_dir = Path(out_dir)
    tc = cfg["train"]
    sel = json.loads(Path(cfg["selection"]).read_text())
    if not sel["indices"]:
        raise DataError(f"{cfg['selection']}: the selection keeps zero pairs; nothing to train on")
    pairs = load_pairs(sel["pairs"]).subset(sel["indices"])
    block = {"max_grad_norm": 1.0, **tc}  # clipping at 1.0 unless the block says otherwise
    if not tc.get("effective_batch"):  # a selection smaller than a batch trains on all of it
        block["batch_size"] = min(tc["batch_size"], len(pairs))
    h = Harness(block, seed=seed, out_dir=out_dir, where="studies.pairrank.dpo",
                threads=threads, stop_after=stop_after, progress=progress)
    torch.manual_seed(seed)
    device = h.device.type
    t2i = load_t2i(cfg["model"], device)
    size = t2i.image_size
    xw = t2i.to_latent(pairs.images("winner", size)).cpu()  # the DataLoader's tensors: on the CPU
    xl = t2i.to_latent(pairs.images("loser", size)).cpu()
    params = add_lora(t2i.unet, tc["lora_rank"], tc.get("lora_alpha"))
    g = torch.Generator().manual_seed(seed * 7919)
    n_t = t2i.noise_scheduler().config.num_train_timesteps
    eff = h.settings["effective_batch"]

    def draw(step):
        idx = torch.randint(0, len(pairs), (eff,), generator=g)
        noise = torch.randn((eff, *xw.shape[1:]), generator=g)
        t = torch.randint(0, n_t, (eff,), generator=g)
        return idx, {"noise": noise, "t": t}

    draws = StepDraws(draw, g, batch_size=block["batch_size"], micro_batch=h.micro_batch,
                      accum=h.accum, rank=h.rank)
    # checkpoints: the adapters only (`lora_module`), the optimizer, the schedule and the
    # generator's state after the last finished step's draws
    h.setup(lora_module(t2i.unet),
            lambda m: torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc.get("weight_decay", 0.0)),
            lambda opt: make_scheduler(opt, tc["warmup"], tc["steps"]),
            extra_state={"generator": draws.part})

    def step(batch):
        bw, bl, ids = batch
        d = draws.take()
        cond = t2i.text_states([pairs.captions[i] for i in ids.tolist()])
        loss, acc = dpo_step_losses(t2i, bw, bl, cond, tc["beta"], noise=d["noise"], t=d["t"],
                                    policy=h.model)
        return {"loss": loss, "implicit_acc": acc}

    result = h.fit(step, Tensors(xw, xl, torch.arange(len(pairs))), steps=tc["steps"],
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
