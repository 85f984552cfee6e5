"""Preference pairs of the synthetic world, written in the Pick-a-Pic v2 schema.

A *prompt* is a one-object world caption ("a large red circle on the left"). A population of
*renderers* of varied fidelity draws images for prompts: each renderer gets the colour wrong, the
shape wrong, blurs, adds noise or adds clutter (an extra object) with its own probabilities, so
the ground truth of every image is known. From that ground truth:

* ``fidelity(render)`` — the world oracle's quality of an image for its prompt: the colour is
  what matters most (it is what a 16 px diffusion model can learn), then the shape, then
  sharpness, noise and clutter;
* ``aesthetic_rating(render)`` — an AVA-style 1–10 rating of the image alone (prompt-free);
* a *noisy oracle preference* between two images: P(image 0 preferred) = σ((f₀ − f₁)/τ), and a
  tie (label 0.5/0.5) with probability ``tie_prob`` or when the fidelities are equal — the real
  Pick-a-Pic data holds ties too.

`write_pairs` writes parquet files with Pick-a-Pic v2's columns (``caption``, ``jpg_0``,
``jpg_1`` as JPEG bytes, ``label_0``, ``label_1``, ``image_0_uid``, ``image_1_uid``,
``best_image_uid``, ``has_label``, ``are_different``, ``ranking_id``, ``model_0``, ``model_1``),
so the loader that reads yuvalkirstain/pickapic_v2 reads these too. `colour_oracle` decides
whether a generated image shows the colour its prompt asks for (pixel analysis, no model).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .scenes import COLOURS, POSITIONS, SIZES, Obj, Scene, WorldSampler, render

PICKAPIC_COLUMNS = ["caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid",
                    "image_1_uid", "best_image_uid", "has_label", "are_different", "ranking_id",
                    "model_0", "model_1"]


@dataclass(frozen=True)
class Renderer:
    name: str
    p_colour: float  # probability of drawing a wrong colour
    p_shape: float  # probability of drawing a wrong shape
    blur: float  # Gaussian blur radius (px)
    noise: float  # pixel noise std
    p_clutter: float  # probability of an extra small object

    @classmethod
    def from_dict(cls, d: dict) -> "Renderer":
        return cls(**d)


def prompt_grid(colours, shapes) -> list[tuple[str, str, str, str]]:
    """Every (size, colour, shape, position) combination a prompt can ask for."""
    return [(sz, c, s, p) for sz in SIZES for c in colours for s in shapes for p in POSITIONS]


def prompt_text(size, colour, shape, position) -> str:
    p = f"a {size} {colour} {shape}"
    return p if position == "center" else f"{p} on the {position}"


def parse_prompt(text: str) -> dict:
    """The attributes a world prompt asks for (the inverse of `prompt_text`)."""
    w = text.split()
    if len(w) < 4 or w[0] != "a" or w[1] not in SIZES or w[2] not in COLOURS:
        raise ValueError(f"not a world prompt: {text!r}")
    return {"size": w[1], "colour": w[2], "shape": w[3],
            "position": w[-1] if len(w) > 4 else "center"}


def _place(rng, size: str, position: str) -> tuple[float, float]:
    r = SIZES[size] / 2
    lo, hi = r + 0.02, 1 - r - 0.02
    off = 0.25 if size == "small" else 0.18
    x, y = {"left": (0.5 - off, None), "right": (0.5 + off, None), "top": (None, 0.5 - off),
            "bottom": (None, 0.5 + off), "center": (0.5, 0.5)}[position]
    x = x if x is not None else rng.uniform(0.4, 0.6)
    y = y if y is not None else rng.uniform(0.4, 0.6)
    return float(np.clip(x + rng.normal(0, 0.03), lo, hi)), float(np.clip(y + rng.normal(0, 0.03), lo, hi))


def draw(prompt: tuple, renderer: Renderer, rng, colours, shapes, image_size: int):
    """Renders `prompt` with `renderer`; returns (PIL image, ground-truth record)."""
    size, colour, shape, position = prompt
    wrong_c = rng.random() < renderer.p_colour
    wrong_s = rng.random() < renderer.p_shape
    c = str(rng.choice([x for x in colours if x != colour])) if wrong_c else colour
    s = str(rng.choice([x for x in shapes if x != shape])) if wrong_s else shape
    x, y = _place(rng, size, position)
    objs = [Obj(s, c, size, x, y)]
    clutter = rng.random() < renderer.p_clutter
    if clutter:
        extra = WorldSampler(colours, shapes).obj(rng, size="small")
        objs.append(Obj(extra.shape, extra.colour, "small", 1 - x, 1 - y))
    scene = Scene(tuple(objs), int(rng.integers(10, 60)))
    img = render(scene, image_size, rng, noise=renderer.noise, blur=renderer.blur)
    truth = {"renderer": renderer.name, "colour_ok": not wrong_c, "shape_ok": not wrong_s,
             "blur": renderer.blur, "noise": renderer.noise, "clutter": clutter}
    return img, truth


def fidelity(t: dict) -> float:
    """World oracle quality of an image for its prompt (higher is better)."""
    return (1.0 * t["colour_ok"] + 0.4 * t["shape_ok"] - 0.3 * t["blur"] - 0.01 * t["noise"]
            - 0.3 * t["clutter"])


def aesthetic_rating(t: dict, rng) -> float:
    """AVA-style 1–10 rating of the image alone: sharp, clean, uncluttered images rate high."""
    r = 7.0 - 2.0 * t["blur"] - 0.08 * t["noise"] - 1.5 * t["clutter"] + rng.normal(0, 0.3)
    return float(np.clip(r, 1.0, 10.0))


def prefer(f0: float, f1: float, rng, temperature: float, tie_prob: float) -> tuple[float, float]:
    """Noisy oracle preference: (label_0, label_1), ties as (0.5, 0.5)."""
    if f0 == f1 or rng.random() < tie_prob:
        return 0.5, 0.5
    p0 = 1.0 / (1.0 + math.exp(-(f0 - f1) / temperature))
    return (1.0, 0.0) if rng.random() < p0 else (0.0, 1.0)


def jpeg_bytes(img, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def split_prompts(cfg: dict, rng) -> dict[str, list[tuple]]:
    """Disjoint prompt sets: train (pairs and pretraining), val (adaptive threshold), eval."""
    grid = prompt_grid(cfg["colours"], cfg["shapes"])
    order = rng.permutation(len(grid))
    n_eval, n_val = cfg["n_eval_prompts"], cfg["n_val_prompts"]
    if n_eval + n_val >= len(grid):
        raise ValueError(f"n_eval_prompts + n_val_prompts = {n_eval + n_val} leave no training "
                         f"prompts of the {len(grid)}")
    pick = [grid[i] for i in order]
    return {"eval": pick[:n_eval], "val": pick[n_eval:n_eval + n_val], "train": pick[n_eval + n_val:]}


def pair_rows(prompts, renderers, n: int, rng, cfg, prefix: str) -> list[dict]:
    colours, shapes, size = cfg["colours"], cfg["shapes"], cfg["image_size"]
    rows = []
    for i in range(n):
        prompt = prompts[rng.integers(len(prompts))]
        r0, r1 = rng.choice(len(renderers), size=2, replace=False)
        img0, t0 = draw(prompt, renderers[r0], rng, colours, shapes, size)
        img1, t1 = draw(prompt, renderers[r1], rng, colours, shapes, size)
        l0, l1 = prefer(fidelity(t0), fidelity(t1), rng, cfg["temperature"], cfg["tie_prob"])
        u0, u1 = f"{prefix}{i:07d}_0", f"{prefix}{i:07d}_1"
        rows.append({"caption": prompt_text(*prompt), "jpg_0": jpeg_bytes(img0),
                     "jpg_1": jpeg_bytes(img1), "label_0": l0, "label_1": l1,
                     "image_0_uid": u0, "image_1_uid": u1,
                     "best_image_uid": u0 if l0 > l1 else (u1 if l1 > l0 else ""),
                     "has_label": True, "are_different": True, "ranking_id": i,
                     "model_0": renderers[r0].name, "model_1": renderers[r1].name,
                     "truth_0": json.dumps(t0), "truth_1": json.dumps(t1)})
    return rows


def write_pairs(cfg: dict, out, progress: bool = True) -> dict:
    """Writes the pair world under `out`:

    * ``pairs_train.parquet`` — the preference pairs to rank and fine-tune on (Pick-a-Pic schema);
    * ``pairs_reward.parquet`` — separate pairs the reward twins are trained on (the real reward
      models were trained on their own preference data);
    * ``aesthetic.parquet`` — images with a 1–10 rating (``jpg``, ``rating``), the AVA stand-in;
    * ``pretrain.parquet`` — image–caption pairs (``caption``, ``jpg``) drawn by the renderer
      population, the base text-to-image model's pretraining data;
    * ``prompts.json`` — the train / val / eval prompt lists (val and eval held out).
    """
    import pandas as pd
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg["seed"])
    renderers = [Renderer.from_dict(d) for d in cfg["renderers"]]
    prompts = split_prompts(cfg, rng)
    train = pair_rows(prompts["train"], renderers, cfg["n_pairs"], rng, cfg, "p")
    reward = pair_rows(prompts["train"], renderers, cfg["n_reward_pairs"], rng, cfg, "r")
    pd.DataFrame(train).to_parquet(out / "pairs_train.parquet", index=False)
    pd.DataFrame(reward).to_parquet(out / "pairs_reward.parquet", index=False)
    rows, pre = [], []
    for i in tqdm(range(cfg["n_pretrain"]), desc="pair world: pretraining images",
                  disable=not progress, mininterval=2):
        prompt = prompts["train"][rng.integers(len(prompts["train"]))]
        r = renderers[rng.integers(len(renderers))]
        img, t = draw(prompt, r, rng, cfg["colours"], cfg["shapes"], cfg["image_size"])
        pre.append({"caption": prompt_text(*prompt), "jpg": jpeg_bytes(img),
                    "truth": json.dumps(t)})
        if i < cfg["n_aesthetic"]:
            rows.append({"jpg": pre[-1]["jpg"], "rating": aesthetic_rating(t, rng)})
    pd.DataFrame(pre).to_parquet(out / "pretrain.parquet", index=False)
    pd.DataFrame(rows).to_parquet(out / "aesthetic.parquet", index=False)
    (out / "prompts.json").write_text(json.dumps(
        {k: [prompt_text(*p) for p in v] for k, v in prompts.items()}, indent=1))
    labels = np.array([[r["label_0"], r["label_1"]] for r in train])
    ties = float((labels[:, 0] == 0.5).mean())
    truth = [json.loads(r["truth"]) for r in pre]
    return {"n_pairs": len(train), "tie_fraction": round(ties, 4),
            "n_reward_pairs": len(reward), "n_pretrain": len(pre),
            "pretrain_colour_ok": round(float(np.mean([t["colour_ok"] for t in truth])), 4),
            "n_prompts": {k: len(v) for k, v in prompts.items()}}


# ---- the colour oracle for generated images ------------------------------------------------
def colour_oracle(images: np.ndarray, prompts: list[str], colours, min_pixels: int = 3,
                  chroma: float = 70.0) -> np.ndarray:
    """1 where a generated image shows the colour its prompt asks for, else 0.

    images: uint8 [N, H, W, 3]. Foreground = pixels with chroma (max − min channel) above
    `chroma` (the world's backgrounds are grey); each is assigned its nearest world colour and the
    majority colour is the image's colour. Fewer than `min_pixels` foreground pixels = no object.
    Only the colour is judged: it is the attribute the tiny models can learn (a ~1M-parameter
    16 px UNet trained for ~2 CPU-minutes gets colours right ~80 % of the time; shapes stay near
    chance at that budget).
    """
    pal = np.array([COLOURS[c] for c in colours], dtype=np.float32)
    out = np.zeros(len(images), dtype=np.float32)
    for k, (im, p) in enumerate(zip(images, prompts)):
        px = im.reshape(-1, 3).astype(np.float32)
        fg = px[(px.max(1) - px.min(1)) > chroma]
        if len(fg) < min_pixels:
            continue
        near = ((fg[:, None, :] - pal[None]) ** 2).sum(-1).argmin(1)
        major = colours[int(np.bincount(near, minlength=len(colours)).argmax())]
        out[k] = float(major == parse_prompt(p)["colour"])
    return out

