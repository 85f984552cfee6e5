"""PC-CLIP's evaluation: difference-based classification (binary and multiple choice), zero-shot
classification, CLIPScore and embedding arithmetic, for the base model or a finetuned one.

* ``diff_acc`` — the paper's protocol: a pair (A, B) with difference text t (how A differs from
  B) is correct when cos(text(t), c(A, B)) > 0, c the model's combination of the two image
  embeddings. Each pair is scored in both orders: (A, B) must give a positive cosine and (B, A)
  a non-positive one (accuracy = mean of the two). For subtraction c(B, A) = −c(A, B), so this
  equals the one-order protocol exactly; for a symmetric combination (multiplication) it keeps
  a constant positive bias from scoring 100%. Chance 50%.
* ``diff_mc_acc`` — multiple choice: the true text, its reverse (how B differs from A) and
  ``n_distractors`` other pairs' texts; correct when the true text has the highest cosine.
* ``zeroshot_acc`` — top-1 zero-shot accuracy on the class-folder set (prompt ensemble
  ``eval.templates``), the images streamed through a `DataLoader` (`LoaderImages`) to the
  claimed device. ``eval.class_source``: ``files`` (the world: ``eval.classnames``, one name per
  line in folder order) or ``imagenet1k`` (paper scale: ImageNet-1K val's 1,000 ``<synset>/``
  folders named by open_clip's ``IMAGENET_CLASSNAMES``; real ImageNet has no class-name file).
* ``clipscore`` — 100·max(cos(image, caption), 0), mean over the evaluation images and their
  captions, computed with the model under test (torchmetrics' CLIPScore is broken with
  transformers 5 and only loads HF CLIP models; this is its formula over open_clip).
* ``arithmetic_acc`` — for pairs that differ in colour or shape: the query
  image(A) − text(phrase of A's object) + text(phrase of B's object) must retrieve B (top-1)
  from the gallery of every such pair's A and B images. Chance 100/(2N).

* ``eval.benchmarks`` (paper scale): the authors' own zero-shot and difference-based
  classification datasets, one column each (`benchmarks`).

The evaluation pairs' image embeddings: for a model whose image tower was not trained (the base
model, text-encoder-only variants) they are the base model's, read from the `embed_pairs` file
(``--embed``) instead of being recomputed; otherwise each distinct image is read through a
`DataLoader` and encoded on the claimed device.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError


def _texts(model, tok, texts, batch: int = 512):
    import torch

    from ...device import module_device

    dev = module_device(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            out.append(model.encode_text(tok(texts[i:i + batch]).to(dev), normalize=True).float())
    return torch.cat(out)


def diff_scores(combine, fa, fb, t):
    """(cos in order A,B ; cos in order B,A) of each pair's text with the combined vector."""
    import torch.nn.functional as F

    import torch

    with torch.no_grad():
        ab = F.normalize(combine(fa, fb), dim=-1)
        ba = F.normalize(combine(fb, fa), dim=-1)
    return (ab * t).sum(-1), (ba * t).sum(-1)


def diff_accuracy(s_ab, s_ba) -> float:
    return 100.0 * 0.5 * (float((s_ab > 0).float().mean()) + float((s_ba <= 0).float().mean()))


