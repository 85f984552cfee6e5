"""The four bench cases: one study trainer each, run for a few steps on synthetic inputs.

Each case builds the study's model (random weights, from a config: nothing is downloaded), its
loss and optimizer from the paper scale's config blocks (``studies.<id>`` of the merged
``--config`` files), and runs the study's own step through its trainer — `Harness.fit` with the
step function the study's training stage uses, or (mmalign) the study's trl trainer — timed by
`timing.StepClock`. No loss is written here.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .timing import WARMUP_STEPS, Result, StepClock, params_m

# The cases' shapes: paper (the real resolution; architectures from the paper config unless
# named here) and smoke (tiny dims that run on a CPU in seconds).
SIZES = {
    "rankclip": {"paper": {"image": 224, "batch": None},
                 "smoke": {"image": 32, "batch": 8}},
    "pcclip": {"paper": {"image": 224, "batch": None},
               "smoke": {"image": 32, "batch": 8}},
    "pairrank": {"paper": {"latent": 64, "batch": 8, "lora_rank": None},
                 "smoke": {"latent": 8, "batch": 2, "lora_rank": 4}},
    "mmalign": {"paper": {"llm_layers": 8, "batch": 2, "text_len": 256, "image": 336},
                "smoke": {"llm_layers": 2, "batch": 2, "text_len": 16, "image": 32}},
}

# the smoke size's CLIP (open_clip model config)
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                            "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2,
                          "layers": 2}}


def sd15_unet_config(latent: int, smoke: bool) -> dict:
    """SD-1.5's UNet config (runwayml/stable-diffusion-v1-5 unet/config.json), or a tiny one."""
    cfg = dict(sample_size=latent, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280),
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
               cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
               act_fn="silu", center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
               downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5)
    if smoke:
        cfg.update(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
                   norm_num_groups=16)
    return cfg


# SD-1.5's noise schedule (runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json)
SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}

# LLaVA-1.6-Vicuna-7B's shapes (cost.models.PUBLISHED lists the same config): CLIP ViT-L/14-336
# and a Llama-2-7B-shaped language model of depth `llm_layers`; the vocabulary size is Vicuna's
LLAVA_7B = {"vision": {"patch_size": 14, "width": 1024, "layers": 24, "heads": 16},
            "text": {"width": 4096, "mlp": 11008, "heads": 32, "max_len": 4096}, "vocab": 32064}
LLAVA_TINY = {"vision": {"patch_size": 8, "width": 32, "layers": 2, "heads": 2},
              "text": {"width": 64, "mlp": 128, "heads": 4, "max_len": 256}, "vocab": None}


def _harness(tmp, bf16: bool, batch: int, threads, **keys):
    from ..training.harness import Harness

    block = {"batch_size": batch, "bf16": bf16, "num_workers": 0, **keys}
    return Harness(block, seed=0, out_dir=tmp, where="bench", threads=threads, progress=False)


def _fit(h, step, data, steps, **kw):
    """`Harness.fit` for WARMUP_STEPS + ``steps`` steps with a `StepClock` as (or before) its
    ``after_step``; nothing written (no checkpoints, log or summary)."""
    clock = StepClock(h.device)
    after = kw.pop("after_step", None)

    def after_step(s):
        if after is not None:
            after(s)
        clock.after_step(s)

    try:
        h.fit(step, data, steps=WARMUP_STEPS + steps, ckpt_every=None, log_every=10 ** 9,
              log_last=False, after_step=after_step, log_file=None, summary_file=None, **kw)
    finally:
        clock.close()
    return clock


def _clip_cfg(model_cfg: dict, smoke: bool) -> dict:
    """The open_clip model block the study builds (`models.clip.build_for_training`): the paper
    config's architecture without pretrained weights, or the tiny smoke CLIP."""
    if smoke:
        import copy

        return {"arch": "bench-clip-tiny", "cfg": copy.deepcopy(TINY_CLIP), "tokenizer": "world"}
    return {"arch": model_cfg["arch"], "pretrained": None, "tokenizer": "open_clip", "cfg": None}


