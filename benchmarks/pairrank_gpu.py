"""Pair ranking's GPU figures (run on a machine with one CUDA GPU; --smoke: tiny shapes, CPU):

    python benchmarks/pairrank_gpu.py dpo      # LoRA Diffusion-DPO steps, SD-1.5 UNet, 64×64 latents
    python benchmarks/pairrank_gpu.py score    # reward-model scoring throughput at the real shapes

``dpo``: the project's training path — `training.harness.Harness` with gradient accumulation
(``--micro`` pairs per micro-batch, ``--accum`` micro-batches per step), bf16 autocast, LoRA
(peft, rank ``--rank``) on an SD-1.5-shaped `UNet2DConditionModel` with random weights,
`losses.dpo_step_losses` (policy forward + backward, adapters-off reference forward) on random
latents and text states; with and without gradient checkpointing. Prints pairs/s and peak GPU
memory (``torch.cuda.max_memory_allocated``) per setting.

``score``: images/s of each paper-scale reward model with random weights at its real shape under
fp16 autocast, batch ``--batch``: HPSv2 (open_clip ViT-H-14), the LAION aesthetic head on ViT-L-14,
PickScore (transformers CLIP ViT-H/14), ImageReward (BLIP ViT-L/16 + BERT-base, built from a
random checkpoint in THUDM's key layout).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gb():
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def bench_dpo(a):
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from mmablate.bench import sd15_unet_config
    from mmablate.studies.pairrank.diffusion import T2I
    from mmablate.studies.pairrank.dpo import add_lora, lora_module
    from mmablate.studies.pairrank.losses import dpo_step_losses
    from mmablate.training.harness import Harness

    L = 8 if a.smoke else 64
    out = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**sd15_unet_config(L, a.smoke))
        params = add_lora(unet, a.rank)
        d = unet.config.cross_attention_dim
        t2i = T2I(unet, DDPMScheduler().config, None, None, L * 8, "cpu")
        with tempfile.TemporaryDirectory() as tmp:
            h = Harness({"batch_size": a.micro, "effective_batch": a.micro * a.accum,
                         "bf16": True, "grad_checkpointing": ckpt}, seed=0, out_dir=tmp,
                        progress=False)
            h.setup(lora_module(unet), lambda m: torch.optim.AdamW(params, lr=1e-5))
            t2i.device = h.device
            n = a.micro * a.accum * (a.steps + 1)
            xw = torch.randn(n, 4, L, L)
            xl = torch.randn(n, 4, L, L)
            cond = torch.randn(n, 77, d)

            class Data:
                def __len__(self):
                    return n

                def __getitems__(self, idx):
                    return xw[idx], xl[idx], cond[idx]

            def step(batch):
                w, l, c = batch
                loss, acc = dpo_step_losses(t2i, w, l, c, 5000.0, policy=h.model)
                return {"loss": loss}

            from mmablate.training.harness import as_is

            h.fit(step, Data(), steps=1, ckpt_every=None, collate=as_is, log_file=None,
                  summary_file=None)  # warm-up step
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            _sync()
            t0 = time.perf_counter()
            h.fit(step, Data(), steps=a.steps, ckpt_every=None, collate=as_is, log_file=None,
                  summary_file=None)
            _sync()
            dt = time.perf_counter() - t0
        out.append({"case": "dpo", "latent": L, "micro": a.micro, "accum": a.accum,
                    "lora_rank": a.rank, "grad_checkpointing": ckpt,
                    "pairs_per_s": round(a.steps * a.micro * a.accum / dt, 2),
                    "peak_gpu_gb": _peak_gb(), "device": str(h.device)})
        print(json.dumps(out[-1]), flush=True)
    return out


def bench_score(a):
    import numpy as np
    import open_clip
    import torch

    from mmablate.studies.pairrank.image_reward import build
    from mmablate.studies.pairrank.rewards import Scorer, clip_pixels

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    size = 224
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (a.batch, size, size, 3), dtype=np.uint8)
    prompts = ["a photo of a red car parked by the sea at sunset"] * a.batch
    models = {}
    arch = "ViT-B-32" if a.smoke else "ViT-H-14"
    m, _, _ = open_clip.create_model_and_transforms(arch, pretrained=None)
    m.eval().to(dev)
    tok = open_clip.get_tokenizer(arch)

    def hps(im, p):
        i = m.encode_image(clip_pixels(im, size).to(dev), normalize=True)
        t = m.encode_text(tok(p).to(dev), normalize=True)
        return (i * t).sum(1).float().cpu().numpy()

    models["hpsv2 (ViT-H-14)"] = hps
    if not a.smoke:
        from transformers import CLIPConfig, CLIPModel

        pk = CLIPModel(CLIPConfig(
            text_config={"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                         "num_hidden_layers": 24, "projection_dim": 1024},
            vision_config={"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16,
                           "num_hidden_layers": 32, "patch_size": 14, "image_size": 224,
                           "projection_dim": 1024}, projection_dim=1024)).eval().to(dev)

        def pick(im, p):
            px = clip_pixels(im, 224).to(dev)
            ids = torch.randint(0, 49408, (len(p), 77), device=dev)
            i = pk.get_image_features(pixel_values=px)
            t = pk.get_text_features(input_ids=ids)
            i = i if hasattr(i, "norm") else i.pooler_output
            t = t if hasattr(t, "norm") else t.pooler_output
            return (i * t).sum(1).float().cpu().numpy()

        models["pickscore (CLIP ViT-H/14)"] = pick
        vl, _, _ = open_clip.create_model_and_transforms("ViT-L-14", pretrained=None)
        vl.eval().to(dev)
        mlp = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.Linear(1024, 128),
                                  torch.nn.Linear(128, 64), torch.nn.Linear(64, 16),
                                  torch.nn.Linear(16, 1)).to(dev)

        def aes(im, p):
            return mlp(vl.encode_image(clip_pixels(im, 224).to(dev), normalize=True).float()).squeeze(1).cpu().numpy()

        models["aesthetic (ViT-L-14 + MLP)"] = aes
    from tests.test_pairrank_paper_path import standin_state  # THUDM's key layout, random values

    if a.smoke:
        ir = build(standin_state(30524))
    else:
        ir = build(_real_shape_image_reward())
    ir.eval().to(dev)
    ids = torch.randint(0, 30524, (a.batch, 35), device=dev)
    mask = torch.ones_like(ids)

    def imr(im, p):
        return ir(clip_pixels(im, ir.image_size).to(dev), ids[:len(im)], mask[:len(im)]).float().cpu().numpy()

    models["image_reward (BLIP ViT-L/16 + BERT)"] = imr
    out = []
    for name, fn in models.items():
        sc = Scorer(name, fn, name, None, dev, "fp16")
        ims = images if ir.image_size == size or "image_reward" not in name else \
            rng.integers(0, 256, (a.batch, ir.image_size, ir.image_size, 3), dtype=np.uint8)
        sc(ims, prompts, a.batch)  # warm-up
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _sync()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            sc(ims, prompts, a.batch)
        _sync()
        dt = time.perf_counter() - t0
        out.append({"case": "score", "model": name, "batch": a.batch, "precision": "fp16",
                    "images_per_s": round(a.steps * a.batch / dt, 1), "peak_gpu_gb": _peak_gb(),
                    "device": dev})
        print(json.dumps(out[-1]), flush=True)
    return out


def _real_shape_image_reward():
    """A random state dict of ImageReward.pt's real shapes (ViT-L/16 at 224, BERT-base with
    cross-attention to 1,024-wide image tokens, vocabulary 30,524)."""
    import torch

    sd = {}
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g) * 0.02

    v, VW = "blip.visual_encoder.", 1024
    sd[v + "cls_token"], sd[v + "pos_embed"] = r(1, 1, VW), r(1, 197, VW)
    sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"] = r(VW, 3, 16, 16), r(VW)
    for i in range(24):
        b = f"{v}blocks.{i}."
        for n_ in ("norm1", "norm2"):
            sd[b + n_ + ".weight"], sd[b + n_ + ".bias"] = torch.ones(VW), r(VW)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = r(3 * VW, VW), r(3 * VW)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(VW, VW), r(VW)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(4 * VW, VW), r(4 * VW)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(VW, 4 * VW), r(VW)
    sd[v + "norm.weight"], sd[v + "norm.bias"] = torch.ones(VW), r(VW)
    t, TW = "blip.text_encoder.", 768
    sd[t + "embeddings.word_embeddings.weight"] = r(30524, TW)
    sd[t + "embeddings.position_embeddings.weight"] = r(512, TW)
    sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"] = torch.ones(TW), r(TW)
    for i in range(12):
        b = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", TW), ("crossattention", VW)):
            sd[b + f"{att}.self.query.weight"], sd[b + f"{att}.self.query.bias"] = r(TW, TW), r(TW)
            sd[b + f"{att}.self.key.weight"], sd[b + f"{att}.self.key.bias"] = r(TW, kv), r(TW)
            sd[b + f"{att}.self.value.weight"], sd[b + f"{att}.self.value.bias"] = r(TW, kv), r(TW)
            sd[b + f"{att}.output.dense.weight"], sd[b + f"{att}.output.dense.bias"] = r(TW, TW), r(TW)
            sd[b + f"{att}.output.LayerNorm.weight"] = torch.ones(TW)
            sd[b + f"{att}.output.LayerNorm.bias"] = r(TW)
        sd[b + "intermediate.dense.weight"], sd[b + "intermediate.dense.bias"] = r(3072, TW), r(3072)
        sd[b + "output.dense.weight"], sd[b + "output.dense.bias"] = r(TW, 3072), r(TW)
        sd[b + "output.LayerNorm.weight"], sd[b + "output.LayerNorm.bias"] = torch.ones(TW), r(TW)
    for k, (i_, o) in zip((0, 2, 4, 6, 7), ((TW, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        sd[f"mlp.layers.{k}.weight"], sd[f"mlp.layers.{k}.bias"] = r(o, i_), r(o)
    return sd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case", choices=["dpo", "score"])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script on a CPU)")
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    (bench_dpo if a.case == "dpo" else bench_score)(a)


if __name__ == "__main__":
    main()