def multiple_choice(combine, fa, fb, true_t, rev_t, pool_t, pool_texts, texts, rng, k: int):
    """Accuracy (%) of picking the true text among it, its reverse and k other pairs' texts."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        v = F.normalize(combine(fa, fb), dim=-1)
    correct = 0
    for i in range(len(v)):
        others = [j for j in rng.permutation(len(pool_texts))
                  if pool_texts[j] not in (texts[i][0], texts[i][1])]
        uniq, seen = [], set()
        for j in others:
            if pool_texts[j] not in seen:
                seen.add(pool_texts[j])
                uniq.append(j)
            if len(uniq) == k:
                break
        cands = torch.stack([true_t[i], rev_t[i]] + [pool_t[j] for j in uniq])
        correct += int(int((cands @ v[i]).argmax()) == 0)
    return 100.0 * correct / len(v)


def clipscore(img, txt) -> float:
    return float((100.0 * (img * txt).sum(-1).clamp(min=0)).mean())


def arithmetic(model, tok, fa, fb, phrase_a, phrase_b) -> float:
    import torch
    import torch.nn.functional as F

    ta, tb = _texts(model, tok, phrase_a), _texts(model, tok, phrase_b)
    q = F.normalize(fa - ta + tb, dim=-1)
    gallery = torch.cat([fa, fb])  # index i: A_i; N + i: B_i
    top = (q @ gallery.T).argmax(dim=1)
    target = torch.arange(len(fa), device=fa.device) + len(fa)
    return 100.0 * float((top == target).float().mean())


class LoaderImages:
    """A sliceable stand-in for a stacked image tensor, read in order through a `DataLoader`:
    ``images[i:i + batch]`` (the only access `metrics.zeroshot.zeroshot_topk` makes, ``batch``
    = the loader's) returns the loader's next batch, so a 50k-image ImageNet validation set is
    never held in memory. Out-of-order slices are an error."""

    def __init__(self, dataset, batch: int, workers: int = 0, progress: bool = True,
                 desc: str = "zero-shot images"):
        from tqdm import tqdm

        from .finetune import image_loader

        self.n, self.batch = len(dataset), batch
        self._it = iter(tqdm(image_loader(dataset, batch, workers), desc=desc,
                             disable=not progress, mininterval=5))
        self._next = 0

    def __len__(self):
        return self.n

    def __getitem__(self, sl):
        if not isinstance(sl, slice) or (sl.start or 0) != self._next:
            raise IndexError(f"LoaderImages reads batches in order: expected a slice from "
                             f"{self._next}, got {sl!r}")
        x = next(self._it)
        if sl.stop is not None and min(sl.stop, self.n) - self._next != len(x):
            raise IndexError(f"LoaderImages: slice {sl!r} is not one batch of {self.batch}")
        self._next += len(x)
        return x


def zeroshot(model, tok, ds, templates, batch: int, workers: int, progress: bool = True) -> float:
    """Top-1 zero-shot accuracy (%) on a `ClassFolder` (preload=False), streamed."""
    import torch

    from ...metrics.zeroshot import zeroshot_topk

    images = LoaderImages(_Transformed(ds), batch, workers, progress)
    return zeroshot_topk(model, tok, images, torch.tensor(ds.labels), ds.classnames, templates,
                         (1,), batch=batch)[1]


class _Transformed:
    """A ClassFolder's images as a map-style dataset (decoded in the loader's workers)."""

    def __init__(self, ds):
        self.paths, self.transform = ds.paths, ds.transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from ...data.imagetext import open_image

        return self.transform(open_image(self.paths[i]))


def evaluate(cfg: dict, base: str | None, finetuned: str | None, world_root: str | None,
             threads: int = 1, embeddings: str | None = None,
             progress: bool = True) -> tuple[dict, dict, dict]:
    import numpy as np

    from ...data.imagetext import ClassFolder
    from ...device import torch_device
    from ...metrics.zeroshot import imagenet_val
    from ...training.schedule import set_threads
    from .data import read_pairs
    from .finetune import embed_dim, encode_pairs, load_clip, load_embeddings, load_finetuned, \
        loader_settings
    from .losses import Combine

    set_threads(threads)
    model, preprocess, tok = load_clip(cfg["model"], base)
    combine = load_finetuned(model, finetuned) if finetuned else \
        Combine("subtract", embed_dim(model))
    dev = torch_device()  # the GPU cli.main claimed, or the CPU
    model.eval().to(dev)
    combine.eval().to(dev)
    ev = cfg["eval"]
    batch, workers = loader_settings(cfg)
    rows = read_pairs(cfg["pairs"], "eval")
    for k in ("difference", "reverse"):
        if any(not r.get(k) for r in rows):
            raise DataError(f"{cfg['pairs']}: evaluation pairs need a `{k}` text on every row")
    if embeddings:  # the base model's image tower, unchanged: its cached embeddings
        fa, fb = load_embeddings(embeddings, len(rows), embed_dim(model), split="eval")
        fa, fb = fa.to(dev), fb.to(dev)
    else:
        fa, fb = encode_pairs(model, preprocess, rows, batch, workers, progress)
    diffs = [r["difference"] for r in rows]
    revs = [r["reverse"] for r in rows]
    t, tr = _texts(model, tok, diffs), _texts(model, tok, revs)
    s_ab, s_ba = diff_scores(combine, fa, fb, t)
    rng = np.random.default_rng(ev.get("seed", 0))
    k = ev["n_distractors"]
    metrics = {
        "diff_acc": diff_accuracy(s_ab, s_ba),
        "diff_mc_acc": multiple_choice(combine, fa, fb, t, tr, t, diffs,
                                       list(zip(diffs, revs)), rng, k),
        "clipscore": clipscore(fa, _texts(model, tok, [r["caption_a"] for r in rows])),
    }
    chance = {"diff_acc": 50.0, "diff_mc_acc": 100.0 / (k + 2)}
    arith = [i for i, r in enumerate(rows) if r.get("phrase_a") and r.get("phrase_b")]
    if arith:
        metrics["arithmetic_acc"] = arithmetic(model, tok, fa[arith], fb[arith],
                                               [rows[i]["phrase_a"] for i in arith],
                                               [rows[i]["phrase_b"] for i in arith])
        chance["arithmetic_acc"] = 100.0 / (2 * len(arith))
    # per attribute (not in the tables; kept in the record for the report)
    by_attr = {}
    for a in sorted({r.get("attribute", "") for r in rows} - {""}):
        idx = [i for i, r in enumerate(rows) if r.get("attribute") == a]
        by_attr[a] = diff_accuracy(s_ab[idx], s_ba[idx])
    root = Path(ev.get("classify_root") or world_root)
    if ev.get("class_source", "files") == "imagenet1k":  # ImageNet-1K val: open_clip's names
        ds, _ = imagenet_val(root / ev["classify_dir"], preprocess, ev.get("limit_per_class"))
    else:  # the world's classes: eval.classnames, one per line in folder order
        ds = ClassFolder(root / ev["classify_dir"], preprocess, root / ev["classnames"],
                         preload=False, limit_per_class=ev.get("limit_per_class"))
    metrics["zeroshot_acc"] = zeroshot(model, tok, ds, ev["templates"], batch, workers, progress)
    chance["zeroshot_acc"] = 100.0 / len(ds.classnames)
    extra = {"diff_acc_by_attribute": by_attr, "n_eval_pairs": len(rows),
             "eval_image_embeddings": "cached" if embeddings else "computed", "device": str(dev)}
    if ev.get("benchmarks"):  # the authors' own datasets (paper scale, rehearsal)
        from .benchmarks import run

        m, c, x = run(model, tok, combine, preprocess, ev["benchmarks"], batch, workers,
                      progress)
        metrics.update(m)
        chance.update(c)
        extra.update(x)
    return metrics, chance, extra
