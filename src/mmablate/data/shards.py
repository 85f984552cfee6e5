"""Image–caption pairs as webdataset tar shards in img2dataset's layout (CC3M as it is
distributed for CLIP training; the format open_clip_train reads with ``--dataset-type
webdataset``), read with the `webdataset` package.

Layout: ``00000.tar``, ``00001.tar``, … each holding ``<key>.jpg`` (or ``.png``/``.webp``),
``<key>.txt`` (the caption) and ``<key>.json`` (metadata), and beside each shard img2dataset's
``<shard>_stats.json`` (``{"count", "successes", ...}``: ``successes`` = samples in the tar).
The shard list is a folder (every ``*.tar`` in it, sorted), a brace pattern
(``/data/cc3m/{00000..00331}.tar``) or a list of paths. The sample count comes from the config,
else the ``_stats.json`` files, else open_clip_train's ``sizes.json`` (``{shard name: n}``).

Two readers over the same decoding (`decode_pair`: image → the model's transform, caption →
tokens; a sample that does not decode is skipped and counted, the count and the first
shard/key printed):

* `ShardStream` — an ``IterableDataset`` for the paper scale: infinite over epochs; epoch ``e``
  shuffles the shard list with the seed and ``e`` (the same on every rank), splits it by rank
  (``wds.split_by_node``) and by DataLoader worker (``split_by_worker``'s slicing, rotated after
  a resume so the batches keep their round-robin order), reads its shards'
  samples through a shuffle buffer (``shuffle_buffer`` samples, seeded by seed, epoch, rank and
  worker, emptied at the epoch's end so every epoch is a permutation of the worker's samples) and
  decodes them in the worker. Nothing but the buffer is held in memory. Resuming at step ``s``
  (`start_at`): each worker skips, before decoding, the samples it had yielded — whole epochs by
  the shard counts, the rest by reading tar headers and bytes without decoding — so a resumed run
  continues the data order exactly (as long as no corrupt sample precedes the resume point: a
  skipped corrupt sample shifts the count by one).
* `read_all` — the whole set decoded once into tensors (``data.cache: true``, the tiny world's
  8,000 32-px pairs), served map-style by the harness's seeded epoch order. With a
  ``cache_dir`` the decoded tensors are also kept on disk (``.npy``, keyed by the shards' paths,
  sizes and mtimes, the transform and the caller's model key) and the next job with the same key
  loads them instead of decoding again (the tiny default's 28 RankCLIP trainings decode the same
  8,000 pairs; a file lock makes concurrent jobs decode once).

Random augmentation (open_clip's training transform) draws from torch's RNG: inside DataLoader
workers each worker's generator is seeded by the harness's DataLoader generator (deterministic
per run); the crop is not part of the resumed state.
"""
from __future__ import annotations

import io
import json
import os
import random
import sys
from pathlib import Path

from torch.utils.data import IterableDataset  # webdataset imports torch anyway

from ..errors import ConfigError, DataError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


# -- shard lists and counts -------------------------------------------------------------------
def expand_shards(spec, root=None, where: str = "data.train_shards") -> list[str]:
    """The shard paths of a folder, a brace pattern or a list (relative to `root` if given)."""
    import braceexpand

    def rel(p):
        p = Path(p)
        return p if root is None or p.is_absolute() else Path(root) / p

    if isinstance(spec, (list, tuple)):
        paths = [rel(p) for p in spec]
    elif rel(spec).is_dir():
        paths = sorted(rel(spec).glob("*.tar"))
        if not paths:
            raise DataError(f"{where}: {rel(spec)} holds no .tar shards")
    else:
        paths = [rel(p) for p in braceexpand.braceexpand(str(spec))]
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"{where}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
    if not paths:
        raise DataError(f"{where}: {spec!r} names no shards")
    return [str(p) for p in paths]


def shard_counts(shards) -> list[int] | None:
    """Samples per shard from img2dataset's ``<shard>_stats.json`` (``successes``) or
    open_clip_train's ``sizes.json``; None when neither covers every shard."""
    counts = []
    for s in shards:
        p = Path(s)
        st = p.with_name(p.stem + "_stats.json")
        if st.is_file():
            try:
                counts.append(int(json.loads(st.read_text())["successes"]))
                continue
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{st}: no integer 'successes' ({e})") from None
        sizes = p.parent / "sizes.json"
        if sizes.is_file():
            try:
                counts.append(int(json.loads(sizes.read_text())[p.name]))
                continue
            except (ValueError, KeyError, TypeError):
                pass
        return None
    return counts