def _tokens(model, n, device=None):
    import torch

    return torch.randint(1, model.vocab_size - 1, (n, model.context_length), device=device)


# ---- rankclip ----------------------------------------------------------------------------
def case_rankclip(study: dict, sz: dict, steps: int, bf16: bool, threads, smoke: bool):
    """`studies.rankclip.train.make_step` (the group step: cached-feature accumulation, features
    gathered over ranks, `RankCLIPLoss`) on `Harness.fit`, AdamW over the study's parameter
    groups, the logit-scale clamp after each step."""
    import torch

    from ..models import clip as clipm
    from ..studies.rankclip.losses import RankCLIPLoss
    from ..studies.rankclip.train import make_step
    from ..training.harness import Tensors
    from ..training.schedule import param_groups

    tc = study["train"]
    mcfg = _clip_cfg(study["model"], smoke)
    if smoke:
        mcfg["cfg"]["vision_cfg"]["image_size"] = sz["image"]
    torch.manual_seed(0)
    model = clipm.build_for_training(mcfg)[0]
    B = sz["batch"] or tc["batch_size"]
    data = Tensors(torch.randn(B, 3, sz["image"], sz["image"]), _tokens(model, B))

    def run(rank_weight):
        with tempfile.TemporaryDirectory() as tmp:
            h = _harness(tmp, bf16, B, threads)
            h.setup(model, lambda m: torch.optim.AdamW(
                param_groups(m, tc["weight_decay"]), lr=tc["lr"],
                betas=tuple(tc.get("betas", (0.9, 0.98))), eps=tc.get("eps", 1e-6)))
            step = make_step(h, RankCLIPLoss(rank_weight, study["loss"]["decay"]))

            def clamp(_s):
                with torch.no_grad():
                    h.unwrapped.logit_scale.clamp_(0, 4.6052)

            return h, _fit(h, step, data, steps, group=True, after_step=clamp)

    lam = study["loss"]["rank_weight"]
    h, clock = run(lam)
    r = Result("rankclip", f"open_clip {mcfg['arch']} @{sz['image']}px, RankCLIP λ={lam:g}", B,
               clock.median, params_m(model), clock.flops, step_times=clock.times,
               path="studies.rankclip.train.make_step on Harness.fit")
    # open_clip_train's step computes the plain CLIP loss: compare it with ours at λ = 0
    r.same_loss_step_s = run(0.0)[1].median
    r.notes.append(f"λ=0: {r.same_loss_step_s:.4f} s/step")
    _reference_open_clip(r, model, data.tensors, h.device, bf16, steps)
    return r


