"""Writes the synthetic world in the real datasets' on-disk formats.

* image–caption pairs as a CC3M-style CSV (tab-separated, columns ``filepath`` and ``title``, the
  layout open_clip's ``CsvDataset`` reads), images as PNG files beside it;
* a held-out classification set in the ImageNet ``val/<class folder>/<image>`` layout with a
  ``classnames.txt`` (one human-readable class name per line, in folder order);
* ``scenes.jsonl`` with the ground-truth scene of every image, for oracle metrics.

The paper scale points the same loaders (`mmablate.data`) at CC3M and ImageNet-1K.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .scenes import WorldSampler, caption, render

TRAIN_CSV = "cc3m/train.csv"
CLASSIFY_DIR = "imagenet/val"
CLASSNAMES = "imagenet/classnames.txt"
SCENES = "scenes.jsonl"


def class_folder(label: str) -> str:
    return label.replace(" ", "_")


def write_world(cfg: dict, out: Path, progress: bool = True) -> dict:
    """Generates the world described by `cfg` under `out`; returns a small summary."""
    out = Path(out)
    rng = np.random.default_rng(cfg["seed"])
    sampler = WorldSampler(cfg["colours"], cfg["shapes"], cfg["max_objects"],
                           cfg.get("glyph_prob", 0.0))
    size = cfg["image_size"]
    (out / "cc3m/images").mkdir(parents=True, exist_ok=True)
    scenes_f = open(out / SCENES, "w")
    with open(out / TRAIN_CSV, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title"])
        for i in tqdm(range(cfg["n_train"]), desc="world: train pairs", disable=not progress,
                      mininterval=2):
            s = sampler.scene(rng)
            rel = f"images/{i:06d}.png"
            render(s, size, rng).save(out / "cc3m" / rel, compress_level=1)
            w.writerow([rel, caption(s)])
            scenes_f.write(json.dumps({"split": "train", "file": f"cc3m/{rel}",
                                       "scene": s.to_dict()}) + "\n")
    # classnames.txt lists the classes in sorted folder order, as ImageNet's does
    labels = sorted((f"{c} {s}" for c in cfg["colours"] for s in cfg["shapes"]), key=class_folder)
    (out / CLASSNAMES).parent.mkdir(parents=True, exist_ok=True)
    (out / CLASSNAMES).write_text("\n".join(labels) + "\n")
    n = cfg["n_classify_per_class"]
    for label in tqdm(labels, desc="world: classification set", disable=not progress,
                      mininterval=2):
        colour, shape = label.split()
        d = out / CLASSIFY_DIR / class_folder(label)
        d.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            s = sampler.scene(rng, colour=colour, shape=shape)
            render(s, size, rng).save(d / f"{j:04d}.png", compress_level=1)
            scenes_f.write(json.dumps({"split": "classify",
                                       "file": f"{CLASSIFY_DIR}/{class_folder(label)}/{j:04d}.png",
                                       "scene": s.to_dict()}) + "\n")
    scenes_f.close()
    return {"n_train": cfg["n_train"], "n_classes": len(labels), "n_classify": n * len(labels)}