def num_samples(shards, configured: int | None = None, where: str = "data.num_samples") -> int:
    """The configured count, else the sum of the shards' counts; a DataError when unknown."""
    if configured:
        return int(configured)
    counts = shard_counts(shards)
    if counts is None:
        raise DataError(f"{where}: the sample count of {len(shards)} shard(s) (e.g. {shards[0]}) "
                        f"is unknown: no <shard>_stats.json or sizes.json beside them; set "
                        f"{where}")
    return sum(counts)


# -- writing (the world, the tests' stand-ins) --------------------------------------------------
class ShardWriter:
    """Writes image–caption samples in img2dataset's layout: ``{shard:05d}.tar`` of
    ``maxcount`` samples with ``<key>.<ext>``/``.txt``/``.json`` members (keys
    ``{shard:05d}{index:04d}`` as img2dataset numbers them) and ``{shard:05d}_stats.json``."""

    def __init__(self, out_dir, maxcount: int = 1000, ext: str = "png"):
        self.out, self.maxcount, self.ext = Path(out_dir), maxcount, ext
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard, self.n_in_shard, self.tar, self.total = -1, 0, None, 0

    def _next_shard(self):
        import webdataset as wds

        self._close_shard()
        self.shard += 1
        self.n_in_shard = 0
        self.tar = wds.TarWriter(str(self.out / f"{self.shard:05d}.tar"))

    def _close_shard(self):
        if self.tar is not None:
            self.tar.close()
            stats = {"count": self.n_in_shard, "successes": self.n_in_shard,
                     "failed_to_download": 0, "failed_to_resize": 0}
            (self.out / f"{self.shard:05d}_stats.json").write_text(json.dumps(stats, indent=4))
            self.tar = None

    def write(self, image_bytes: bytes, caption: str, meta: dict | None = None) -> str:
        if self.tar is None or self.n_in_shard >= self.maxcount:
            self._next_shard()
        key = f"{self.shard:05d}{self.n_in_shard:04d}"
        self.tar.write({"__key__": key, self.ext: image_bytes, "txt": caption,
                        "json": json.dumps(dict(meta or {}, key=key, caption=caption))})
        self.n_in_shard += 1
        self.total += 1
        return key

    def close(self):
        self._close_shard()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# -- decoding -----------------------------------------------------------------------------------
class SkipCounter:
    """Counts samples that do not decode; prints the first (shard and key) and then the count at
    1, 10, 100, … (per process: each DataLoader worker counts its own)."""

    def __init__(self, what: str = "sample"):
        self.n, self.first, self.what = 0, None, what

    def __call__(self, where: str, err) -> None:
        self.n += 1
        if self.first is None:
            self.first = where
            print(f"skipped a corrupt {self.what}: {where} ({err})", file=sys.stderr)
        if self.n > 1 and str(self.n).strip("0") == "1":
            print(f"skipped {self.n} corrupt {self.what}s so far (first: {self.first})",
                  file=sys.stderr)

    def summary(self) -> str:
        return f"{self.n} corrupt {self.what}(s) skipped" + (
            f" (first: {self.first})" if self.first else "")


def decode_pair(sample: dict, transform, tokenize):
    """(image tensor, token ids) of one raw webdataset sample; raises on a missing or undecodable
    member (the caller counts and skips)."""
    from PIL import Image

    ext = next((k for k in IMAGE_KEYS if k in sample), None)
    if ext is None:
        raise DataError(f"no image member ({'/'.join(IMAGE_KEYS)}); has {sorted(sample)}")
    if "txt" not in sample:
        raise DataError(f"no caption member (.txt); has {sorted(sample)}")
    with Image.open(io.BytesIO(sample[ext])) as im:
        image = im.convert("RGB")
    caption = sample["txt"].decode("utf-8") if isinstance(sample["txt"], bytes) else sample["txt"]
    return transform(image), tokenize([caption])[0]


