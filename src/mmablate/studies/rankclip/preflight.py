"""RankCLIP's cheap input checks at DAG build (`check_inputs`): the paper's files exist and have
their published shape, before any job is queued.

Cheap only: the shard list and each shard's ``_stats.json`` and first tar member (CC3M's
img2dataset shards), ImageNet val's folder count and its first folder's first image. A shard
corrupt after its first member is found at job time (`mmablate.data.shards` skips and counts
it, naming the shard and key).

Errors name the config file(s) (`where`), the dotted key and the file:
``<files>: studies.rankclip.data.train_shards: cc3m/00003.tar: not a tar archive (…)``.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

from ...errors import DataError

KEY = "studies.rankclip"
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")


def _err(where: str, key: str, path, msg: str) -> DataError:
    return DataError(f"{where}: {key}: {path}: {msg}")


def first_sample(shard) -> dict[str, str]:
    """The member suffixes of a tar shard's first sample (``{"jpg": name, "txt": name, …}``),
    reading only the headers up to its second sample; OSError/TarError on a corrupt tar."""
    members: dict[str, str] = {}
    key = None
    with tarfile.open(shard, "r:*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            stem, _, ext = Path(m.name).name.partition(".")
            if key is None:
                key = stem
            elif stem != key:
                break
            members[ext.lower()] = m.name
    return members


def check_shard(shard: str, key: str, where: str, need_stats: bool) -> None:
    """One img2dataset shard: its ``<shard>_stats.json`` (an integer "successes") and a first
    sample with an image and a caption member."""
    p = Path(shard)
    st = p.with_name(p.stem + "_stats.json")
    if st.is_file():
        try:
            stats = json.loads(st.read_text())
            int(stats["successes"])
        except json.JSONDecodeError as e:
            raise _err(where, key, st, f"not valid JSON (line {e.lineno}: {e.msg})") from None
        except (KeyError, TypeError, ValueError):
            raise _err(where, key, st, "no integer \"successes\" (img2dataset's stats file "
                                       "holds the shard's sample count there)") from None
    elif need_stats and not (p.parent / "sizes.json").is_file():
        raise _err(where, key, p, f"no {st.name} beside it (img2dataset writes one per shard; "
                                  f"the sample count comes from its \"successes\"): set "
                                  f"{KEY}.data.num_samples or restore the stats files")
    try:
        members = first_sample(p)
    except (OSError, tarfile.TarError, EOFError) as e:
        why = " ".join(str(e).split())  # tarfile's message spans lines
        raise _err(where, key, p, f"not a readable tar archive ({why})") from None
    if not members:
        raise _err(where, key, p, "an empty tar archive (no samples)")
    if not any(m in members for m in ("jpg", "jpeg", "png", "webp")):
        raise _err(where, key, p, f"its first sample has no image member (.jpg/.png/.webp); "
                                  f"has {sorted(members.values())}")
    if "txt" not in members:
        raise _err(where, key, p, f"its first sample has no caption member (.txt); has "
                                  f"{sorted(members.values())}")


def check_class_folders(root, key: str, where: str, imagenet1k: bool,
                        classnames=None, classnames_key: str = "") -> None:
    """An ImageNet-style ``val/<class>/`` tree: the folder exists, holds class folders (1,000
    for ImageNet-1K, whose names are open_clip's), the first holds an image; a class-name file
    (the world) with one name per folder."""
    root = Path(root)
    if not root.is_dir():
        raise _err(where, key, root, "not a directory (ImageNet val/<synset>/ folders expected)")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if imagenet1k and len(folders) != 1000:
        raise _err(where, key, root, f"{len(folders)} class folders; ImageNet-1K val has 1000 "
                                     f"(val/<synset>/, e.g. val/n01440764/)")
    if not folders:
        raise _err(where, key, root, "no class folders")
    if not any(f.suffix.lower() in IMAGE_EXT for f in folders[0].iterdir()):
        raise _err(where, key, folders[0], "no images (.JPEG/.jpg/.png) in the first class folder")
    if classnames is not None:
        cn = Path(classnames)
        if not cn.is_file():
            raise _err(where, classnames_key, cn, "class-name file not found")
        n = sum(1 for line in cn.read_text().splitlines() if line.strip())
        if n != len(folders):
            raise _err(where, classnames_key, cn, f"{n} class names for {len(folders)} folders "
                                                  f"in {root}")


def shard_paths(spec, root, key: str, where: str) -> list[Path]:
    """The shard list of ``data.train_shards`` as `mmablate.data.shards.expand_shards` reads
    it (a folder's .tar files, a brace pattern or a list, under ``data.root``), without
    importing that module (it imports torch: seconds at every DAG build)."""
    import braceexpand

    def rel(p):
        p = Path(p)
        return p if p.is_absolute() else Path(root) / p

    if isinstance(spec, (list, tuple)):
        paths = [rel(p) for p in spec]
    elif rel(spec).is_dir():
        paths = sorted(rel(spec).glob("*.tar"))
        if not paths:
            raise _err(where, key, rel(spec), "holds no .tar shards")
    else:
        paths = [rel(p) for p in braceexpand.braceexpand(str(spec))]
    if not paths:
        raise _err(where, key, spec, "names no shards")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise _err(where, key, missing[0], f"not found ({len(missing)} of the {len(paths)} "
                                           f"shards missing; under {KEY}.data.root {root})")
    return paths


def check_inputs(block: dict, where: str) -> None:
    """RankCLIP's paper inputs (``data.source: files``); silent for the world."""
    data = block.get("data") or {}
    if data.get("source") != "files":
        return

    root = data.get("root")
    if not root or not Path(root).is_dir():
        raise _err(where, f"{KEY}.data.root", root, "not a directory (the CC3M shard folder)")
    if data.get("train_shards"):
        key = f"{KEY}.data.train_shards"
        for s in shard_paths(data["train_shards"], root, key, where):
            check_shard(s, key, where, need_stats=not data.get("num_samples"))
    elif data.get("train_csv"):
        csv = Path(root) / data["train_csv"]
        if not csv.is_file():
            raise _err(where, f"{KEY}.data.train_csv", csv, "image–caption CSV not found")
    ev = block.get("eval") or {}
    eroot = data.get("eval_root")
    if not eroot or not Path(eroot).is_dir():
        raise _err(where, f"{KEY}.data.eval_root", eroot, "not a directory (ImageNet's root)")
    imagenet = ev.get("class_source", "files") == "imagenet1k"
    check_class_folders(Path(eroot) / ev.get("classify_dir", "val"), f"{KEY}.eval.classify_dir",
                        where, imagenet,
                        None if imagenet else Path(eroot) / ev.get("classnames", ""),
                        f"{KEY}.eval.classnames")