def _reference_open_clip(r, model, tensors, device, bf16, steps):
    """open_clip_train's train_one_epoch on the same batch (the ecosystem's CLIP loop, timed
    beside the product's at the same loss), when that package is installed."""
    try:
        from open_clip_train.train import train_one_epoch
    except ImportError:
        r.reference = "open_clip_train: not installed"
        return
    import argparse
    import time

    import open_clip
    import torch

    images, texts = (t.to(device) for t in tensors)

    class _Loader(list):
        num_batches = 1
        num_samples = images.shape[0]

    data = {"train": argparse.Namespace(dataloader=_Loader([(images, texts)]), sampler=None,
                                        set_epoch=lambda e: None)}
    args = argparse.Namespace(
        device=str(device), precision="amp_bf16" if bf16 and device.type == "cuda" else "fp32",
        accum_freq=1, grad_clip_norm=None, batch_size=images.shape[0], world_size=1, rank=0,
        local_loss=False, gather_with_grad=False, distill=False, horovod=False,
        log_every_n_steps=10**9, wandb=False, save_logs=False, val_frequency=0, distributed=False,
        skip_scheduler=True, epochs=1, checkpoint_path=None)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = open_clip.ClipLoss()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        ts = []
        for i in range(WARMUP_STEPS + steps):
            t0 = time.perf_counter()
            train_one_epoch(model, data, loss, 0, opt, None, lambda s: None, None, args)
            sync()
            if i >= WARMUP_STEPS:
                ts.append(time.perf_counter() - t0)
        r.ref_step_s = sorted(ts)[len(ts) // 2]
        r.reference = "open_clip_train.train_one_epoch (CLIP loss)"
    except Exception as e:  # its signature changes between releases: say so, do not guess
        r.reference = f"open_clip_train failed: {type(e).__name__}: {e}"[:80]


# ---- pcclip ------------------------------------------------------------------------------
def case_pcclip(study: dict, sz: dict, steps: int, bf16: bool, threads, smoke: bool):
    """`studies.pcclip.finetune.make_step` on `Harness.fit` with the paper's finetune block
    (encoders, combine, loss, trainable text parameters, optimizer): cached image embeddings of
    both images of a pair (the embed stage's output, computed once here) and the captions."""
    import torch

    from ..models import clip as clipm
    from ..studies.pcclip import finetune as F
    from ..studies.pcclip.losses import Combine, PairLoss
    from ..training.harness import Tensors

    fc = study["finetune"]
    if fc["encoders"] != "text":
        raise ValueError(f"bench pcclip: finetune.encoders {fc['encoders']!r}; the bench times "
                         f"the text-encoder finetuning (encoders: text)")
    mcfg = _clip_cfg(study["base"]["model"], smoke)
    if smoke:
        mcfg["cfg"]["vision_cfg"]["image_size"] = sz["image"]
    torch.manual_seed(0)
    model = clipm.build_for_training(mcfg)[0]
    B = sz["batch"] or fc["batch_size"]
    dim = F.embed_dim(model)
    with torch.no_grad():  # the embed stage's work, done once (on the CPU: fp32)
        f = torch.cat([model.encode_image(x, normalize=True).float() for x in
                       torch.randn(2 * B, 3, sz["image"], sz["image"]).split(64)])
    data = Tensors(f[:B], f[B:], _tokens(model, B))
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = F.trainable_text(model, fc.get("trainable", "text"))
    for p in trainable:
        p.requires_grad_(True)
    combine = Combine(fc["combine"], dim)
    loss_fn = PairLoss(fc["loss"], fc.get("margin", 0.2), fc.get("temperature", 1.0))
    with tempfile.TemporaryDirectory() as tmp:
        h = _harness(tmp, bf16, B, threads)
        h.setup({"model": F._towers(model, True), "combine": combine},
                lambda m: F.make_optimizer_for(fc, m["model"].clip, m["combine"].parameters(),
                                               trainable),
                F.make_schedule_for(fc, WARMUP_STEPS + steps, WARMUP_STEPS + steps))
        clock = _fit(h, F.make_step(h, loss_fn, model.logit_scale), data, steps, group=True)
    r = Result("pcclip", f"open_clip {mcfg['arch']} text finetune ({fc['trainable']}, "
               f"{fc['combine']}, {fc['loss']}), cached image embeddings", B, clock.median,
               params_m(model), clock.flops, step_times=clock.times,
               path="studies.pcclip.finetune.make_step on Harness.fit")
    r.notes.append(f"trainable {sum(p.numel() for p in trainable) / 1e6:.2f}M")
    r.reference = "none in the ecosystem"
    return r


# ---- pairrank ----------------------------------------------------------------------------
def case_pairrank(study: dict, sz: dict, steps: int, bf16: bool, threads, smoke: bool):
    """`studies.pairrank.dpo.make_step` (Diffusion-DPO, `losses.dpo_step_losses`: shared noise
    and timestep, the adapters-off reference) on `Harness.fit`: SD-1.5's UNet built from its
    config, the study's LoRA (`add_lora`, `lora_module`), its per-step draws (`step_draws`) and
    the paper's dpo block (β, LoRA rank, lr, weight decay, clipping, gradient checkpointing).
    Text states: random (the frozen text encoder's output is cached per prompt by `T2I`)."""
    import torch
    from diffusers import UNet2DConditionModel

    from ..studies.pairrank import dpo as D
    from ..studies.pairrank.diffusion import T2I
    from ..training.harness import Tensors, as_is

    tc = study["dpo"]
    rank = sz["lora_rank"] or tc["lora_rank"]
    alpha = None if smoke else tc.get("lora_alpha")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd15_unet_config(sz["latent"], smoke))
    B, L = sz["batch"], sz["latent"]
    states = torch.randn(B, 77, unet.config.cross_attention_dim)
    keys = {k: tc[k] for k in ("max_grad_norm", "grad_checkpointing") if k in tc}
    with tempfile.TemporaryDirectory() as tmp:
        h = _harness(tmp, bf16, B, threads, **keys)
        t2i = T2I(unet, SD15_SCHEDULER, lambda prompts: states[[int(p) for p in prompts]],
                  None, L, str(h.device))
        captions = [str(i) for i in range(B)]
        data = Tensors(torch.randn(B, 4, L, L), torch.randn(B, 4, L, L), torch.arange(B))
        params = D.add_lora(unet, rank, alpha)
        draws = D.step_draws(h, B, (4, L, L), SD15_SCHEDULER["num_train_timesteps"], 0, B)
        h.setup(D.lora_module(unet),
                lambda m: torch.optim.AdamW(params, lr=tc["lr"],
                                            weight_decay=tc.get("weight_decay", 0.0)),
                extra_state={"generator": draws.part})
        clock = _fit(h, D.make_step(h, t2i, captions, draws, tc["beta"]), data, steps,
                     collate=as_is, order=draws.order, after_step=draws.step_finished)
    r = Result("pairrank", f"SD-1.5 UNet {'(tiny) ' if smoke else ''}@{L}x{L} latents, LoRA r{rank}"
               f", Diffusion-DPO β={tc['beta']:g}"
               f"{', grad ckpt' if keys.get('grad_checkpointing') else ''}", B, clock.median,
               params_m(unet), clock.flops, step_times=clock.times,
               path="studies.pairrank.dpo.make_step on Harness.fit")
    r.notes.append(f"trainable {sum(p.numel() for p in params) / 1e6:.2f}M")
    r.reference = "diffusers train_diffusion_dpo.py: not in the wheel"
    return r