def _where(sample) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def _raw_samples(shards, counter: SkipCounter):
    """Raw samples (dicts of bytes) of the shards in order; an unreadable tar or member is
    counted and the rest of that shard skipped (webdataset's handler)."""
    import webdataset as wds

    def handler(exn):
        counter(" ".join(str(a) for a in exn.args[-1:]) or "?", exn)
        return True  # continue with the next shard

    src = [{"url": s} for s in shards]
    yield from wds.tarfile_samples(src, handler=handler)


def read_all(shards, transform, tokenize, progress: bool = True, cache_dir=None, key=None):
    """The whole shard set decoded once: (images [N,3,H,W], tokens [N,L], skipped count).
    For small sets (the tiny world); the paper scale streams (`ShardStream`).

    ``cache_dir``: keep the decoded tensors there and reuse them (see the module docstring);
    ``key``: what else determines the result (the model config behind `transform` and
    `tokenize`), JSON-serialisable. A cache that cannot be written (a read-only data folder) is
    skipped with a note; a cache file that does not load is decoded again."""
    if cache_dir is None:
        return _decode_all(shards, transform, tokenize, progress)
    import fcntl

    from ..util import canonical, config_hash

    stats = [os.stat(s) for s in shards]
    # as the entry's JSON will read back (lists, not tuples), to compare it with that
    ident = json.loads(canonical({
        "version": 1, "transform": repr(transform), "key": key,
        "shards": [[os.path.abspath(s), st.st_size, st.st_mtime_ns]
                   for s, st in zip(shards, stats)]}))
    base = Path(cache_dir) / config_hash(ident, 20)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        lock = open(base.with_suffix(".lock"), "w")
    except OSError as e:
        print(f"decoded-set cache {cache_dir} not writable ({e}); decoding in memory",
              file=sys.stderr)
        return _decode_all(shards, transform, tokenize, progress)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent job decoding the same set: wait for it
        hit = _load_decoded(base, ident)
        if hit is not None:
            print(f"decoded set loaded from {base}.*.npy ({len(hit[0])} samples)",
                  file=sys.stderr)
            return hit
        images, tokens, skipped = _decode_all(shards, transform, tokenize, progress)
        try:
            import numpy as np

            from ..util import write_atomic, write_json

            for name, t in (("images", images), ("tokens", tokens)):
                with write_atomic(f"{base}.{name}.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, t.numpy())
            # written last: its presence marks a complete entry
            write_json(f"{base}.json", dict(ident, skipped=skipped, n=len(images)))
        except OSError as e:
            print(f"decoded-set cache {base}: not written ({e})", file=sys.stderr)
        return images, tokens, skipped


def _load_decoded(base: Path, ident: dict):
    """(images, tokens, skipped) of a complete cache entry with this identity, else None."""
    import numpy as np
    import torch

    try:
        meta = json.loads(Path(f"{base}.json").read_text())
        if {k: meta.get(k) for k in ident} != ident:
            return None
        images = torch.from_numpy(np.load(f"{base}.images.npy"))
        tokens = torch.from_numpy(np.load(f"{base}.tokens.npy"))
    except (OSError, ValueError, KeyError):
        return None
    if len(images) != meta["n"] or len(tokens) != meta["n"]:
        return None
    return images, tokens, int(meta["skipped"])


def _decode_all(shards, transform, tokenize, progress: bool):
    import torch
    from tqdm import tqdm

    counter = SkipCounter()
    images, tokens = [], []
    for sample in tqdm(_raw_samples(shards, counter), desc="read shards", disable=not progress,
                       mininterval=5, file=sys.stderr):
        try:
            im, tok = decode_pair(sample, transform, tokenize)
        except Exception as e:  # noqa: BLE001 — any undecodable sample is skipped and counted
            counter(_where(sample), e)
            continue
        images.append(im)
        tokens.append(tok)
    if not images:
        raise DataError(f"{shards[0]}…: no decodable samples in {len(shards)} shard(s) "
                        f"({counter.summary()})")
    if counter.n:
        print(counter.summary(), file=sys.stderr)
    return torch.stack(images), torch.stack(tokens), counter.n


class ShardStream(IterableDataset):
    """The streaming ``IterableDataset`` (see the module docstring). Items: (image, tokens).

    ``counts``: samples per shard (from the stats files) to skip whole epochs when resuming;
    without them a resume reads the skipped samples' bytes (no decoding)."""

    def __init__(self, shards, transform, tokenize, *, seed: int, shuffle_buffer: int = 1000,
                 counts: list[int] | None = None, where: str = "data.train_shards"):
        self.shards, self.transform, self.tokenize = list(shards), transform, tokenize
        self.seed, self.buffer, self.counts = seed, max(1, int(shuffle_buffer)), counts
        self.where = where
        self.skip_batches, self.micro_batch = 0, 1
        self.skipped = SkipCounter()

    # the harness's resume hook: `batches` micro-batches of `micro_batch` already consumed by
    # this rank, fetched round-robin from `num_workers` workers (DataLoader's in-order fetching)
    def start_at(self, batches: int, micro_batch: int, num_workers: int, world_size: int):
        workers = max(1, num_workers)
        if len(self.shards) < world_size * workers:
            raise ConfigError(f"{self.where}: {len(self.shards)} shard(s) cannot feed "
                              f"{world_size} rank(s) × {workers} DataLoader worker(s) (each "
                              f"needs at least one shard): fewer workers or more shards")
        self.skip_batches, self.micro_batch, self.workers = batches, micro_batch, workers

    def _worker(self) -> tuple[int, int, int, int]:
        """(rank, world size, logical worker, workers). The DataLoader fetches batches
        round-robin from worker 0 on; after `start_at(b)` the next batch of the uninterrupted
        order is logical worker b mod n's, so physical worker w plays logical worker
        (w + b) mod n (webdataset's ``split_by_worker`` with that rotation)."""
        import webdataset as wds

        rank, world, worker, nw = wds.utils.pytorch_worker_info()
        nw = max(1, nw)
        return rank, world, (worker + self.skip_batches) % nw, nw

    def _my_shards(self, epoch: int) -> list[int]:
        import itertools

        import webdataset as wds

        idx = list(range(len(self.shards)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(idx)
        _, _, worker, nw = self._worker()
        return list(itertools.islice(wds.split_by_node(idx), worker, None, nw))

    def epoch_samples(self, epoch: int, counter: SkipCounter | None = None):
        """This (rank, worker)'s raw samples of `epoch`, shuffled through the buffer."""
        import webdataset as wds

        rank, world, worker, nw = self._worker()
        mine = self._my_shards(epoch)
        rng = random.Random(hash((self.seed, epoch, rank, worker)) & 0xFFFFFFFF)
        buf = []
        for s in _raw_samples([self.shards[i] for i in mine], counter or self.skipped):
            buf.append(s)
            if len(buf) >= self.buffer:
                k = rng.randrange(len(buf))
                buf[k], buf[-1] = buf[-1], buf[k]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def _skip_count(self) -> int:
        _, _, worker, nw = self._worker()
        b = self.skip_batches
        mine = b // nw + (1 if worker < b % nw else 0)  # batches w, w+nw, w+2nw, … < b
        return mine * self.micro_batch

    def __iter__(self):
        import itertools

        import webdataset as wds

        _, world, _, nw = wds.utils.pytorch_worker_info()
        if len(self.shards) < world * max(1, nw):
            raise ConfigError(f"{self.where}: {len(self.shards)} shard(s) cannot feed {world} "
                              f"rank(s) × {nw} worker(s)")
        skip = self._skip_count()
        for epoch in itertools.count():
            if skip and self.counts is not None:
                n = sum(self.counts[i] for i in self._my_shards(epoch))
                if skip >= n:  # the whole epoch was consumed before the resume point
                    skip -= n
                    continue
            got, passed, before = 0, 0, self.skipped.n
            for sample in self.epoch_samples(epoch):
                if skip:
                    skip -= 1
                    passed += 1
                    continue
                try:
                    item = decode_pair(sample, self.transform, self.tokenize)
                except Exception as e:  # noqa: BLE001 — skipped and counted
                    self.skipped(_where(sample), e)
                    continue
                got += 1
                yield item
            if got == 0 and passed == 0:
                raise DataError(f"{self.where}: epoch {epoch} gave this worker no decodable "
                                f"sample ({self.skipped.n - before} corrupt skipped; first: "
                                f"{self.skipped.first})")
