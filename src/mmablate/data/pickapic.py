"""Preference pairs in the Pick-a-Pic v2 schema (yuvalkirstain/pickapic_v2's parquet shards).

Columns used: ``caption``, ``jpg_0``, ``jpg_1`` (encoded image bytes), ``label_0``, ``label_1``
(1/0, 0/1 or 0.5/0.5 for a tie). `load_pairs` reads one parquet file or a directory of shards,
checks the columns, drops ties and puts the winner first (as Diffusion-DPO's training does), and
decodes the images lazily or eagerly into uint8 arrays; an image that does not decode is a
DataError naming the file, row and column. That whole-table reader serves the world's small
files; the paper scale streams (`stream_pairs`: row-group units decoded in DataLoader workers,
the same pairs in the same order).
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


# ---- streaming (paper scale): shards → row-group units → DataLoader workers ------------------
# `load_pairs` / `read_table` above hold a whole table (the world's small files). Pick-a-Pic v2
# (≈ 959k rows with both JPEGs inline, hundreds of GB) is read unit by unit instead: a unit is
# (a slice of) one parquet row group, read with `pyarrow.dataset` for only the columns needed
# and decoded in a DataLoader worker; the main process sees one unit of decoded pairs at a time.
PAIR_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")


def shard_files(path) -> list[Path]:
    """The parquet shards at `path` (a file or a directory of ``*.parquet``), sorted by name —
    the order of `load_pairs`, so global pair indices mean the same in both."""
    return _files(path)


def check_shard(f, required=PAIR_COLUMNS) -> "object":
    """The shard's parquet metadata after checking its columns (reads the footer only)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as e:
        raise DataError(f"{f}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{f}: missing column(s) {missing} of the Pick-a-Pic schema; found {names}")
    return pf.metadata


def kept_rows(f, labels=None) -> np.ndarray:
    """Row numbers (within shard `f`) of its non-tied pairs, in file order: only the two label
    columns are read. Their positions, shard after shard, are the global pair indices."""
    import pyarrow.parquet as pq

    if labels is None:
        t = pq.read_table(f, columns=["label_0", "label_1"])
        labels = (t.column("label_0").to_numpy(zero_copy_only=False).astype(float),
                  t.column("label_1").to_numpy(zero_copy_only=False).astype(float))
    l0, l1 = labels
    bad = np.where(~np.isfinite(l0) | ~np.isfinite(l1))[0]
    if len(bad):
        raise DataError(f"{f}: row {int(bad[0])}: label_0/label_1 not numbers")
    return np.where(l0 != l1)[0]


def units(f, max_rows: int = 1024) -> list[tuple[int, int, int]]:
    """Work units of shard `f`: (row group, first row in the group, stop row in the group), at
    most `max_rows` rows each (a large row group is read once per unit it spans)."""
    md = check_shard(f)
    out = []
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        out += [(g, a, min(n, a + max_rows)) for a in range(0, n, max_rows)]
    return out


def _prepare(a: np.ndarray, size: int | None, resample: str) -> np.ndarray:
    """Shortest side resized to `size` then a centre crop (torchvision's Resize + CenterCrop, as
    the reward models' and Diffusion-DPO's transforms); None keeps the image as decoded."""
    if size is None or (a.shape[0] == size and a.shape[1] == size):
        return a
    from PIL import Image

    im = Image.fromarray(a)
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[resample])
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def _stack(arrs, where):
    if not arrs:
        return None
    shapes = {a.shape for a in arrs}
    if len(shapes) > 1:
        raise DataError(f"{where}: images of different sizes {sorted(shapes)[:3]}; give an image "
                        f"size to resize them to")
    return np.stack(arrs)


