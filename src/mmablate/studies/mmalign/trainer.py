"""mmalign's DPO trainer: trl's `DPOTrainer` extended (by subclassing) with what trl lacks, laid
out as trl lays out its own trainers (a `DPOConfig` subclass holding the method's settings as
dataclass fields, a trainer class reading them from ``self.args``):

* the γ-averaged loss of BDHS (the paper's Eq. 5):
  L = γ · DPO(y⁺, y⁻_external) + (1 − γ) · DPO(y⁺, y⁻_BDHS) — two *different* pair sets per
  example, which trl's `loss_type` list (several losses on one pair) cannot express;
* Mixed-DPO (Eq. 4): each example of a batch is its offline pair with probability p, otherwise an
  online pair — two responses sampled from the current policy, ranked by the judge (a tie gives
  no preference and the example is dropped from that step, counted in ``mix_log``).

The loss is trl's sigmoid DPO (``-log σ(β·Δ)``, Δ the policy-minus-reference log-ratio margin of
a pair) evaluated by hand over one batch holding every sequence of a micro-batch (y⁺, both
negatives, the online pairs), so that 0 < γ < 1 costs one forward and one graph, not two; the
log-probabilities come from trl's fused LM head as in trl's own loss. trl's vision tokenisation
is followed (`_sequences_batch`). Everything else — reference handling (a frozen copy, or the
LoRA adapter disabled), optimisation, gradient accumulation, checkpoints — is trl's. trl's
per-step logs keep ``rewards/accuracies``, ``rewards/margins`` and ``rewards/chosen`` (over all
pairs of the step); its entropy/logit statistics are not computed.

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

from ...util import write_atomic


def collate_examples(examples: list[dict]) -> dict:
    """The trainer's data collator: the raw examples with their images decoded from the paths
    the dataset holds (in the DataLoader's workers when ``dataloader_num_workers`` > 0; no image
    is decoded before training), tokenised later in `compute_loss` with the step's pair sets."""
    from .data import open_image

    return {"examples": [{**e, "images": [open_image(i) if isinstance(i, str) else i
                                          for i in e["images"]]} for e in examples]}


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
        online_batch_size (`int`, defaults to `64`):
            Generation batch of the online responses.
        online_cache_dir (`str` or `None`, defaults to `None`):
            Caches each step's sampled responses and judge scores (a resumed run re-reads them).
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
    online_batch_size: int = field(default=64, metadata={
        "help": "Generation batch of the online responses (2 per online example)."})
    online_cache_dir: str | None = field(default=None, metadata={
        "help": "Directory caching each step's sampled online responses and judge scores."})
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
        """trl's own vision batch of one pair set (the two-pass formulation; tests)."""
        ex = [{"images": _images(e), "prompt": e["prompt"], "chosen": e["chosen"],
               "rejected": e[rejected_key]} for e in examples]
        return self._prepare_inputs(self.vision_collator(ex))

    def _sequences_batch(self, seqs):
        """One padded batch of (example, completion) sequences, tokenised as trl's
        `DataCollatorForVisionPreference` does (prompt with its image left-padded, completion
        right-padded, flushed left, truncated to ``max_length``)."""
        import torch
        from trl.trainer.utils import flush_left

        proc = self.processing_class
        pp = proc(images=[_images(e) for e, _ in seqs], text=[e["prompt"] for e, _ in seqs],
                  padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
        cc = proc(text=[c for _, c in seqs], padding=True, padding_side="right",
                  return_tensors="pt", add_special_tokens=False)
        ids = torch.cat((pp["input_ids"], cc["input_ids"]), dim=1)
        att = torch.cat((pp["attention_mask"], cc["attention_mask"]), dim=1)
        comp = torch.cat((torch.zeros_like(pp["attention_mask"]), cc["attention_mask"]), dim=1)
        att, ids, comp = flush_left(att, ids, comp)
        if self.args.max_length is not None:
            ids, att, comp = (t[:, :self.args.max_length] for t in (ids, att, comp))
        out = dict(pp)
        out.update(input_ids=ids, attention_mask=att, completion_mask=comp)
        return self._prepare_inputs(out)

    def _seq_logps(self, model, batch):
        """(policy, reference) summed completion log-probabilities of every sequence, each from
        one forward (trl's fused LM head: no full logits)."""
        import contextlib

        import torch
        from accelerate.utils import is_peft_model
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        kw = {k: v for k, v in batch.items() if k != "completion_mask"}
        kw["use_cache"] = False
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        n = batch["completion_mask"].size(1) - 1
        logps = model(**kw, labels=labels, fused_lm_head=True).log_probs[:, -n:].sum(1)
        with torch.no_grad(), disable_gradient_checkpointing(
                self.model, self.args.gradient_checkpointing_kwargs):
            if is_peft_model(self.model) and self.ref_model is None:
                un = self.accelerator.unwrap_model(self.model)
                ctx = use_adapter(un, adapter_name="ref" if "ref" in un.peft_config else None)
            else:
                ctx = contextlib.nullcontext()
            with ctx:
                ref_model = self.model if self.ref_model is None else self.ref_model
                ref = ref_model(**kw, labels=labels, fused_lm_head=True).log_probs[:, -n:].sum(1)
        return logps, ref

    def _judge_scores(self, items):
        """Judge scores of (image, question, response, gt) items, asked concurrently where the
        judge can (`rank_many`)."""
        if hasattr(self.judge, "rank_many"):
            return self.judge.rank_many(items)
        return [self.judge.rank_score(*it) for it in items]

    def _online_pairs(self, model, examples):
        """Two sampled responses per example from the current policy (one batched generation),
        ordered by the judge (all 2n responses judged together). The sampled responses and
        their scores are cached per (step, micro-batch, rank) under ``online_cache_dir``: a
        resumed run re-reads them instead of sampling (and judging) again."""
        import json
        from pathlib import Path

        from .model import generate

        cache = None
        if self.args.online_cache_dir:
            step = self.state.global_step
            cache = Path(self.args.online_cache_dir) / \
                f"step{step:06d}_m{self._mix_pos[1] - 1}_r{self.accelerator.process_index}.json"
        ids = [str(e.get("id", k)) for k, e in enumerate(examples)]
        if cache is not None and cache.is_file():
            rec = json.loads(cache.read_text())
            if rec["ids"] == ids:
                outs, scores = rec["responses"], rec["scores"]
            else:
                cache.unlink()
        if cache is None or not cache.is_file():
            unwrapped = self.accelerator.unwrap_model(model)
            was_training = unwrapped.training
            outs = generate(unwrapped, self.processing_class,
                            [_images(e)[0] for e in examples for _ in range(2)],
                            [e["question"] for e in examples for _ in range(2)],
                            max_new_tokens=self.args.online_max_new_tokens, do_sample=True,
                            temperature=self.args.online_temperature,
                            batch_size=self.args.online_batch_size)
            if was_training:
                unwrapped.train()
            scores = self._judge_scores([(e["image_path"], e["question"], o, e["gt"])
                                         for k, e in enumerate(examples)
                                         for o in outs[2 * k:2 * k + 2]])
            if cache is not None:
                with write_atomic(cache) as tmp:
                    tmp.write_text(json.dumps({"ids": ids, "responses": outs, "scores": scores}))
        pairs = []
        eos = self.processing_class.tokenizer.eos_token
        for k, e in enumerate(examples):
            a, b = outs[2 * k], outs[2 * k + 1]
            sa, sb = scores[2 * k], scores[2 * k + 1]
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
        accumulation steps, so k micro-batches of B/k give the loss of one batch of B).

        One forward of the policy (and one of the reference) over every sequence of the
        micro-batch: each offline example contributes y⁺, y⁻_external and y⁻_BDHS (three
        sequences, two pairs weighted γ and 1 − γ; a weight of 0 drops its negative), each online
        pair its two responses. This equals trl's per-pair-set loss summed with those weights
        (`test_gamma_combined_pass_equals_two_trl_passes`) while holding one graph, and runs the
        chosen response once instead of twice when 0 < γ < 1."""
        import torch
        import torch.nn.functional as F

        examples = inputs["examples"]
        step = self.state.global_step
        offline_mask = self.offline_mask(len(examples), step, self._next_micro(step))
        offline = [e for e, m in zip(examples, offline_mask) if m]
        online = [e for e, m in zip(examples, offline_mask) if not m]
        n = len(examples)
        gamma = self.args.gamma
        seqs, pairs = [], []  # pairs: (chosen seq, rejected seq, weight, kind)

        def seq(e, text):
            seqs.append((e, text))
            return len(seqs) - 1

        negs = [(k, w, kind) for k, w, kind in (("rejected", gamma, "offline"),
                                                 ("rejected_bdhs", 1 - gamma, "bdhs")) if w > 0]
        for e in offline:
            c = seq(e, e["chosen"])
            for key, w, kind in negs:
                pairs.append((c, seq(e, e[key]), w / n, kind))
        self.mix_log["offline"] += len(offline)
        if online:
            self.mix_log["online"] += len(online)
            for pr in self._online_pairs(model, online):
                pairs.append((seq(pr, pr["chosen"]), seq(pr, pr["rejected"]), 1 / n, "online"))
        mode = "train" if self.model.training else "eval"
        stats = torch.zeros(4, device=self.accelerator.device)  # n, acc, margin, chosen reward
        if not pairs:  # every online pair tied: a zero loss that still has a graph, from a
            # forward through `model` like any other micro-batch — under DDP every rank must run
            # the wrapped model's forward and backward, or the ranks' gradient all-reduces no
            # longer match and the job hangs (seen in the rehearsal: 2 gloo ranks, one all ties)
            e = examples[0]
            logps, _ = self._seq_logps(model, self._sequences_batch([(e, e["chosen"])]))
            total = logps.sum() * 0.0
        else:
            logps, ref = self._seq_logps(model, self._sequences_batch(seqs))
            ratio = logps - ref
            c = torch.tensor([p[0] for p in pairs], device=ratio.device)
            r = torch.tensor([p[1] for p in pairs], device=ratio.device)
            w = torch.tensor([p[2] for p in pairs], device=ratio.device, dtype=ratio.dtype)
            delta = ratio[c] - ratio[r]
            total = (w * -F.logsigmoid(self.beta * delta)).sum()
            d = (self.beta * delta).detach().float()
            stats = torch.stack([torch.tensor(float(len(pairs)), device=d.device),
                                 (d > 0).float().sum(), d.sum(),
                                 (self.beta * ratio[c]).detach().float().sum()])
        g = self.accelerator.gather(stats[None]).sum(0)
        if g[0] > 0:
            self._metrics[mode]["rewards/accuracies"].append((g[1] / g[0]).item())
            self._metrics[mode]["rewards/margins"].append((g[2] / g[0]).item())
            self._metrics[mode]["rewards/chosen"].append((g[3] / g[0]).item())
        self._metrics[mode]["sequences_per_forward"].append(float(len(seqs)))
        return total


def _images(e) -> list:
    """An example's images, decoded from their paths if the collator has not done so."""
    from .data import open_image

    return [open_image(i) if isinstance(i, str) else i for i in e["images"]]