# ---- mmalign -----------------------------------------------------------------------------
COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]


def _llava(sz: dict, smoke: bool):
    """(model, processor): `studies.mmalign.model.build_tiny` at LLaVA-7B's shapes (or tiny), the
    world's word-level processor; the embeddings resized to Vicuna's vocabulary (paper)."""
    from ..studies.mmalign.model import build_tiny

    shapes = LLAVA_TINY if smoke else LLAVA_7B
    mcfg = {"arch": "llava",
            "vision": {**shapes["vision"], "image_size": sz["image"]},
            "text": {**shapes["text"], "layers": sz["llm_layers"]}}
    model, proc = build_tiny(mcfg, COLOURS, SHAPES)
    if shapes["vocab"]:
        model.resize_token_embeddings(shapes["vocab"])
    return model, proc


def _mmalign_rows(proc, n: int, image: int, text_len: int, folder: Path):
    """``n`` preference rows as `dpo.build_dataset` makes them (image paths, the study's prompt,
    chosen / rejected / BDHS-negative answers of ``text_len // 2`` world words each)."""
    import numpy as np
    from PIL import Image

    from ..studies.mmalign.model import prompt
    from ..world.scenes import vocabulary

    rng = np.random.default_rng(0)
    words = vocabulary(tuple(COLOURS), tuple(SHAPES))
    eos = proc.tokenizer.eos_token
    rows = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (image, image, 3), dtype=np.uint8)).save(path)
        q, c, rj, bd = (" ".join(rng.choice(words, max(1, text_len // 2))) for _ in range(4))
        rows.append({"id": str(i), "images": [str(path)], "image_path": str(path),
                     "question": q, "gt": c, "prompt": prompt(proc, q), "chosen": f" {c} {eos}",
                     "rejected": f" {rj} {eos}", "rejected_bdhs": f" {bd} {eos}"})
    return rows


def case_mmalign(study: dict, sz: dict, steps: int, bf16: bool, threads, smoke: bool):
    """The study's DPO trainer, `studies.mmalign.trainer.BDHSMixedDPOTrainer` (trl's
    `DPOTrainer` with the BDHS γ-average), ``train()`` for a few steps on a LLaVA-7B-shaped model
    (depth ``llm_layers``): the paper's β, γ and LoRA adapter, the training keys routed by
    `dpo.trl_settings`. Offline pairs only (p = 1): Mixed-DPO's online pairs add generation and
    judge calls, not a training-step cost."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback

    from ..studies.mmalign.dpo import trl_settings
    from ..studies.mmalign.trainer import BDHSMixedDPOConfig, BDHSMixedDPOTrainer
    from .timing import clock_callback

    tc, mm = study["train"], study["model"]
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model, proc = _llava(sz, smoke)
    if cuda and bf16:
        model.to(torch.bfloat16)  # as `dpo.train_dpo` loads it: bf16 weights on a GPU
    peft_config, ref = None, None
    if mm.get("lora"):
        from peft import LoraConfig

        lc = mm["lora"]
        peft_config = LoraConfig(r=lc["r"], lora_alpha=lc["alpha"],
                                 lora_dropout=lc.get("dropout", 0.05),
                                 target_modules=lc["target_modules"], task_type="CAUSAL_LM")
    else:
        import copy

        ref = copy.deepcopy(model).eval()
    B = sz["batch"]
    block = {"batch_size": B, "bf16": bf16, "num_workers": 0,
             "grad_checkpointing": bool(tc.get("grad_checkpointing", False))}
    with tempfile.TemporaryDirectory() as tmp:
        rows = _mmalign_rows(proc, 2 * B, sz["image"], sz["text_len"], Path(tmp))
        args = BDHSMixedDPOConfig(
            output_dir=str(Path(tmp) / "ckpt"), max_steps=WARMUP_STEPS + steps,
            learning_rate=tc["lr"], beta=study["dpo"]["beta"], lr_scheduler_type="cosine",
            weight_decay=0.0, logging_steps=10 ** 6, save_strategy="no", seed=0, data_seed=0,
            max_length=None, report_to=[], disable_tqdm=True, precompute_ref_log_probs=False,
            gamma=float(study["bdhs"]["gamma"]), p=1.0, mix_seed=0,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            **trl_settings(block, "bench.mmalign", cuda))
        clock = StepClock(torch.device("cuda" if cuda else "cpu"))
        trainer = BDHSMixedDPOTrainer(model=model, ref_model=ref, args=args,
                                      train_dataset=Dataset.from_list(rows), processing_class=proc,
                                      peft_config=peft_config, callbacks=[clock_callback(clock)])
        trainer.remove_callback(PrinterCallback)  # its end-of-train dict would split the table
        try:
            trainer.train()
        finally:
            clock.close()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    r = Result("mmalign", f"LLaVA-7B-shaped{' (tiny)' if smoke else ''}, {sz['llm_layers']}/32 "
               f"LLM layers, BDHS-DPO γ={study['bdhs']['gamma']:g} β={study['dpo']['beta']:g}"
               f"{', LoRA r' + str(mm['lora']['r']) if peft_config else ''}", B, clock.median,
               params_m(model), clock.flops, step_times=clock.times,
               path="studies.mmalign.trainer.BDHSMixedDPOTrainer.train (trl DPOTrainer)")
    r.notes.append(f"trainable {trainable / 1e6:.2f}M")
    r.reference = "trl DPOTrainer (the product subclasses it)"
    return r


CASES = {"rankclip": case_rankclip, "pcclip": case_pcclip, "pairrank": case_pairrank,
         "mmalign": case_mmalign}
