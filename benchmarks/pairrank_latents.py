"""Diffusion-DPO's data at paper scale: VAE-encode every micro-batch (the authors' train.py) or
encode the kept pairs once into memory-mapped latent shards (what `dpo.cache_latents` does)?

    python benchmarks/pairrank_latents.py [--size 512] [--threads 2]

Times, on this machine, one SD-1.5-shaped VAE encoder forward (diffusers' AutoencoderKL with
SD-1.5's block widths, random weights) per image at --size px, and one random read of a pair's
cached float16 latents (4×size/8×size/8, two images) from a memory-mapped .npy; then prints the
cost of each option for the paper recipe (2,000 steps × 2,048 pairs; ~45k kept pairs: 5.33%
of Pick-a-Pic v2's ~850k non-tied pairs) in units of that encoder forward.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kept", type=int, default=45_000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--effective-batch", type=int, default=2048)
    a = ap.parse_args()
    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(a.threads)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                        sample_size=a.size).eval()
    x = torch.randn(1, 3, a.size, a.size)
    with torch.no_grad():
        vae.encode(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(2):
            vae.encode(x).latent_dist.sample()
        enc = (time.perf_counter() - t0) / 2
    s = a.size // 8
    with tempfile.TemporaryDirectory() as d:
        n = 4096
        np.save(f"{d}/w.npy", np.random.default_rng(0).standard_normal((n, 4, s, s)).astype(np.float16))
        mm = np.load(f"{d}/w.npy", mmap_mode="r")
        idx = np.random.default_rng(1).integers(0, n, 2048)
        t0 = time.perf_counter()
        for i in idx:
            _ = np.asarray(mm[i], np.float32)
        read = 2 * (time.perf_counter() - t0) / len(idx)  # winner + loser
    per_batch = a.steps * a.effective_batch * 2  # encodes: every pair of every step, two images
    once = a.kept * 2
    print(json.dumps({
        "size_px": a.size, "threads": a.threads, "vae_encode_s_per_image": round(enc, 3),
        "cached_read_s_per_pair": round(read, 7),
        "encodes_per_batch_mode": per_batch, "encodes_cache_mode": once,
        "ratio_encodes": round(per_batch / once, 1),
        "cache_disk_gb_fp16": round(a.kept * 2 * 4 * s * s * 2 / 1e9, 2),
        "read_vs_encode": round(read / (2 * enc), 7)}))


if __name__ == "__main__":
    main()
