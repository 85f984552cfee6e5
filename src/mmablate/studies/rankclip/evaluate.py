"""Zero-shot classification of a trained CLIP on a held-out class-folder set (``val/<class>/``).

``eval.class_source``:

* ``imagenet1k`` (paper scale) — ImageNet-1K as every CLIP paper reports it: open_clip's class
  names and its 80 OpenAI templates (`mmablate.metrics.zeroshot.imagenet_metadata`), the
  standard ``val/<synset>/`` layout whose sorted synset folders are the standard class order
  (1,000 folders required);
* ``files`` (the tiny world) — the class names of ``eval.classnames`` (one per line, in folder
  order) and the prompt templates ``eval.templates`` (the world's caption grammar).

Images are read through a ``DataLoader`` (``eval.batch_size``, ``eval.num_workers``) and
classified on the stage's device (the GPU the command claimed, else the CPU). Top-1/3/5 and
top-10 (the paper reports all four).
"""
from __future__ import annotations

from pathlib import Path

KS = (1, 3, 5, 10)


def class_set(ev: dict, root):
    """(class-folder dataset without preloading, class names, templates) of the eval block."""
    from ...data.imagetext import ClassFolder
    from ...metrics.zeroshot import imagenet_metadata, imagenet_val

    root = Path(root)
    source = ev.get("class_source", "files")
    if source == "imagenet1k":
        ds, names = imagenet_val(root / ev["classify_dir"], None, ev.get("limit_per_class"))
        return ds, names, imagenet_metadata()[1]
    ds = ClassFolder(root / ev["classify_dir"], None, root / ev["classnames"], preload=False,
                     limit_per_class=ev.get("limit_per_class"))
    return ds, ds.classnames, list(ev["templates"])


def evaluate(cfg: dict, model_path, world_dir, threads: int = 1) -> tuple[dict, dict]:
    """Returns (metrics, chance) with top-k accuracy in percent, k in `KS`."""
    from torch.utils.data import DataLoader

    from ...device import torch_device
    from ...metrics.zeroshot import zeroshot_topk
    from ...models import clip as clipm
    from ...training.schedule import set_threads

    set_threads(threads)
    model, preprocess, tok = clipm.build(cfg["model"])
    clipm.load_weights(model, model_path)
    dev = torch_device()
    model.to(dev)
    ev = cfg["eval"]
    ds, names, templates = class_set(ev, world_dir)
    ds.transform = preprocess
    nw = ev.get("num_workers", 0)
    loader = DataLoader(ds, batch_size=ev.get("batch_size", 256), num_workers=nw,
                        pin_memory=dev == "cuda", **({"prefetch_factor": 4} if nw else {}))
    acc = zeroshot_topk(model, tok, loader, None, names, templates, KS)
    n = len(names)
    metrics = {f"zeroshot_top{k}": acc[k] for k in KS}
    chance = {f"zeroshot_top{k}": 100.0 * min(k, n) / n for k in KS}
    return metrics, chance
