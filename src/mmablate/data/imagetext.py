"""Image–caption and class-folder datasets in the formats CC3M and ImageNet are distributed in.

`ImageTextCsv` reads an open_clip-style CSV (``filepath``/``title`` columns, tab-separated,
image paths relative to the CSV's folder; for small sets — webdataset shards are
`mmablate.data.shards`). `ClassFolder` reads an ImageNet ``val`` layout (one folder per class,
sorted: for ImageNet the WordNet synsets, whose sorted order is the standard class order) with
an optional ``classnames.txt`` of human-readable names; items are
``(image, label)`` for a DataLoader.
Both decode with PIL and apply the model's own preprocessing transform; with ``preload`` every
image is decoded once into one tensor (the tiny scale's 32 px images fit in memory).
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".JPEG")


def open_image(path):
    """The image at `path` as RGB; a missing or undecodable file is a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: image does not decode ({e})") from None


def _stack(items, transform):
    import torch

    return torch.stack([transform(open_image(p)) for p in items])


class ImageTextCsv:
    def __init__(self, csv_path, transform, img_key="filepath", caption_key="title", sep="\t",
                 preload=True, limit: int | None = None):
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: image–caption CSV not found")
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f, delimiter=sep)
            missing = {img_key, caption_key} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{csv_path}: missing column(s) {sorted(missing)}; "
                                f"found {reader.fieldnames}")
            rows = list(reader)
        if limit:
            rows = rows[:limit]
        if not rows:
            raise DataError(f"{csv_path}: no rows")
        self.paths = [csv_path.parent / r[img_key] for r in rows]
        self.captions = [r[caption_key] for r in rows]
        self.transform = transform
        self.images = _stack(self.paths, transform) if preload else None

    def __len__(self):
        return len(self.paths)

    def image(self, i):
        return self.images[i] if self.images is not None else self.transform(open_image(self.paths[i]))


class ClassFolder:
    def __init__(self, root, transform, classnames_file=None, preload=True,
                 limit_per_class: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: class-folder dataset not found")
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if not folders:
            raise DataError(f"{root}: no class folders")
        if classnames_file:
            names = [l.strip() for l in Path(classnames_file).read_text().splitlines() if l.strip()]
            if len(names) != len(folders):
                raise DataError(f"{classnames_file}: {len(names)} class names for "
                                f"{len(folders)} folders in {root}")
        else:
            names = [f.name.replace("_", " ") for f in folders]
        self.classnames, self.folders = names, [f.name for f in folders]
        self.paths, self.labels = [], []
        for k, d in enumerate(folders):
            files = sorted(p for p in d.iterdir() if p.suffix in IMAGE_EXT)
            files = files[:limit_per_class] if limit_per_class else files
            self.paths += files
            self.labels += [k] * len(files)
        self.transform = transform
        self.images = _stack(self.paths, transform) if preload else None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        """(image tensor, label): the preloaded tensor or the file decoded and transformed (a
        DataLoader over the class folders, e.g. ImageNet-1K val)."""
        img = self.images[i] if self.images is not None else self.transform(
            open_image(self.paths[i]))
        return img, self.labels[i]
