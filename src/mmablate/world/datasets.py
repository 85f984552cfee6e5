"""Writes the synthetic world in the real datasets' on-disk formats.

* image–caption pairs as CC3M is distributed for CLIP training: webdataset tar shards in
  img2dataset's layout (``cc3m/00000.tar`` … with ``<key>.png``/``.txt``/``.json`` members and
  ``<shard>_stats.json`` beside each; PNG, img2dataset's ``encode_format="png"``, so the world's
  pixels stay exact; `mmablate.data.shards`), ``world.shard_size`` samples per shard;
* a held-out classification set in the ImageNet ``val/<class folder>/<image>`` layout with a
  ``classnames.txt`` (one human-readable class name per line, in folder order);
* ``scenes.jsonl`` with the ground-truth scene of every image, for oracle metrics.

The paper scale points the same loaders (`mmablate.data`) at CC3M and ImageNet-1K.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .scenes import WorldSampler, caption, render

TRAIN_SHARDS = "cc3m"
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
    from ..data.shards import ShardWriter

    size = cfg["image_size"]
    out.mkdir(parents=True, exist_ok=True)
    scenes_f = open(out / SCENES, "w")
    with ShardWriter(out / TRAIN_SHARDS, maxcount=cfg.get("shard_size", 1000), ext="png") as w:
        for i in tqdm(range(cfg["n_train"]), desc="world: train pairs", disable=not progress,
                      mininterval=2):
            s = sampler.scene(rng)
            buf = io.BytesIO()
            render(s, size, rng).save(buf, format="PNG", compress_level=1)
            key = w.write(buf.getvalue(), caption(s), {"index": i})
            scenes_f.write(json.dumps({"split": "train", "file": f"{TRAIN_SHARDS}/{key[:5]}.tar",
                                       "key": key, "scene": s.to_dict()}) + "\n")
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
