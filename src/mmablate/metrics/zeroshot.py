"""Zero-shot classification with CLIP: class text embeddings averaged over prompt templates.

`zeroshot_topk(model, tokenizer, images, labels, classnames, templates, ks, batch)` takes the
evaluation images as one tensor with a tensor of labels (small sets, as before), or as a
``DataLoader`` / any iterable of ``(images, labels)`` batches (``labels`` then ``None``): the
ImageNet-1K validation set is streamed through a DataLoader with workers and classified on the
model's device in batches. Class embeddings: each class's prompts encoded, L2-normalised,
averaged and normalised again (CLIP's and open_clip's ``build_zero_shot_classifier``).

`imagenet_metadata()`: open_clip's ImageNet-1K class names (``IMAGENET_CLASSNAMES``, the standard
class order, i.e. the sorted WordNet synset folders) and the 80 OpenAI prompt templates
(``OPENAI_IMAGENET_TEMPLATES``) — the setting every CLIP paper reports ImageNet zero-shot in.
Templates are callables in open_clip and ``"{c}"`` format strings in the config; both work here.
"""
from __future__ import annotations

import sys


def imagenet_metadata():
    """(1,000 class names in the standard order, the 80 OpenAI templates) from open_clip."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def imagenet_val(val_dir, transform=None, limit_per_class: int | None = None, where: str = ""):
    """(`ClassFolder` of ImageNet-1K val without preloading, open_clip's 1,000 class names): the
    standard ``val/<synset>/`` layout, whose sorted synset folders are the class order of
    ``IMAGENET_CLASSNAMES`` (real ImageNet ships no class-name file; the names are open_clip's).
    Any other folder count is a DataError naming the folder."""
    from pathlib import Path

    from ..data.imagetext import ClassFolder
    from ..errors import DataError

    names, _ = imagenet_metadata()
    val_dir = Path(val_dir)
    ds = ClassFolder(val_dir, transform, preload=False, limit_per_class=limit_per_class)
    if len(ds.folders) != len(names):
        raise DataError(f"{where}{val_dir}: {len(ds.folders)} class folders; ImageNet-1K val has "
                        f"{len(names)} (val/<synset>/, e.g. val/n01440764/)")
    ds.classnames = names
    return ds, names


def _prompt(template, name: str) -> str:
    return template(name) if callable(template) else template.format(c=name)


def class_embeddings(model, tokenizer, classnames, templates, batch: int = 256):
    import torch

    from ..device import module_device

    dev = module_device(model)
    embs = []
    with torch.no_grad():
        for name in classnames:
            prompts = [_prompt(t, name) for t in templates]
            e = torch.cat([model.encode_text(tokenizer(prompts[i:i + batch]).to(dev),
                                             normalize=True)
                           for i in range(0, len(prompts), batch)]).mean(0)
            embs.append(e / e.norm())
    return torch.stack(embs)


def _batches(images, labels, batch):
    if labels is None:  # a DataLoader / iterable of (images, labels) batches
        yield from images
        return
    for i in range(0, len(images), batch):
        yield images[i:i + batch], labels[i:i + batch]


def zeroshot_topk(model, tokenizer, images, labels, classnames, templates, ks=(1, 3, 5),
                  batch: int = 512) -> dict:
    """Top-k accuracy (percent) of zero-shot classification, on the model's device.

    ``images``: a tensor [N, 3, H, W] with ``labels`` a tensor [N], or an iterable of
    ``(images, labels)`` batches with ``labels=None``. k above the class count counts as the
    class count (every prediction is then correct)."""
    import torch

    from ..device import module_device
    from ..errors import DataError

    dev = module_device(model)
    model.eval()
    W = class_embeddings(model, tokenizer, classnames, templates)
    kmax = min(max(ks), len(classnames))
    correct = {k: 0 for k in ks}
    n = 0
    from tqdm import tqdm

    total = len(images) if hasattr(images, "__len__") else None
    if labels is not None:
        total = -(-len(images) // batch)
    with torch.no_grad():
        for x, y in tqdm(_batches(images, labels, batch), total=total, desc="zero-shot",
                         mininterval=10, file=sys.stderr, disable=total is not None and total < 20):
            x = x.to(dev, non_blocking=True)
            f = model.encode_image(x, normalize=True)
            top = (f.float() @ W.T.float()).topk(kmax, dim=1).indices
            y = torch.as_tensor(y).to(dev)[:, None]
            hit = (top == y)
            for k in ks:
                correct[k] += hit[:, :k].any(dim=1).sum().item()
            n += len(y)
    if n == 0:
        raise DataError("zero-shot evaluation: no images")
    return {k: 100.0 * correct[k] / n for k in ks}
