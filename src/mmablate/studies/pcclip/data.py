"""PC-CLIP's data: image pairs with their descriptions, and the difference captions of a captioner.

`pairs.csv` (comma-separated, one row per pair, image paths relative to the CSV's folder or
absolute) has the columns

    split, image_a, image_b, caption_a, caption_b, attribute, difference, reverse, phrase_a, phrase_b

* ``split``: ``lm`` (text only: the corpus the tiny captioner LMs are trained on), ``train``
  (pairs the captioners describe and CLIP is finetuned on) or ``eval`` (held out);
* ``difference``/``reverse``: the ground-truth text of how A differs from B / B from A (world
  pairs; empty for real pairs, whose differences nobody annotated);
* ``phrase_a``/``phrase_b``: the changed object's phrase in A and in B (colour and shape pairs:
  the embedding-arithmetic queries).

The world writes its pairs in this format (`write_world_pairs`); the paper scale builds the
training pairs from COCO's caption annotations (`coco_pairs`: ``captions_train2017.json`` and
its image folder; the paper samples 1000 images) and reads held-out evaluation pairs from a CSV in
the same format, which `coco_eval_pairs` (``python -m mmablate pcclip-coco-eval-pairs``) builds
from COCO's validation captions (``captions_val2017.json``): see there.

`captions.csv` (one row per training pair): ``pair`` (row index among the training pairs),
``text``, ``kept`` (1/0), ``reason`` (why a degenerate generation was dropped).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ...errors import DataError

COLUMNS = ["split", "image_a", "image_b", "caption_a", "caption_b", "attribute", "difference",
           "reverse", "phrase_a", "phrase_b"]
REQUIRED = ["split", "image_a", "image_b", "caption_a", "caption_b"]
CAPTION_COLUMNS = ["pair", "text", "kept", "reason"]


def write_pairs(path, rows) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def read_pairs(path, split: str | None = None, need_images: bool = True) -> list[dict]:
    """Rows of a pairs CSV (of one split), image paths resolved; a clear error on bad input."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pairs CSV not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        rows = []
        for line, r in enumerate(reader, start=2):
            if split is not None and r["split"] != split:
                continue
            for k in ("caption_a", "caption_b"):
                if not (r.get(k) or "").strip():
                    raise DataError(f"{path}: line {line}: empty {k}")
            if need_images:
                for k in ("image_a", "image_b"):
                    if not r[k]:
                        raise DataError(f"{path}: line {line}: empty {k}")
                    p = Path(r[k])
                    r[k] = str(p if p.is_absolute() else path.parent / p)
            r["line"] = line
            rows.append({k: (v if v is not None else "") for k, v in r.items()})
    if not rows:
        raise DataError(f"{path}: no pairs{f' in split {split!r}' if split else ''}")
    return rows


def write_world_pairs(cfg: dict, out_dir, progress: bool = True) -> dict:
    """Samples and renders the world's image pairs (`mmablate.world.pairs`) under `out_dir`."""
    import numpy as np
    from tqdm import tqdm

    from ...world.pairs import pair_record, sample_pair
    from ...world.scenes import WorldSampler, render

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg["seed"])
    sampler = WorldSampler(cfg["colours"], cfg["shapes"], 2)
    attrs = cfg["attributes"]
    rows = []
    for split in ("lm", "train", "eval"):
        n = cfg[f"n_{split}"]
        for i in tqdm(range(n), desc=f"pairs: {split}", disable=not progress, mininterval=2):
            attr = attrs[i % len(attrs)]  # balanced over the attributes
            a, b = sample_pair(sampler, rng, attr)
            r = pair_record(a, b, attr)
            r["split"] = split
            if attr in ("colour", "shape"):
                r["phrase_a"], r["phrase_b"] = a.main.phrase(), b.main.phrase()
            if split != "lm":  # the LM corpus is text only
                for side, s in (("a", a), ("b", b)):
                    rel = f"images/{split}_{i:05d}_{side}.png"
                    render(s, cfg["image_size"], rng).save(out / rel, compress_level=1)
                    r[f"image_{side}"] = rel
            rows.append(r)
    write_pairs(out / "pairs.csv", rows)
    return {split: sum(r["split"] == split for r in rows) for split in ("lm", "train", "eval")}


