"""`python -m mmablate bench`: time one training step of each study's paper-scale architecture.

Random weights and synthetic inputs at the real resolution; nothing is downloaded (models are
built from their configs). Per case it prints samples/s, the model FLOPs of one step (counted
by `torch.utils.flop_counter.FlopCounterMode`: matmuls, convolutions, attention) and, where the
device's peak is known, model FLOPs utilisation (MFU).

What each case runs (the studies' own training loops are used where they exist as importable
functions; otherwise the step is written here from the paper's objective):

* ``rankclip`` — open_clip ViT-B-32 at 224 px, `mmablate.studies.rankclip.losses.RankCLIPLoss`
  (CLIP loss + λ·ranking losses), AdamW, bf16 autocast on CUDA.
* ``pcclip`` — open_clip ViT-L-14, the authors' step: cached image embeddings, the text
  transformer finetuned with Adam on difference captions (`studies.pcclip.losses.PairLoss`:
  clip_loss of the text features and the raw image-embedding difference at temperature 1),
  batch 512 as theirs.
* ``pairrank`` — SD-1.5's UNet (`UNet2DConditionModel` with SD-1.5's config, built from config) at
  64×64 latents, peft LoRA (rank 8) on the attention projections, Diffusion-DPO loss (Wallace et
  al. 2023, Eq. 14 as in diffusers' research example: reference = the UNet with adapters
  disabled).
* ``mmalign`` — a LLaVA-7B-shaped `LlavaForConditionalGeneration` (CLIP ViT-L/14-336 vision
  tower, Llama-2-7B-shaped language model, depth reduced with ``--llm-layers`` to fit one GPU),
  one DPO step (sigmoid loss, β = 0.1) on chosen/rejected answers against a frozen reference copy;
  one 336 px image tile (577 tokens, as LLaVA-1.5; LLaVA-1.6 adds anyres tiles) + 256 text tokens.

Reference loops: open_clip's own step lives in `open_clip_train` and diffusers' Diffusion-DPO step
in a research script that the diffusers wheel does not ship; when `open_clip_train` is
importable (open_clip_torch 3.3 ships it) its `train_one_epoch` is timed on the same inputs for
the rankclip case against our loop with the same (plain CLIP) loss, and the ratio
printed; otherwise the table says which reference was unavailable.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field

# Dense bf16 peak TFLOP/s by device-name substring (vendor data sheets), for MFU.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}

SIZES = {  # per case: the paper-scale shapes and a smoke size that runs on a CPU in seconds
    "rankclip": {"paper": {"arch": "ViT-B-32", "image": 224, "batch": 256},
                 "smoke": {"arch": None, "image": 32, "batch": 8}},
    "pcclip": {"paper": {"arch": "ViT-L-14", "image": 224, "batch": 512},
               "smoke": {"arch": None, "image": 32, "batch": 8}},
    "pairrank": {"paper": {"latent": 64, "batch": 8, "lora_rank": 8},
                 "smoke": {"latent": 8, "batch": 2, "lora_rank": 4}},
    "mmalign": {"paper": {"llm_layers": 8, "batch": 2, "text_len": 256, "image": 336},
                "smoke": {"llm_layers": 2, "batch": 2, "text_len": 16, "image": 32}},
}


@dataclass
class Result:
    case: str
    model: str
    batch: int
    step_s: float
    params_m: float
    flops: float | None = None
    reference: str = ""
    ref_step_s: float | None = None
    same_loss_step_s: float | None = None  # ours with the reference's loss (for the ratio)
    notes: list = field(default_factory=list)

    @property
    def samples_s(self):
        return self.batch / self.step_s


def add_arguments(p):
    p.add_argument("--size", choices=["smoke", "paper"], default="paper",
                   help="paper: the real shapes (a GPU); smoke: tiny dims that run on a CPU")
    p.add_argument("--cases", default="rankclip,pcclip,pairrank,mmalign")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after 1 warm-up step)")
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--llm-layers", type=int, default=None,
                   help="mmalign: language-model depth (LLaVA-7B has 32)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-bf16", action="store_true", help="fp32 even on CUDA")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")


# ---- timing -------------------------------------------------------------------------------
def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, device, steps: int) -> float:
    """Median seconds per call of `step()` after one warm-up call."""
    step()
    _sync(device)
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def count_flops(step) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as fc:
            step()
        return float(fc.get_total_flops())
    except Exception:  # an op the counter cannot trace: report no MFU rather than a wrong one
        return None


def peak_tflops(device) -> float | None:
    import os

    import torch

    if os.environ.get("MMABLATE_PEAK_TFLOPS"):
        return float(os.environ["MMABLATE_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _autocast(device, bf16):
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


# ---- cases --------------------------------------------------------------------------------
def _clip(arch, image):
    """open_clip model: a named architecture, or (smoke) a tiny ViT registered from a config."""
    import tempfile
    from pathlib import Path

    import open_clip

    if arch is None:
        arch = "bench-clip-tiny"
        cfg = {"embed_dim": 32,
               "vision_cfg": {"image_size": image, "layers": 2, "width": 32, "patch_size": 8,
                              "head_width": 16},
               "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2,
                            "layers": 2}}
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / f"{arch}.json").write_text(json.dumps(cfg))
            open_clip.add_model_config(Path(d) / f"{arch}.json")
    model = open_clip.create_model(arch, pretrained=None, output_dict=True)
    return arch, model


def case_rankclip(sz, device, bf16, steps):
    import torch

    from .studies.rankclip.losses import RankCLIPLoss

    arch, model = _clip(sz["arch"], sz["image"])
    model.to(device).train()
    B = sz["batch"]
    ctx = model.context_length
    vocab = model.vocab_size
    images = torch.randn(B, 3, sz["image"], sz["image"], device=device)
    texts = torch.randint(1, vocab - 1, (B, ctx), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def make_step(rank_weight):
        loss_fn = RankCLIPLoss(rank_weight, "inv_log_k_plus_1")

        def step():  # the loop body of mmablate.studies.rankclip.train
            with _autocast(device, bf16):
                o = model(images, texts)
                loss = loss_fn(o["image_features"].float(), o["text_features"].float(),
                               o["logit_scale"].float())["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    step = make_step(0.0625)  # λ = 1/16, the paper's
    r = Result("rankclip", f"open_clip {arch} @{sz['image']}px + RankCLIP loss", B,
               time_step(step, device, steps), _params(model), count_flops(step))
    # open_clip_train's step computes the plain CLIP loss: compare it with ours at λ = 0
    r.same_loss_step_s = time_step(make_step(0.0), device, steps)
    r.notes.append(f"λ=0: {r.same_loss_step_s:.4f} s/step")
    _reference_open_clip(r, model, images, texts, device, bf16, steps)
    return r


def _reference_open_clip(r, model, images, texts, device, bf16, steps):
    """open_clip_train's train_one_epoch on the same batch, when that package is installed."""
    try:
        from open_clip_train.train import train_one_epoch
    except ImportError:
        r.reference = "open_clip_train: not installed"
        return
    import argparse

    import open_clip
    import torch

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
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = open_clip.ClipLoss()

    def step():
        train_one_epoch(model, data, loss, 0, opt, None, lambda s: None, None, args)

    try:
        r.ref_step_s = time_step(step, device, steps)
        r.reference = "open_clip_train.train_one_epoch (CLIP loss)"
    except Exception as e:  # its signature changes between releases: say so, do not guess
        r.reference = f"open_clip_train failed: {type(e).__name__}: {e}"[:80]


