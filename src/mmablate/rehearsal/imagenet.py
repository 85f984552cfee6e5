"""ImageNet-1K validation in its standard layout, ``imagenet/val/<synset>/<file>.JPEG``.

1,000 synset folders (RankCLIP's evaluator refuses any other count: open_clip's
``IMAGENET_CLASSNAMES`` are the sorted synsets' class order), a few small JPEGs each. The folder
names are WordNet-style ids ``n0xxxxxxx`` that sort in class order; they are not the real synset
ids (those are not shipped with any installed package), which no loader of this project reads:
the class of a folder is its position in the sorted listing, as for the real val set.
"""
from __future__ import annotations

from pathlib import Path

N_CLASSES = 1000


def synsets() -> list[str]:
    return [f"n{10000000 + 1000 * k:08d}" for k in range(N_CLASSES)]


def write_assets(out, per_class: int = 2, size: int = 64) -> dict:
    import numpy as np
    from PIL import Image

    root = Path(out) / "imagenet" / "val"
    rng = np.random.default_rng(0)
    n = 0
    for k, wnid in enumerate(synsets()):
        d = root / wnid
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            p = d / f"ILSVRC2012_val_{k * per_class + j + 1:08d}.JPEG"
            if not p.exists():
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(p, format="JPEG", quality=80)
            n += 1
    return {"imagenet/val": {"classes": N_CLASSES, "images": n}}
