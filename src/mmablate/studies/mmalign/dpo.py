"""DPO with trl's `DPOTrainer`, extended (by subclassing) with what trl lacks:

* the γ-averaged loss of BDHS (the paper's Eq. 5):
  L = γ · DPO(y⁺, y⁻_external) + (1 − γ) · DPO(y⁺, y⁻_BDHS) — two *different* pair sets per
  example, which trl's `loss_type` list (several losses on one pair) cannot express;
* Mixed-DPO (Eq. 4): each example of a batch is its offline pair with probability p, otherwise an
  online pair — two responses sampled from the current policy, ranked by the judge (a tie gives
  no preference and the example is dropped from that step, counted in the log).

Everything else — the sigmoid DPO loss, reference log-probabilities, the vision collator that
tokenises (images, prompt, chosen, rejected) on the fly, optimisation, checkpoints — is trl's.
"""
from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path

import numpy as np


def make_trainer_class():
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    class BDHSMixedDPOTrainer(DPOTrainer):
        def __init__(self, *args, gamma: float, p_offline: float, judge, online: dict,
                     mix_seed: int, **kw):
            super().__init__(*args, **kw)
            self.gamma, self.p_offline, self.judge, self.online = gamma, p_offline, judge, online
            self.mix_seed = mix_seed
            self.vision_collator = DataCollatorForVisionPreference(
                processor=self.processing_class, max_length=self.args.max_length)
            self.mix_log = {"offline": 0, "online": 0, "online_ties": 0}

        def _batch(self, examples, rejected_key="rejected"):
            ex = [{"images": e["images"], "prompt": e["prompt"], "chosen": e["chosen"],
                   "rejected": e[rejected_key]} for e in examples]
            return self._prepare_inputs(self.vision_collator(ex))

        def _online_pairs(self, model, examples):
            """Two sampled responses per example from the current policy, ordered by the judge."""
            from .model import generate

            unwrapped = self.accelerator.unwrap_model(model)
            was_training = unwrapped.training
            imgs = [e["images"][0] for e in examples for _ in range(2)]
            qs = [e["question"] for e in examples for _ in range(2)]
            outs = generate(unwrapped, self.processing_class, imgs, qs,
                            max_new_tokens=self.online["max_new_tokens"], do_sample=True,
                            temperature=self.online.get("temperature", 1.0))
            if was_training:
                unwrapped.train()
            pairs = []
            eos = self.processing_class.tokenizer.eos_token
            for k, e in enumerate(examples):
                a, b = outs[2 * k], outs[2 * k + 1]
                sa = self.judge.rank_score(e["image_path"], e["question"], a, e["gt"])
                sb = self.judge.rank_score(e["image_path"], e["question"], b, e["gt"])
                if sa == sb or not a.strip() or not b.strip():
                    self.mix_log["online_ties"] += 1
                    continue
                hi, lo = (a, b) if sa > sb else (b, a)
                pairs.append({**e, "chosen": f" {hi} {eos}", "rejected": f" {lo} {eos}"})
            return pairs

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            examples = inputs["examples"]
            step = self.state.global_step
            rng = np.random.default_rng([self.mix_seed, step])
            offline_mask = rng.random(len(examples)) < self.p_offline
            offline = [e for e, m in zip(examples, offline_mask) if m]
            online = [e for e, m in zip(examples, offline_mask) if not m]
            n = len(examples)
            total = None

            def add(t, w):
                nonlocal total
                total = t * w if total is None else total + t * w

            if offline:
                self.mix_log["offline"] += len(offline)
                w = len(offline) / n
                if self.gamma > 0:
                    add(super().compute_loss(model, self._batch(offline, "rejected")), w * self.gamma)
                if self.gamma < 1:
                    add(super().compute_loss(model, self._batch(offline, "rejected_bdhs")),
                        w * (1 - self.gamma))
            if online:
                self.mix_log["online"] += len(online)
                pairs = self._online_pairs(model, online)
                if pairs:
                    add(super().compute_loss(model, self._batch(pairs)), len(pairs) / n)
            if total is None:  # every online pair tied: a zero loss that still has a graph
                total = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return total

    return BDHSMixedDPOTrainer


def build_dataset(cfg: dict, proc):
    """The offline pairs (POVID format) joined with their cached BDHS negatives, as the columns
    trl's vision DPO expects (images, prompt, chosen, rejected) plus rejected_bdhs."""
    from ...errors import DataError
    from .data import load_povid, open_image
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
        rows.append({"images": [open_image(p["image"])], "image_path": p["image"],
                     "question": p["question"], "gt": p["chosen"],
                     "prompt": prompt(proc, p["question"]),
                     "chosen": f" {p['chosen']} {eos}", "rejected": f" {p['rejected']} {eos}",
                     "rejected_bdhs": f" {bdhs.get(p['id'], p['rejected'])} {eos}"})
    return rows


def train_dpo(cfg: dict, seed: int, out_dir, threads: int = 1, judge=None, progress=True):
    """Trains one variant; returns (model, processor, summary). Resumes from the newest
    Trainer checkpoint under ``out_dir/ckpt``."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig

    from ...training.schedule import set_threads
    from .model import load

    set_threads(threads)
    t0 = time.time()
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model, proc = load(cfg["model"]["base"])
    cuda = torch.cuda.is_available()
    peft_config, ref_model = None, None
    if cfg["model"].get("lora"):
        from peft import LoraConfig

        lc = cfg["model"]["lora"]
        peft_config = LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc.get("dropout", 0.05),
                                 target_modules=lc["target_modules"], task_type="CAUSAL_LM")
    else:  # full fine-tuning: the frozen SFT model is the reference (PITFALLS: pass a copy)
        ref_model = copy.deepcopy(model).eval()
    rows = build_dataset(cfg, proc)
    tc = cfg["train"]
    args = DPOConfig(
        output_dir=str(out_dir / "ckpt"), max_steps=tc["steps"], learning_rate=tc["lr"],
        per_device_train_batch_size=tc["batch_size"], beta=cfg["dpo"]["beta"],
        lr_scheduler_type="cosine", warmup_steps=tc.get("warmup", 0), weight_decay=0.0,
        logging_steps=tc["log_every"], save_steps=tc["ckpt_every"], save_total_limit=1,
        save_only_model=False, seed=seed, data_seed=seed, use_cpu=not cuda, bf16=cuda,
        gradient_checkpointing=False, max_length=None, remove_unused_columns=False,
        report_to=[], disable_tqdm=not progress, dataloader_num_workers=0,
        precompute_ref_log_probs=False)
    Trainer = make_trainer_class()
    trainer = Trainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
                      processing_class=proc, peft_config=peft_config,
                      data_collator=lambda ex: {"examples": ex},
                      gamma=float(cfg["bdhs"]["gamma"]), p_offline=float(cfg["mixed_dpo"]["p"]),
                      judge=judge, online=cfg["mixed_dpo"], mix_seed=seed)
    ckpts = sorted((out_dir / "ckpt").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    trainer.train(resume_from_checkpoint=str(ckpts[-1]) if ckpts else None)
    model = trainer.model
    if peft_config is not None:
        model = model.merge_and_unload()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    keys = sorted({k for r in logs for k in r})
    with open(out_dir / "train_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(logs)
    summary = {"seed": seed, "steps": tc["steps"], "resumed_from": str(ckpts[-1]) if ckpts else None,
               "final_loss": logs[-1]["loss"] if logs else None, "mix": trainer.mix_log,
               "reward_acc_last": logs[-1].get("rewards/accuracies") if logs else None,
               "wall_s": round(time.time() - t0, 2)}
    return model, proc, summary