def case_pcclip(sz, device, bf16, steps):
    """The authors' step (dsam99/pc_clip finetune.py): cached image embeddings of the pair,
    clip_loss(norm(text), f(A) − f(B), temperature 1), Adam over model.transformer only."""
    import torch

    from .studies.pcclip.losses import PairLoss

    arch, model = _clip(sz["arch"], sz["image"])
    model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.transformer.parameters():
        p.requires_grad_(True)
    B = sz["batch"]
    with torch.no_grad(), _autocast(device, bf16):  # the embed stage's work, done once
        img = torch.randn(2 * B, 3, sz["image"], sz["image"], device=device)
        f = model.encode_image(img, normalize=True).float()
    fa, fb = f[:B], f[B:]
    texts = torch.randint(1, model.vocab_size - 1, (B, model.context_length), device=device)
    opt = torch.optim.Adam(model.transformer.parameters(), lr=1e-8)
    loss_fn = PairLoss("contrastive")

    def step():
        with _autocast(device, bf16):
            t = model.encode_text(texts).float()
            loss = loss_fn(fa - fb, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    r = Result("pcclip", f"open_clip {arch} text-transformer finetune (cached image embeddings)", B,
               time_step(step, device, steps), _params(model), count_flops(step))
    r.reference = "none in the ecosystem"
    return r


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


def diffusion_dpo_loss(unet, noisy, timesteps, cond, target, beta: float):
    """Diffusion-DPO (Wallace et al. 2023): batch = [winners; losers] stacked on dim 0.

    L = −log σ(−β/2 · [(‖ε_w − ε_θ(x_w)‖² − ‖ε_l − ε_θ(x_l)‖²) − (same for the reference)]),
    the reference being the same UNet with its LoRA adapters disabled (peft).
    """
    import torch
    import torch.nn.functional as F

    pred = unet(noisy, timesteps, cond).sample
    mse = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    mw, ml = mse.chunk(2)
    with torch.no_grad():
        unet.disable_adapters()
        try:
            ref = unet(noisy, timesteps, cond).sample
        finally:
            unet.enable_adapters()
        rmse = (ref.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        rw, rl = rmse.chunk(2)
    logits = -0.5 * beta * ((mw - ml) - (rw - rl))
    return -F.logsigmoid(logits).mean()


def case_pairrank(sz, device, bf16, steps, smoke):
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel(**sd15_unet_config(sz["latent"], smoke))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=sz["lora_rank"], lora_alpha=sz["lora_rank"],
                                init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.to(device).train()
    sched = DDPMScheduler(num_train_timesteps=1000)
    B, L = sz["batch"], sz["latent"]  # B pairs -> 2B UNet samples
    latents = torch.randn(2 * B, 4, L, L, device=device)
    noise = torch.randn(B, 4, L, L, device=device).repeat(2, 1, 1, 1)  # same noise and t per pair
    t = torch.randint(0, 1000, (B,), device=device).repeat(2)
    noisy = sched.add_noise(latents, noise, t)
    cond = torch.randn(2 * B, 77, unet.config.cross_attention_dim, device=device)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        with _autocast(device, bf16):
            loss = diffusion_dpo_loss(unet, noisy, t, cond, noise, beta=5000.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    r = Result("pairrank", f"SD-1.5 UNet {'(tiny) ' if smoke else ''}@{L}x{L} latents, "
               f"LoRA r{sz['lora_rank']}, Diffusion-DPO", B, time_step(step, device, steps),
               _params(unet), count_flops(step))
    r.notes.append(f"trainable {sum(p.numel() for p in params) / 1e6:.2f}M")
    r.reference = "diffusers train_diffusion_dpo.py: not in the wheel"
    return r


def llava_config(layers: int, image: int, smoke: bool):
    """LLaVA-1.6-7B's shapes (CLIP ViT-L/14-336 + Llama-2-7B), depth `layers`; or a tiny one."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if smoke:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=image, patch_size=8,
                                  projection_dim=32)
        text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=4, vocab_size=1000,
                           max_position_embeddings=256)
    else:
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=image, patch_size=14,
                                  projection_dim=768)
        text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                           num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                           max_position_embeddings=4096)
    n_img = (image // vision.patch_size) ** 2 + 1  # "full": patch tokens and CLS
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=text.vocab_size - 1,
                      vision_feature_select_strategy="full", vision_feature_layer=-2)
    cfg._attn_implementation = "sdpa"
    return cfg, n_img


def dpo_step_loss(policy, ref, batch, beta: float = 0.1):
    """Sigmoid DPO (Rafailov et al. 2023) on [chosen; rejected] stacked on dim 0."""
    import torch
    import torch.nn.functional as F

    def logps(model):
        logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        lp = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (lp * mask).sum(-1)

    pc, pr = logps(policy).chunk(2)
    with torch.no_grad():
        rc, rr = logps(ref).chunk(2)
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


def case_mmalign(sz, device, bf16, steps, smoke):
    import torch
    from transformers import LlavaForConditionalGeneration

    cfg, n_img = llava_config(sz["llm_layers"], sz["image"], smoke)
    policy = LlavaForConditionalGeneration(cfg).to(device)
    if device.type == "cuda" and bf16:
        policy.to(torch.bfloat16)  # bf16 weights (7B-shaped models do not fit fp32 + Adam)
    policy.train()
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    B, T = sz["batch"], sz["text_len"]
    V = cfg.text_config.vocab_size
    ids = torch.randint(0, V - 2, (2 * B, n_img + T), device=device)
    ids[:, :n_img] = cfg.image_token_index
    ids[B:, -T // 2:] = torch.randint(0, V - 2, (B, T - T // 2), device=device)  # rejected answers
    labels = ids.clone()
    labels[:, :n_img + T // 2] = -100  # loss on the answers only
    px = torch.randn(2 * B, 3, sz["image"], sz["image"], device=device, dtype=policy.dtype)
    batch = {"input_ids": ids, "pixel_values": px, "labels": labels,
             "attention_mask": torch.ones_like(ids)}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)

    def step():
        with _autocast(device, bf16):
            loss = dpo_step_loss(policy, ref, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    r = Result("mmalign", f"LLaVA-7B-shaped{' (tiny)' if smoke else ''}, "
               f"{sz['llm_layers']}/32 LLM layers, DPO", B, time_step(step, device, steps),
               _params(policy), count_flops(step))
    r.reference = "none timed (trl DPOTrainer wraps a full Trainer)"
    return r


def _params(m) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


# ---- driver -------------------------------------------------------------------------------
def run(cases, size="paper", steps=5, batch=None, llm_layers=None, device="auto", bf16=True):
    import torch

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    smoke = size == "smoke"
    results = []
    for c in cases:
        if c not in SIZES:
            raise ValueError(f"unknown bench case {c!r}; known: {sorted(SIZES)}")
        sz = dict(SIZES[c][size])
        if batch:
            sz["batch"] = batch
        if llm_layers and c == "mmalign":
            sz["llm_layers"] = llm_layers
        torch.manual_seed(0)
        fn = {"rankclip": lambda: case_rankclip(sz, dev, bf16, steps),
              "pcclip": lambda: case_pcclip(sz, dev, bf16, steps),
              "pairrank": lambda: case_pairrank(sz, dev, bf16, steps, smoke),
              "mmalign": lambda: case_mmalign(sz, dev, bf16, steps, smoke)}[c]
        results.append(fn())
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return dev, results


def table(dev, results) -> str:
    peak = peak_tflops(dev)
    head = ["case", "model", "batch", "params M", "step s", "samples/s", "TFLOP/step",
            "TFLOP/s", "MFU", "reference", "ref step s", "speed vs ref (same loss)"]
    rows = []
    for r in results:
        tf = r.flops / 1e12 if r.flops else None
        tfs = tf / r.step_s if tf else None
        mfu = f"{100 * tfs / peak:.1f}%" if (tfs and peak) else "n/a"
        ours = r.same_loss_step_s or r.step_s
        ratio = f"{r.ref_step_s / ours:.2f}x" if r.ref_step_s else "n/a"
        rows.append([r.case, r.model + (f" [{'; '.join(r.notes)}]" if r.notes else ""), r.batch,
                     f"{r.params_m:.1f}", f"{r.step_s:.4f}", f"{r.samples_s:.2f}",
                     f"{tf:.4g}" if tf else "n/a", f"{tfs:.4g}" if tfs else "n/a", mfu,
                     r.reference or "n/a", f"{r.ref_step_s:.4f}" if r.ref_step_s else "n/a", ratio])
    from tabulate import tabulate

    return tabulate(rows, head, tablefmt="github")


def main(a):
    import platform

    import torch

    from .training.schedule import set_threads

    set_threads(a.threads)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    dev, results = run(cases, a.size, a.steps, a.batch, a.llm_layers, a.device, not a.no_bf16)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {dev} ({name}); size {a.size}; bf16 autocast "
          f"{'on' if dev.type == 'cuda' and not a.no_bf16 else 'off'}; median of {a.steps} steps")
    if peak_tflops(dev) is None:
        print("MFU: n/a (no known peak for this device; set MMABLATE_PEAK_TFLOPS)")
    print(table(dev, results))
    if a.json:
        from pathlib import Path

        Path(a.json).write_text(json.dumps(
            {"device": str(dev), "device_name": name, "size": a.size,
             "results": [{**r.__dict__, "samples_s": r.samples_s} for r in results]}, indent=1))
    return results


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser()
    add_arguments(ap)
    main(ap.parse_args())