class PairUnits:
    """Map-style dataset: item k is unit k of the given shards, decoded (ties dropped, winner
    first). A DataLoader with ``batch_size=None`` and workers decodes units in parallel and
    delivers them in order. Each item: ``{"shard": i, "rows": row numbers within the shard,
    "caption": [...], "winner": uint8 [n, S, S, 3], "loser": ...}``.

    ``rows``: optional {shard index: sorted row numbers} — only those rows are decoded (units
    holding none are not listed). ``size``/``resample``: the transform applied in the worker."""

    def __init__(self, files, size: int | None = None, resample: str = "bicubic",
                 max_rows: int = 1024, rows: dict | None = None):
        self.files = [str(f) for f in files]
        self.size, self.resample, self.rows = size, resample, rows
        self.items = []
        for i, f in enumerate(self.files):
            md = check_shard(f)
            starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
            for g, a, b in units(f, max_rows):
                lo, hi = int(starts[g]) + a, int(starts[g]) + b
                if rows is not None:
                    r = rows.get(i)
                    if r is None or not np.any((r >= lo) & (r < hi)):
                        continue
                self.items.append((i, g, a, b, lo))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        import pyarrow.dataset as ds

        i, g, a, b, lo = self.items[k]
        f = self.files[i]
        try:
            frag = next(iter(ds.dataset(f, format="parquet").get_fragments()))
            rg = frag.split_by_row_group()[g]
            t = rg.to_table(columns=list(PAIR_COLUMNS)).slice(a, b - a)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowIOError: corrupt pages
            raise DataError(f"{f}: row group {g} (rows {lo}–{lo + b - a - 1}) does not read "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
        l0 = t.column("label_0").to_numpy(zero_copy_only=False).astype(float)
        l1 = t.column("label_1").to_numpy(zero_copy_only=False).astype(float)
        keep = kept_rows(f, (l0, l1))
        rows = lo + keep
        if self.rows is not None:
            sel = np.isin(rows, self.rows[i])
            keep, rows = keep[sel], rows[sel]
        caps = t.column("caption").to_pylist()
        j0, j1 = t.column("jpg_0"), t.column("jpg_1")
        out = {"shard": i, "rows": rows, "caption": [], "winner": [], "loser": []}
        for k_, r in zip(keep.tolist(), rows.tolist()):
            first = l0[k_] > l1[k_]
            b0, b1 = j0[k_].as_py(), j1[k_].as_py()
            w, lo_ = (b0, b1) if first else (b1, b0)
            wc, lc = ("jpg_0", "jpg_1") if first else ("jpg_1", "jpg_0")
            out["caption"].append(str(caps[k_]))
            out["winner"].append(_prepare(decode(w, f"{f}: row {r} ({wc})"), self.size, self.resample))
            out["loser"].append(_prepare(decode(lo_, f"{f}: row {r} ({lc})"), self.size, self.resample))
        out["winner"] = _stack(out["winner"], f)
        out["loser"] = _stack(out["loser"], f)
        return out


def _as_is(x):
    return x


def unit_loader(dataset: PairUnits, num_workers: int = 0):
    """The units of `dataset` in order, decoded in `num_workers` DataLoader workers."""
    import torch
    from torch.utils.data import DataLoader

    # its own generator: starting the iterator draws a base seed from it, not from torch's
    # global RNG (which the caller's model initialisation uses after streaming)
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                      collate_fn=_as_is, generator=torch.Generator().manual_seed(0),
                      **({"prefetch_factor": 2} if num_workers else {}))


def stream_pairs(path, size: int | None = None, resample: str = "bicubic", num_workers: int = 0,
                 max_rows: int = 1024, shards=None, rows: dict | None = None):
    """Yields the decoded units of the shards at `path` (all, or the indices in `shards`) in
    file order; see `PairUnits`. Concatenating every unit's pairs gives `load_pairs(path)`'s
    pairs in its order."""
    files = shard_files(path)
    pick = range(len(files)) if shards is None else shards
    sub = [files[i] for i in pick]
    remap = {k: i for k, i in enumerate(pick)}
    r = None if rows is None else {k: rows[i] for k, i in remap.items() if i in rows}
    for item in unit_loader(PairUnits(sub, size, resample, max_rows, r), num_workers):
        item["shard"] = remap[item["shard"]]
        yield item


def write_standin(out_dir, n_pairs: int, n_shards: int = 3, size: int = 16, seed: int = 0,
                  tie_prob: float = 0.1, row_group_size: int = 100, sizes=None) -> list[Path]:
    """Parquet shards in Pick-a-Pic v2's schema with real JPEG bytes (tests and benchmarks):
    random-colour images of `size` px (or, per pair, a size drawn from `sizes`), captions, labels
    1/0, 0/1 or 0.5/0.5 (ties), row groups of `row_group_size` rows (as the hub's shards)."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    words = ["red", "green", "blue", "cat", "dog", "house", "tree", "car", "boat", "sky"]

    def jpg(s):
        base = rng.integers(0, 256, 3)
        a = np.clip(base + rng.normal(0, 20, (s[0], s[1], 3)), 0, 255).astype(np.uint8)
        b = io.BytesIO()
        Image.fromarray(a).save(b, "JPEG", quality=90)
        return b.getvalue()

    files = []
    bounds = np.linspace(0, n_pairs, n_shards + 1).round().astype(int)
    for k in range(n_shards):
        n = int(bounds[k + 1] - bounds[k])
        shape = [(size, size) if sizes is None else tuple(sizes[rng.integers(len(sizes))])
                 for _ in range(n)]
        win0 = rng.random(n) < 0.5
        tie = rng.random(n) < tie_prob
        l0 = np.where(tie, 0.5, win0.astype(float))
        df = pd.DataFrame({
            "caption": [" ".join(rng.choice(words, 4)) for _ in range(n)],
            "jpg_0": [jpg(s) for s in shape], "jpg_1": [jpg(s) for s in shape],
            "label_0": l0, "label_1": 1 - l0,
            "ranking_id": np.arange(bounds[k], bounds[k + 1])})
        f = out_dir / f"train-{k:05d}-of-{n_shards:05d}.parquet"
        df.to_parquet(f, index=False, row_group_size=row_group_size)
        files.append(f)
    return files
