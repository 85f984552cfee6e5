"""mmalign's DPO trainer: trl's `DPOTrainer` extended (by subclassing) with what trl lacks, laid
out as trl lays out its own trainers (a `DPOConfig` subclass holding the method's settings as
dataclass fields, a trainer class reading them from ``self.args``):

* the γ-averaged loss of BDHS (the paper's Eq. 5):
  L = γ · DPO(y⁺, y⁻_external) + (1 − γ) · DPO(y⁺, y⁻_BDHS) — two *different* pair sets per
  example, which trl's `loss_type` list (several losses on one pair) cannot express;
* Mixed-DPO (Eq. 4): each example of a batch is its offline pair with probability p, otherwise an
  online pair — two responses sampled from the current policy, ranked by the judge (a tie gives
  no preference and the example is dropped from that step, counted in ``mix_log``).

Everything else — the sigmoid DPO loss, reference log-probabilities, the vision collator that
tokenises (images, prompt, chosen, rejected) on the fly, optimisation, gradient accumulation,
checkpoints — is trl's.

The offline/online draws of an optimizer step come from one generator seeded by
``(mix_seed, step)`` and are laid out over the step's whole batch in the order trl's data loader
hands out its micro-batches (micro-batch m of rank r holds positions ``(m·world + r)·n …``). So
k micro-batches of B/k draw the same mixture as one batch of B, and at one process without
accumulation the draws are exactly those of a single ``rng.random(B)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference


def collate_examples(examples: list[dict]) -> dict:
    """The trainer's data collator: the raw examples, tokenised later per pair set."""
    return {"examples": examples}


@dataclass
class BDHSMixedDPOConfig(DPOConfig):
    r"""Configuration of `BDHSMixedDPOTrainer`: trl's `DPOConfig` plus

    Parameters:
        gamma (`float`, defaults to `1.0`):
            BDHS weight of the external (offline) negative in Eq. 5; ``1 − gamma`` weighs the BDHS
            negative (column ``rejected_bdhs``). 1 is plain DPO on the offline pairs.
        p (`float`, defaults to `1.0`):
            Mixed-DPO's probability (Eq. 4) that an example uses its offline pair; otherwise an
            online pair is sampled from the policy and ranked by the judge. 1 is offline only.
        mix_seed (`int` or `None`, defaults to `None`):
            Seed of the per-step offline/online draws; `None` uses ``seed``.
        online_max_new_tokens (`int`, defaults to `32`):
            Length limit of each sampled online response.
        online_temperature (`float`, defaults to `1.0`):
            Sampling temperature of the online responses.
    """

    gamma: float = field(default=1.0, metadata={
        "help": "BDHS (Eq. 5): weight of the external negative; 1 − gamma weighs the BDHS negative."})
    p: float = field(default=1.0, metadata={
        "help": "Mixed-DPO (Eq. 4): probability that an example uses its offline pair."})
    mix_seed: int | None = field(default=None, metadata={
        "help": "Seed of the per-step offline/online draws (None: `seed`)."})
    online_max_new_tokens: int = field(default=32, metadata={
        "help": "Maximum new tokens of each sampled online response."})
    online_temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature of the online responses."})
    # the collator needs the raw columns (images, question, gt, rejected_bdhs, …)
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Must stay False: the trainer tokenises the raw examples per pair set."})

    def __post_init__(self):
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {self.p}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must be False for BDHSMixedDPOTrainer")
        super().__post_init__()


class BDHSMixedDPOTrainer(DPOTrainer):
    """trl's DPO trainer with the BDHS γ-average and the Mixed-DPO p-mixture (module docstring).

    Args (beyond `DPOTrainer`'s):
        judge: ranks two online responses (``rank_score(image_path, question, response, gt)``);
            needed when ``args.p < 1``.
    """

    _tag_names = ["trl", "dpo", "bdhs", "mixed-dpo"]
    _name = "BDHS-Mixed-DPO"

    def __init__(self, model, ref_model=None, args: BDHSMixedDPOConfig | None = None,
                 data_collator=None, *, judge=None, **kw):
        if not isinstance(args, BDHSMixedDPOConfig):
            raise TypeError("BDHSMixedDPOTrainer needs a BDHSMixedDPOConfig as `args`")
        if args.p < 1.0 and judge is None:
            raise ValueError(f"p = {args.p} < 1 samples online pairs: pass a `judge` to rank them")
        super().__init__(model, ref_model=ref_model, args=args,
                         data_collator=data_collator or collate_examples, **kw)
        self.judge = judge
        self.mix_seed = args.seed if args.mix_seed is None else args.mix_seed
        self.vision_collator = DataCollatorForVisionPreference(
            processor=self.processing_class, max_length=self.args.max_length)
        self.mix_log = {"offline": 0, "online": 0, "online_ties": 0}
        self._mix_pos = (None, 0)  # (optimizer step, micro-batches of it seen so far)

    # ---- the mixture draws ---------------------------------------------------------------
    def offline_mask(self, n: int, step: int, micro: int = 0):
        """Which of the ``n`` examples of micro-batch ``micro`` of optimizer step ``step`` use
        their offline pair (a draw < p)."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        start = (micro * world + rank) * n
        rng = np.random.default_rng([self.mix_seed, step])
        return rng.random(start + n)[start:] < self.args.p

    def _next_micro(self, step: int) -> int:
        last, seen = self._mix_pos
        seen = seen if last == step else 0
        self._mix_pos = (step, seen + 1)
        return seen % max(1, self.args.gradient_accumulation_steps)

    # ---- pair sets -------------------------------------------------------------------------
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
                        max_new_tokens=self.args.online_max_new_tokens, do_sample=True,
                        temperature=self.args.online_temperature)
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

    # ---- the loss --------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Mean over the micro-batch's examples of the example's loss: γ-averaged DPO on its
        offline pair, DPO on its online pair, 0 for a tied online pair (trl divides by the
        accumulation steps, so k micro-batches of B/k give the loss of one batch of B)."""
        examples = inputs["examples"]
        step = self.state.global_step
        offline_mask = self.offline_mask(len(examples), step, self._next_micro(step))
        offline = [e for e, m in zip(examples, offline_mask) if m]
        online = [e for e, m in zip(examples, offline_mask) if not m]
        n = len(examples)
        gamma = self.args.gamma
        total = None

        def add(t, w):
            nonlocal total
            total = t * w if total is None else total + t * w

        if offline:
            self.mix_log["offline"] += len(offline)
            w = len(offline) / n
            if gamma > 0:
                add(super().compute_loss(model, self._batch(offline, "rejected")), w * gamma)
            if gamma < 1:
                add(super().compute_loss(model, self._batch(offline, "rejected_bdhs")),
                    w * (1 - gamma))
        if online:
            self.mix_log["online"] += len(online)
            pairs = self._online_pairs(model, online)
            if pairs:
                add(super().compute_loss(model, self._batch(pairs)), len(pairs) / n)
        if total is None:  # every online pair tied: a zero loss that still has a graph
            total = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        return total
