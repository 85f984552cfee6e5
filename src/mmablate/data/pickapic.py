"""Preference pairs in the Pick-a-Pic v2 schema (yuvalkirstain/pickapic_v2's parquet shards).

Columns used: ``caption``, ``jpg_0``, ``jpg_1`` (encoded image bytes), ``label_0``, ``label_1``
(1/0, 0/1 or 0.5/0.5 for a tie). `load_pairs` reads one parquet file or a directory of shards,
checks the columns, drops ties and puts the winner first (as Diffusion-DPO's training does), and
decodes the images lazily or eagerly into uint8 arrays; an image that does not decode is a
DataError naming the file, row and column.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")


def _files(path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(f"{path}: no .parquet files in this directory")
        return files
    if not path.is_file():
        raise DataError(f"{path}: preference parquet not found")
    return [path]


def read_table(path, required=REQUIRED, columns=None):
    """The parquet file(s) at `path` as one DataFrame, after checking the required columns."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames = []
    for f in _files(path):
        try:
            names = pq.read_schema(f).names
        except Exception as e:
            raise DataError(f"{f}: not a readable parquet file ({e})") from None
        missing = [c for c in required if c not in names]
        if missing:
            raise DataError(f"{f}: missing column(s) {missing} of the Pick-a-Pic schema; "
                            f"found {names}")
        cols = list(dict.fromkeys(list(required) + [c for c in (columns or []) if c in names]))
        frames.append(pq.read_table(f, columns=cols).to_pandas())
    return pd.concat(frames, ignore_index=True)


def decode(data, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, dict):  # datasets' Image feature stores {"bytes", "path"}
        data = data.get("bytes")
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DataError(f"{where}: no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{where}: image does not decode ({e})") from None


@dataclass
class Pairs:
    captions: list
    winners: list  # encoded bytes, or uint8 arrays once decoded
    losers: list
    source: str
    n_total: int  # rows before dropping ties
    n_ties: int

    def __len__(self):
        return len(self.captions)

    def subset(self, idx) -> "Pairs":
        idx = [int(i) for i in idx]
        return Pairs([self.captions[i] for i in idx], [self.winners[i] for i in idx],
                     [self.losers[i] for i in idx], self.source, self.n_total, self.n_ties)

    def images(self, which: str, size: int | None = None) -> np.ndarray:
        """Decoded images [N, H, W, 3] uint8 (resized to `size` if given)."""
        src = self.winners if which == "winner" else self.losers
        col = {"winner": "jpg of the winner", "loser": "jpg of the loser"}[which]
        out = []
        for k, b in enumerate(src):
            a = b if isinstance(b, np.ndarray) else decode(b, f"{self.source}: pair {k} ({col})")
            if size is not None and a.shape[0] != size:
                from PIL import Image

                a = np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC))
            out.append(a)
        return np.stack(out) if out else np.zeros((0, size or 1, size or 1, 3), np.uint8)


def winner_first(df, path, col: str):
    """(rows kept, winners, losers) of the `<col>_0/<col>_1` columns: ties dropped, winner first.

    Every per-pair column (images, the world's ground truth) is ordered by this one rule, so
    indices into the loaded pairs address the same pair in each of them."""
    l0, l1 = df["label_0"].to_numpy(float), df["label_1"].to_numpy(float)
    bad = np.where(~np.isfinite(l0) | ~np.isfinite(l1))[0]
    if len(bad):
        raise DataError(f"{path}: row {int(bad[0])}: label_0/label_1 not numbers")
    keep = np.where(l0 != l1)[0]
    first = l0[keep] > l1[keep]
    c0, c1 = df[f"{col}_0"].to_numpy()[keep], df[f"{col}_1"].to_numpy()[keep]
    return (keep, [a if f else b for a, b, f in zip(c0, c1, first)],
            [b if f else a for a, b, f in zip(c0, c1, first)])


def load_pairs(path, limit: int | None = None) -> Pairs:
    """Pairs with ties dropped and the winner first."""
    df = read_table(path)
    if limit:
        df = df.iloc[:limit]
    keep, winners, losers = winner_first(df, path, "jpg")
    return Pairs(df["caption"].astype(str).to_numpy()[keep].tolist(), winners, losers,
                 str(path), len(df), len(df) - len(keep))
