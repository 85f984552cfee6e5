"""Zero-shot classification of a trained CLIP on the held-out class-folder set."""
from __future__ import annotations

from pathlib import Path


def evaluate(cfg: dict, model_path, world_dir, threads: int = 1) -> tuple[dict, dict]:
    """Returns (metrics, chance) with top-1/3/5 accuracy in percent."""
    import torch

    from ...data.imagetext import ClassFolder
    from ...metrics.zeroshot import zeroshot_topk
    from ...models import clip as clipm
    from ...training.schedule import set_threads

    set_threads(threads)
    model, preprocess, tok = clipm.build(cfg["model"])
    clipm.load_weights(model, model_path)
    ev = cfg["eval"]
    ds = ClassFolder(Path(world_dir) / ev["classify_dir"], preprocess,
                     Path(world_dir) / ev["classnames"],
                     limit_per_class=ev.get("limit_per_class"))
    ks = (1, 3, 5)
    acc = zeroshot_topk(model, tok, ds.images, torch.tensor(ds.labels), ds.classnames,
                        ev["templates"], ks)
    n = len(ds.classnames)
    metrics = {f"zeroshot_top{k}": acc[k] for k in ks}
    chance = {f"zeroshot_top{k}": 100.0 * min(k, n) / n for k in ks}
    return metrics, chance
