"""Diffusion-DPO (Wallace et al., 2023) with LoRA adapters (peft) on the UNet's attention: the
training loop. The objective (shared noise and timestep, the adapters-off reference, β) is in
`losses.py`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


from ...training import checkpoint
from .losses import adapters_off, dpo_loss, dpo_step_losses, per_sample_mse  # noqa: F401 (re-exported)

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(unet, rank: int, alpha: float | None = None):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                target_modules=TARGETS))
    return [p for p in unet.parameters() if p.requires_grad]


def train_dpo(cfg: dict, seed: int, out_dir, threads: int = 1, stop_after: int | None = None,
              progress: bool = True) -> dict:
    """LoRA Diffusion-DPO on the selected pairs; saves the adapter (peft format) to out_dir/lora."""
    import torch
    from tqdm import tqdm

    from ...data.pickapic import load_pairs
    from ...errors import DataError
    from ...training.schedule import make_scheduler, set_threads
    from .diffusion import load_t2i, write_log

    set_threads(threads)
    t0 = time.time()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "ckpt"
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sel = json.loads(Path(cfg["selection"]).read_text())
    if not sel["indices"]:
        raise DataError(f"{cfg['selection']}: the selection keeps zero pairs; nothing to train on")
    pairs = load_pairs(sel["pairs"]).subset(sel["indices"])
    t2i = load_t2i(cfg["model"], device)
    size = t2i.image_size
    xw = t2i.to_latent(pairs.images("winner", size))
    xl = t2i.to_latent(pairs.images("loser", size))
    tc = cfg["train"]
    params = add_lora(t2i.unet, tc["lora_rank"], tc.get("lora_alpha"))
    opt = torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc.get("weight_decay", 0.0))
    lr_sched = make_scheduler(opt, tc["warmup"], tc["steps"])
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    # only the adapters are saved, and the state of the generator that draws batches, noise and
    # timesteps (a resumed run continues the uninterrupted run's random stream exactly)
    g = torch.Generator().manual_seed(seed * 7919)
    adapters = (lambda: get_peft_model_state_dict(t2i.unet),
                lambda s: set_peft_model_state_dict(t2i.unet, s))
    ckpt = checkpoint.Resumable(ckpt_dir, {"model": adapters, "optimizer": opt,
                                           "scheduler": lr_sched,
                                           "generator": (g.get_state, g.set_state)},
                                every=tc["ckpt_every"], total=tc["steps"], stop_after=stop_after,
                                rng=False)
    start, log_rows = ckpt.resume()
    t2i.unet.train()
    bs = min(tc["batch_size"], len(pairs))
    bar = tqdm(range(start, tc["steps"]), desc=f"diffusion-dpo seed {seed}", disable=not progress,
               mininterval=5, file=sys.stderr, initial=start, total=tc["steps"])
    for step in bar:
        idx = torch.randint(0, len(pairs), (bs,), generator=g)
        cond = t2i.text_states([pairs.captions[i] for i in idx.tolist()])
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss, acc = dpo_step_losses(t2i, xw[idx], xl[idx], cond, tc["beta"], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.get("max_grad_norm", 1.0))
        opt.step()
        lr_sched.step()
        if step % tc.get("log_every", 10) == 0 or step == tc["steps"] - 1:
            log_rows.append({"step": step, "loss": loss.item(), "implicit_acc": acc.item(),
                             "lr": lr_sched.get_last_lr()[0]})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if ckpt.step_done(step + 1, log_rows):
            return {"stopped_at": step + 1}
    lora = out_dir / "lora"
    lora.mkdir(parents=True, exist_ok=True)
    torch.save(get_peft_model_state_dict(t2i.unet), lora / "adapter.pt")
    (lora / "adapter_config.json").write_text(json.dumps(
        {"rank": tc["lora_rank"], "alpha": tc.get("lora_alpha") or tc["lora_rank"],
         "target_modules": TARGETS}))
    write_log(out_dir / "train_log.csv", log_rows)
    summary = {"seed": seed, "steps": tc["steps"], "resumed_from": start, "n_pairs": len(pairs),
               "first_loss": log_rows[0]["loss"], "final_loss": log_rows[-1]["loss"],
               "wall_s": round(time.time() - t0, 2), "device": device}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
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