def relative_to_csv(image, csv_dir) -> str:
    """An image path as a pairs CSV in `csv_dir` must hold it: absolute paths as they are;
    a relative one (to the working directory, e.g. a relative ``image_dir`` in the config)
    rewritten relative to the CSV's folder, which `read_pairs` resolves it from."""
    import os

    if Path(image).is_absolute():
        return str(image)
    return os.path.relpath(os.path.abspath(image), os.path.abspath(csv_dir))


def _read_coco(p) -> dict:
    p = Path(p)
    try:
        ann = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: COCO captions file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    for k in ("images", "annotations"):
        if k not in ann:
            raise DataError(f"{p}: no {k!r} key; is this a COCO captions file?")
    for i, a in enumerate(ann["annotations"]):
        if not isinstance(a, dict) or "image_id" not in a or "caption" not in a:
            raise DataError(f"{p}: annotations[{i}] has no image_id/caption")
    return ann


def coco_pairs(cfg: dict, out_dir) -> dict:
    """Training pairs from COCO caption annotations (paper scale), plus the evaluation CSV's rows.

    ``cfg``: captions_json (COCO ``annotations/captions_*.json``), image_dir, n_images (the
    paper's 1000), n_train (pairs), seed, eval_csv (held-out pairs in the pairs format).
    """
    import numpy as np

    p = Path(cfg["captions_json"])
    ann = _read_coco(p)
    first = {}
    for a in ann["annotations"]:
        first.setdefault(a["image_id"], a["caption"].strip())
    images = [im for im in ann["images"] if im["id"] in first]
    if len(images) < 2:
        raise DataError(f"{p}: fewer than 2 captioned images")
    rng = np.random.default_rng(cfg["seed"])
    pick = rng.choice(len(images), size=min(cfg["n_images"], len(images)), replace=False)
    chosen = [images[i] for i in pick]
    img_dir, out_dir = Path(cfg["image_dir"]), Path(out_dir)
    rows = []
    for _ in range(cfg["n_train"]):
        i, j = rng.choice(len(chosen), size=2, replace=False)
        a, b = chosen[i], chosen[j]
        rows.append({"split": "train",
                     "image_a": relative_to_csv(img_dir / a["file_name"], out_dir),
                     "image_b": relative_to_csv(img_dir / b["file_name"], out_dir),
                     "caption_a": first[a["id"]], "caption_b": first[b["id"]]})
    for r in read_pairs(cfg["eval_csv"], "eval"):
        r = dict(r, image_a=relative_to_csv(r["image_a"], out_dir),
                 image_b=relative_to_csv(r["image_b"], out_dir))
        rows.append({k: r.get(k, "") for k in COLUMNS})
    write_pairs(Path(out_dir) / "pairs.csv", rows)
    return {"train": cfg["n_train"], "eval": len(rows) - cfg["n_train"], "images": len(chosen)}


# ---- the paper scale's evaluation pairs from COCO captions ----------------------------------
# Attribute words of COCO captions; words of one class are synonyms (no difference between them)
COCO_ATTRIBUTE_WORDS = {
    "colour": {w: w for w in ("red", "orange", "yellow", "green", "blue", "purple", "pink",
                              "brown", "black", "white", "silver", "gold")} | {
        "gray": "grey", "grey": "grey"},
    "count": {w: w for w in ("two", "three", "four", "five", "six", "seven", "eight", "nine",
                             "ten")},
    "size": {"small": "small", "little": "small", "tiny": "small",
             "large": "large", "big": "large", "huge": "large"},
}


def _caption_words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+", text.lower())


