"""PC-CLIP's cheap input checks at DAG build (`check_inputs`), before any job is queued.

Cheap only: COCO's caption file has COCO's top-level shape (``images`` and ``annotations``
lists; parsed in full up to `FULL_PARSE_BYTES`, a larger one only has its first byte looked
at) and its first image is in the image folder; the evaluation-pair CSV's header and first
``eval`` row; each captioner's model folder holds a config, weights and a tokenizer (a chat
template where ``chat: true``); the base CLIP's checkpoint file; ImageNet val's folders; each
``eval.benchmarks`` dataset root and the files its loader opens first (`BENCH_FILES`).

Errors name the config file(s) (`where`), the dotted key and the file, e.g.
``<files>: studies.pcclip.pairs.captions_json: coco/annotations/captions_train2017.json:
"annotations" is an empty list; COCO caption records expected``.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ...errors import DataError

KEY = "studies.pcclip"
FULL_PARSE_BYTES = 16 << 20  # COCO val2017's 3.9 MB parses in ~0.1 s; train2017's 92 MB does not
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.txt", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _err(where: str, key: str, path, msg: str) -> DataError:
    return DataError(f"{where}: {key}: {path}: {msg}")


def check_coco_captions(path, image_dir, key: str, img_key: str, where: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise _err(where, key, p, "not found (COCO annotations/captions_*.json)")
    if p.stat().st_size > FULL_PARSE_BYTES:  # large: its top-level type only
        with open(p, "rb") as f:
            head = f.read(4096).lstrip()
        if not head.startswith(b"{"):
            raise _err(where, key, p, "not a JSON object; COCO's captions file is "
                                      "{\"info\", \"images\", \"annotations\", \"licenses\"}")
        return
    try:
        ann = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _err(where, key, p, f"not valid JSON ({e})") from None
    if not isinstance(ann, dict):
        raise _err(where, key, p, f"a JSON {type(ann).__name__}; COCO's captions file is an "
                                  f"object with \"images\" and \"annotations\" lists")
    for k in ("images", "annotations"):
        if not isinstance(ann.get(k), list):
            raise _err(where, key, p, f"no {k!r} list (has {sorted(ann)}); is this a COCO "
                                      f"captions file?")
        if not ann[k]:
            raise _err(where, key, p, f"{k!r} is an empty list; COCO records expected")
    a0, i0 = ann["annotations"][0], ann["images"][0]
    if not isinstance(a0, dict) or "image_id" not in a0 or "caption" not in a0:
        raise _err(where, key, p, "annotations[0] has no image_id/caption (a captions file, "
                                  "not instances_*.json?)")
    if not isinstance(i0, dict) or "file_name" not in i0 or "id" not in i0:
        raise _err(where, key, p, "images[0] has no id/file_name")
    d = Path(image_dir)
    if not d.is_dir():
        raise _err(where, img_key, d, "not a directory (COCO's train2017/ or val2017/ images)")
    if not (d / i0["file_name"]).is_file():
        raise _err(where, img_key, d, f"has no {i0['file_name']} (images[0] of {p}): the "
                                      f"wrong image folder for these captions?")


def check_pairs_csv(path, key: str, where: str) -> None:
    """The evaluation pairs (pairs.csv format, split ``eval``): header, a first eval row with
    difference/reverse texts and existing images (resolved as `read_pairs` does)."""
    from .data import REQUIRED

    p = Path(path)
    if not p.is_file():
        raise _err(where, key, p, "not found (build it with `python -m mmablate "
                                  "pcclip-coco-eval-pairs`)")
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        need = REQUIRED + ["difference", "reverse"]
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise _err(where, key, p, f"missing column(s) {missing}; found {reader.fieldnames}")
        for line, r in enumerate(reader, start=2):
            if r["split"] != "eval":
                continue
            for k in ("difference", "reverse", "caption_a", "caption_b"):
                if not (r.get(k) or "").strip():
                    raise _err(where, key, p, f"line {line}: empty {k}")
            for k in ("image_a", "image_b"):
                img = Path(r[k]) if Path(r[k]).is_absolute() else p.parent / r[k]
                if not img.is_file():
                    raise _err(where, key, p, f"line {line}: {k} {img} not found")
            return
    raise _err(where, key, p, "no pairs in split 'eval'")


def check_model_folder(src: str, key: str, where: str, chat: bool = False) -> None:
    """A local transformers model folder: config, weights and a tokenizer (and a chat
    template with ``chat: true``). A hub id that is no local folder is left to the job."""
    d = Path(src)
    if not d.exists():
        if src.count("/") == 1 and not src.startswith((".", "/", "~")):
            return  # a hub id: downloaded (or read from the HF cache) by the job
        raise _err(where, key, d, "model folder not found")
    if not d.is_dir():
        raise _err(where, key, d, "not a folder (a save_pretrained directory or a hub id)")
    if not (d / "config.json").is_file():
        raise _err(where, key, d, "no config.json: not a save_pretrained model folder")
    if not any((d / w).is_file() for w in WEIGHT_FILES):
        raise _err(where, key, d, f"no weights ({' / '.join(WEIGHT_FILES[::2])})")
    if not (d / "tokenizer_config.json").is_file() or \
            not any((d / t).is_file() for t in TOKENIZER_FILES):
        raise _err(where, key, d, f"no tokenizer (tokenizer_config.json with one of "
                                  f"{', '.join(TOKENIZER_FILES)}): save it beside the model "
                                  f"(tokenizer.save_pretrained)")
    if chat:
        has = (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file()
        if not has:
            try:
                has = bool(json.loads((d / "tokenizer_config.json").read_text())
                           .get("chat_template"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise _err(where, key, d / "tokenizer_config.json", "not valid JSON") from None
        if not has:
            raise _err(where, key, d, "`chat: true` but its tokenizer has no chat template "
                                      "(chat_template.jinja or tokenizer_config.json "
                                      "\"chat_template\")")


#: per benchmark dataset: the files / folders under its root that its loader reads (the layouts
#: of mmablate.studies.pcclip.benchmarks)
BENCH_FILES = {
    "cifar10": ("cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"),
    "cifar100": ("cifar-100-python/test", "cifar-100-python/meta"),
    "eurosat": ("eurosat/2750",),
    "sun397": ("SUN397/ClassName.txt",),
    "flowers": ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
    "cub": ("classes.txt", "images.txt", "train_test_split.txt", "images"),
    "awa2": ("classes.txt", "testclasses.txt", "predicates.txt", "predicate-matrix-binary.txt",
             "JPEGImages"),
}


def check_benchmarks(b: dict, where: str) -> None:
    """Each dataset the benchmarks read: its root and the files its loader opens first (CUB's
    difference task also its attribute files)."""
    from .benchmarks import DIFF_DATASET, DIFFERENCE, ZEROSHOT

    diff = list(b.get("difference", DIFFERENCE))
    names = dict.fromkeys(list(b.get("zeroshot", ZEROSHOT)) + [DIFF_DATASET[t] for t in diff])
    for name in names:
        key = f"{KEY}.eval.benchmarks.roots.{name}"
        root = Path((b.get("roots") or {}).get(name) or "")
        if not root.is_dir():
            raise _err(where, key, root, "dataset root is not a directory")
        need = list(BENCH_FILES[name])
        if name == "cub" and "cub" in diff:
            need.append("attributes/class_attribute_labels_continuous.txt")
        for f in need:
            if not (root / f).exists():
                raise _err(where, key, root, f"has no {f} (the {name} layout the benchmarks read)")
        if name == "cub" and "cub" in diff and not (root / "attributes" / "attributes.txt").is_file() \
                and not (root.parent / "attributes.txt").is_file():
            raise _err(where, key, root, "no attributes.txt (in attributes/ or beside the folder, "
                                         "as the CUB_200_2011 archive has it)")
    fl = b.get("flowers_classnames")
    if fl and not Path(fl).is_file():
        raise _err(where, f"{KEY}.eval.benchmarks.flowers_classnames", fl, "not found")


def check_inputs(block: dict, where: str) -> None:
    """PC-CLIP's paper inputs (``pairs.source: coco``, a pretrained base); silent for the
    world."""
    from ..rankclip.preflight import check_class_folders

    pairs = block.get("pairs") or {}
    if pairs.get("source") != "coco":
        return
    check_coco_captions(pairs.get("captions_json", ""), pairs.get("image_dir", ""),
                        f"{KEY}.pairs.captions_json", f"{KEY}.pairs.image_dir", where)
    check_pairs_csv(pairs.get("eval_csv", ""), f"{KEY}.pairs.eval_csv", where)
    # every defined captioner with a model (the block need not list the plans' ablations):
    # hub ids are the job's to fetch, local folders are checked
    for name, spec in sorted((block["captions"].get("captioners") or {}).items()):
        spec = spec or {}
        if spec.get("family") not in (None, "template") and spec.get("model"):
            check_model_folder(str(spec["model"]), f"{KEY}.captions.captioners.{name}.model",
                               where, chat=bool(spec.get("chat")))
    base = block.get("base") or {}
    model = base.get("model") or {}
    pre = model.get("pretrained")
    if base.get("source") == "pretrained" and pre and ("/" in pre or Path(pre).suffix):
        if not Path(pre).is_file():  # a file path, not an open_clip tag
            raise _err(where, f"{KEY}.base.model.pretrained", pre, "checkpoint file not found")
    ev = block.get("eval") or {}
    if ev.get("benchmarks"):
        check_benchmarks(ev["benchmarks"], where)
    root = ev.get("classify_root")
    if root:
        imagenet = ev.get("class_source", "files") == "imagenet1k"
        check_class_folders(Path(root) / ev.get("classify_dir", "val"),
                            f"{KEY}.eval.classify_dir", where, imagenet,
                            None if imagenet else Path(root) / ev.get("classnames", ""),
                            f"{KEY}.eval.classnames")
