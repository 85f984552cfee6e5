"""Evaluation: DDIM samples (classifier-free guidance) for held-out prompts, batched on the job's
device (half precision on CUDA where ``sampling.precision`` says so; the paper's 50 steps and
CFG 7.5 at paper scale), scored by the metric models (on the same device) and the world's colour
oracle; a grid of samples saved as a figure."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def prompts_of(cfg: dict) -> list[str]:
    from ...util import read_json

    ps = read_json(cfg["prompts"])
    if cfg["split"] not in ps:
        from ...errors import DataError

        raise DataError(f"{cfg['prompts']}: no prompt split {cfg['split']!r}")
    return [p for p in ps[cfg["split"]] for _ in range(cfg["per_prompt"])]


def save_grid(images: np.ndarray, prompts, path, title: str, n: int = 32, cols: int = 8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(images))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5))
    for k, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k], interpolation="nearest")
            words = prompts[k].split()
            ax.set_title(" ".join(words[1:4]), fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(cfg: dict, seed: int, out_json, grid_png=None, threads: int = 1) -> dict:
    import torch

    from ...training.schedule import set_threads
    from ...world.preference import colour_oracle
    from .diffusion import load_t2i
    from .dpo import load_lora
    from .rewards import load_scorer

    set_threads(threads)
    t0 = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scorers = {m: load_scorer(r, device) for m, r in cfg["metrics"].items()}  # fail early on bad weights
    t2i = load_t2i(cfg["model"], device)
    if cfg.get("lora"):
        load_lora(t2i.unet, cfg["lora"])
    prompts = prompts_of(cfg)
    s = cfg["sampling"]
    images = t2i.sample(prompts, seed=seed * 1009 + 17, steps=s["steps"], guidance=s["guidance"],
                        batch=s.get("batch", 64), precision=s.get("precision", "fp32"))
    metrics = {m: float(np.mean(sc(images, prompts))) for m, sc in scorers.items()}
    if cfg.get("oracle_colours"):
        metrics["oracle"] = 100.0 * float(colour_oracle(images, prompts, cfg["oracle_colours"]).mean())
    if grid_png:
        save_grid(images, prompts, grid_png, cfg.get("title", ""))
    return {"metrics": metrics, "n_images": len(images), "wall_s": round(time.time() - t0, 2)}
