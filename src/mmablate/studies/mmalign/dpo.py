"""mmalign's DPO stage: one variant trained with `trainer.BDHSMixedDPOTrainer` (trl's
`DPOTrainer` with the BDHS γ-average and the Mixed-DPO p-mixture) on the offline pairs and their
cached BDHS negatives.

trl keeps its own Trainer loop; the project's training settings (the keys every training block
shares, see `trl_settings`) are routed into trl's `TrainingArguments`:

    effective_batch     → gradient_accumulation_steps = effective_batch / batch_size
    batch_size          → per_device_train_batch_size = batch_size / world size (global micro-batch)
    grad_checkpointing  → gradient_checkpointing (default off; non-reentrant; the paper config
                          turns it on)
    bf16                → bf16 autocast on CUDA only; on the CPU ``use_cpu`` and fp32
    num_workers         → dataloader_num_workers
    max_grad_norm       → max_grad_norm (absent: trl's 1.0, as before; null: no clipping)
    ckpt_every          → save_steps; a run resumes from its newest complete checkpoint

The model loads in bf16 on a GPU (fp32 on the CPU); the dataset holds image paths, decoded per
batch by the trainer's collator (in the DataLoader workers); online pairs of Mixed-DPO are cached
per step under ``online/`` beside the output.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import time
from pathlib import Path


def trl_settings(tc: dict, where: str = "train", cuda: bool | None = None,
                 world_size: int | None = None) -> dict:
    """trl `TrainingArguments` fields from a training block's shared keys (module docstring).
    Errors name ``where`` (the dotted config key of the block)."""
    from ...training.harness import check

    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    # the harness's own check of the shared keys (types, ranges, divisibility; errors name them)
    st = check(tc, where, world)
    out = {"per_device_train_batch_size": st["micro_batch"],
           "gradient_accumulation_steps": st["accum"],
           "gradient_checkpointing": bool(tc.get("grad_checkpointing", False)),
           "use_cpu": not cuda, "bf16": bool(cuda and tc.get("bf16", True)),
           "dataloader_num_workers": int(tc.get("num_workers", 0))}
    if "max_grad_norm" in tc:
        out["max_grad_norm"] = 0.0 if tc["max_grad_norm"] is None else float(tc["max_grad_norm"])
    return out


def last_checkpoint(ckpt_dir) -> Path | None:
    """The newest complete Trainer checkpoint (``checkpoint-N`` with its ``trainer_state.json``;
    one cut short by a kill mid-save is skipped)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = [p for p in ckpt_dir.glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def build_dataset(cfg: dict, proc):
    """The offline pairs (POVID format) joined with their cached BDHS negatives, as the columns
    trl's vision DPO expects (images, prompt, chosen, rejected) plus rejected_bdhs. ``images``
    holds paths: the trainer's collator decodes them per batch (no image is read here)."""
    from ...errors import DataError
    from .data import load_povid
    from .model import prompt

    pairs = load_povid(cfg["pairs"]["file"], cfg["pairs"]["images"], cfg["pairs"].get("limit"))
    bdhs = {}
    if cfg.get("bdhs_file"):
        for i, line in enumerate(Path(cfg["bdhs_file"]).read_text().splitlines()):
            r = json.loads(line)
            bdhs[r["id"]] = r["rejected_bdhs"]
    eos = proc.tokenizer.eos_token
    rows = []
    for p in pairs:
        if cfg.get("bdhs_file") and p["id"] not in bdhs:
            raise DataError(f"{cfg['bdhs_file']}: no BDHS negative for pair {p['id']!r}")
        rows.append({"id": p["id"], "images": [p["image"]], "image_path": p["image"],
                     "question": p["question"], "gt": p["chosen"],
                     "prompt": prompt(proc, p["question"]),
                     "chosen": f" {p['chosen']} {eos}", "rejected": f" {p['rejected']} {eos}",
                     "rejected_bdhs": f" {bdhs.get(p['id'], p['rejected'])} {eos}"})
    return rows


def train_dpo(cfg: dict, seed: int, out_dir, threads: int = 1, judge=None, progress=True,
              save_to=None):
    """Trains one variant; returns (model, processor, summary). Resumes from the newest
    Trainer checkpoint under ``out_dir/ckpt``. ``save_to``: a directory receiving the trained
    model for the benchmark jobs — the LoRA adapter alone when training LoRA (`model.load`
    merges it into its base), else the whole model — and the processor."""
    import torch
    from datasets import Dataset
    from ...training.schedule import set_threads
    from .model import load
    from .trainer import BDHSMixedDPOConfig, BDHSMixedDPOTrainer

    set_threads(threads)
    t0 = time.time()
    out_dir = Path(out_dir)
    tc = cfg["train"]
    torch.manual_seed(seed)
    cuda = torch.cuda.is_available()
    # bf16 weights on a GPU (the 7B policy + reference: 28 GB instead of 56); fp32 on the CPU
    model, proc = load(cfg["model"]["base"],
                       dtype=torch.bfloat16 if cuda and tc.get("bf16", True) else None)
    peft_config, ref_model = None, None
    if cfg["model"].get("lora"):
        from peft import LoraConfig

        lc = cfg["model"]["lora"]
        peft_config = LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc.get("dropout", 0.05),
                                 target_modules=lc["target_modules"], task_type="CAUSAL_LM")
    else:  # full fine-tuning: the frozen SFT model is the reference, passed as a copy (with
        # ref_model=None and no peft, trl reloads it from config._name_or_path: a model built
        # from config has none)
        ref_model = copy.deepcopy(model).eval()
    rows = build_dataset(cfg, proc)
    args = BDHSMixedDPOConfig(
        output_dir=str(out_dir / "ckpt"), max_steps=tc["steps"], learning_rate=tc["lr"],
        beta=cfg["dpo"]["beta"], lr_scheduler_type="cosine", warmup_steps=tc.get("warmup", 0),
        weight_decay=0.0, logging_steps=tc["log_every"], save_steps=tc["ckpt_every"],
        save_total_limit=1, save_only_model=False, seed=seed, data_seed=seed,
        max_length=None, report_to=[], disable_tqdm=not progress, precompute_ref_log_probs=False,
        gamma=float(cfg["bdhs"]["gamma"]), p=float(cfg["mixed_dpo"]["p"]), mix_seed=seed,
        online_max_new_tokens=cfg["mixed_dpo"]["max_new_tokens"],
        online_temperature=cfg["mixed_dpo"].get("temperature", 1.0),
        online_batch_size=cfg["mixed_dpo"].get("batch_size", 64),
        online_cache_dir=str(out_dir / "online") if float(cfg["mixed_dpo"]["p"]) < 1 else None,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        **trl_settings(tc, "studies.mmalign.train", cuda))
    trainer = BDHSMixedDPOTrainer(model=model, ref_model=ref_model, args=args,
                                  train_dataset=Dataset.from_list(rows), processing_class=proc,
                                  peft_config=peft_config, judge=judge)
    resume = last_checkpoint(out_dir / "ckpt")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model = trainer.model
    if save_to is not None and trainer.is_world_process_zero():
        model.save_pretrained(save_to)
        proc.save_pretrained(save_to)
    if peft_config is not None:
        model = model.merge_and_unload()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    keys = sorted({k for r in logs for k in r})
    with open(out_dir / "train_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(logs)
    summary = {"seed": seed, "steps": tc["steps"], "resumed_from": str(resume) if resume else None,
               "final_loss": logs[-1]["loss"] if logs else None, "mix": trainer.mix_log,
               "reward_acc_last": logs[-1].get("rewards/accuracies") if logs else None,
               # β·log(π/π_ref) of the chosen answers, last logged: strongly negative = their
               # likelihood fell (over-optimisation; `report.flags.collapse_reasons`)
               "chosen_reward_last": logs[-1].get("rewards/chosen") if logs else None,
               "wall_s": round(time.time() - t0, 2)}
    return model, proc, summary