def coco_eval_pairs(captions_json, image_dir, out, n_pairs: int = 1000, seed: int = 0) -> dict:
    """Held-out evaluation pairs (the pairs.csv format, split ``eval``) from COCO captions.

    The paper's difference-based classification runs on attribute-annotated sets (CUB, AwA2,
    CIFAR-100 sizes, Flowers colours) with LLM-written differences; for COCO nobody annotated
    the difference between two images. This builds one that needs no model: *minimal caption
    pairs* — two captions of two different images identical but for one attribute word (a
    colour, a number, a size: ``a red bus parked on the street`` / ``a blue bus parked on the
    street``), e.g. from ``captions_val2017.json`` (images disjoint from the training pairs,
    which come from train2017). For such a pair the difference text is ``<word A> <next word>
    instead of <word B> <next word>`` (``red bus instead of blue bus``), the reverse swapped;
    colour pairs also get the embedding-arithmetic phrases (``red bus`` → ``blue bus``). Synonyms
    (big/large, gray/grey) do not make a pair. Pairs are drawn in a seeded order with every image
    used at most once (the arithmetic gallery holds each image once), at most `n_pairs`.
    """
    import numpy as np

    p = Path(captions_json)
    ann = _read_coco(p)
    files = {im["id"]: im["file_name"] for im in ann["images"]}
    groups: dict[tuple, list] = {}
    for a in ann["annotations"]:
        if a["image_id"] not in files:
            continue
        ws = _caption_words(a["caption"])
        for i, w in enumerate(ws):
            for attr, vocab in COCO_ATTRIBUTE_WORDS.items():
                if w in vocab:
                    key = (attr, tuple(ws[:i]), tuple(ws[i + 1:]))
                    groups.setdefault(key, []).append((a["image_id"], w, i, a["caption"].strip()))
    candidates = []
    for (attr, _, after), members in sorted(groups.items()):
        vocab = COCO_ATTRIBUTE_WORDS[attr]
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                ia, wa, i, ca = members[x]
                ib, wb, _, cb = members[y]
                if ia != ib and vocab[wa] != vocab[wb]:
                    candidates.append((attr, ia, wa, ca, ib, wb, cb, after[0] if after else ""))
    if not candidates:
        raise DataError(f"{p}: no minimal caption pairs (two images' captions that differ in one "
                        f"colour, number or size word)")
    rng = np.random.default_rng(seed)
    used, rows = set(), []
    img_dir = Path(image_dir)
    for k in rng.permutation(len(candidates)):
        attr, ia, wa, ca, ib, wb, cb, nxt = candidates[k]
        if ia in used or ib in used:
            continue
        if rng.random() < 0.5:  # which image comes first: not the caption file's order
            ia, wa, ca, ib, wb, cb = ib, wb, cb, ia, wa, ca
        used |= {ia, ib}
        pa, pb = f"{wa} {nxt}".strip(), f"{wb} {nxt}".strip()
        r = {"split": "eval", "image_a": relative_to_csv(img_dir / files[ia], Path(out).parent),
             "image_b": relative_to_csv(img_dir / files[ib], Path(out).parent),
             "caption_a": ca, "caption_b": cb,
             "attribute": attr, "difference": f"{pa} instead of {pb}",
             "reverse": f"{pb} instead of {pa}"}
        if attr == "colour":
            r["phrase_a"], r["phrase_b"] = pa, pb
        rows.append(r)
        if len(rows) == n_pairs:
            break
    write_pairs(out, rows)
    by = {}
    for r in rows:
        by[r["attribute"]] = by.get(r["attribute"], 0) + 1
    return {"pairs": len(rows), "candidates": len(candidates), "by_attribute": by,
            "out": str(out)}


def write_captions(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CAPTION_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def read_captions(path, n_pairs: int) -> dict[int, str]:
    """Kept difference captions by training-pair index; a clear error when none is usable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: caption file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("pair", "text", "kept") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        out = {}
        for line, r in enumerate(reader, start=2):
            try:
                i, kept = int(r["pair"]), int(r["kept"])
            except ValueError:
                raise DataError(f"{path}: line {line}: `pair` and `kept` must be integers") from None
            if not 0 <= i < n_pairs:
                raise DataError(f"{path}: line {line}: pair {i} is not one of the "
                                f"{n_pairs} training pairs")
            if kept and r["text"].strip():
                out[i] = r["text"].strip()
    if not out:
        raise DataError(f"{path}: empty caption file (no kept difference captions)")
    return out
