"""RankCLIP's rehearsal assets: CC3M as img2dataset writes it for CLIP training, and the RN50.

* ``cc3m/`` — webdataset shards in img2dataset's ``--output_format webdataset`` layout:
  ``00000.tar`` … each with ``<key>.jpg`` / ``<key>.txt`` / ``<key>.json`` members (keys
  ``<shard:05d><index:04d>``, the JSON with img2dataset's fields: url, caption, key, status,
  error_message, width, height, original_width, original_height, exif, sha256), and beside each
  shard img2dataset's ``<shard>_stats.json`` (count, successes, failed_to_download,
  failed_to_resize, duration, start_time, end_time, status_dict) and ``<shard>.parquet`` (the
  per-sample metadata table). `N_SHARDS` shards: 2 ranks × 2 DataLoader workers each get one
  (`mmablate.data.shards.ShardStream` needs one per rank and worker).
* the RN50: no file. The rehearsal overlay gives ``model.cfg`` = `RN50_MINI`, a random
  miniature of open_clip's RN50 (its ``ModifiedResNet`` image tower, a one-layer text
  transformer over open_clip's own 49,408-token BPE vocabulary, so ``tokenizer: open_clip`` is
  the paper's); RankCLIP trains from scratch, so there are no weights to ship.
  ``tests/test_rehearsal_assets_clip.py`` holds the overlay's block equal to `RN50_MINI`.

ImageNet-1K val (the evaluation) is `mmablate.rehearsal.imagenet`'s, shared with PC-CLIP.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

N_SHARDS = 4
PER_SHARD = 16
IMAGE_SIZE = 64

#: a random miniature of open_clip's RN50 (model_configs/RN50.json: layers [3, 4, 6, 3], width
#: 64, 224 px, text width 512 × 12 layers): the same classes, 1 block per stage, 64 px
RN50_MINI = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 8,
                   "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}

_SUBJECTS = ["a dog", "a small cat", "two people", "an old car", "a red bus", "a wooden table",
             "a bird", "a young woman", "a man", "a green field", "the city skyline", "a boat"]
_PLACES = ["on the beach", "in the park", "at night", "near a river", "on a street",
           "in the snow", "under a tree", "in a kitchen"]


def caption(i: int) -> str:
    """A CC3M-style (hypernymised) caption, deterministic in `i`."""
    return f"{_SUBJECTS[i % len(_SUBJECTS)]} {_PLACES[(i // len(_SUBJECTS)) % len(_PLACES)]}"


def jpeg(rng, size: int) -> bytes:
    """A small JPEG: a random colour field with a lighter square (not pure noise)."""
    import numpy as np
    from PIL import Image

    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = rng.integers(0, 200, 3, dtype=np.uint8)
    x, y, s = (int(v) for v in rng.integers(0, size // 2, 3))
    arr[y:y + s + 4, x:x + s + 4] = rng.integers(100, 256, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_shards(out_dir, n_shards: int = N_SHARDS, per_shard: int = PER_SHARD,
                 size: int = IMAGE_SIZE, seed: int = 0) -> dict:
    """img2dataset's webdataset output (see the module docstring) under `out_dir`."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = 0
    for s in range(n_shards):
        tar, stats = out / f"{s:05d}.tar", out / f"{s:05d}_stats.json"
        rows = []
        for j in range(per_shard):
            i = s * per_shard + j
            img, cap = jpeg(rng, size), caption(i)
            key = f"{s:05d}{j:04d}"
            rows.append({"url": f"https://cc3m.example/{i:07d}.jpg", "caption": cap, "key": key,
                         "status": "success", "error_message": None, "width": size,
                         "height": size, "original_width": 4 * size,
                         "original_height": 3 * size, "exif": "{}",
                         "sha256": hashlib.sha256(img).hexdigest(), "_img": img})
        n += per_shard
        if tar.is_file() and stats.is_file():
            continue  # idempotent (the draws above keep later shards identical)
        with wds.TarWriter(str(tar)) as w:
            for r in rows:
                meta = {k: v for k, v in r.items() if k != "_img"}
                w.write({"__key__": r["key"], "jpg": r["_img"], "txt": r["caption"],
                         "json": json.dumps(meta)})
        table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "_img"} for r in rows])
        pq.write_table(table, out / f"{s:05d}.parquet")
        stats.write_text(json.dumps({
            "count": per_shard, "successes": per_shard, "failed_to_download": 0,
            "failed_to_resize": 0, "duration": 1.0, "start_time": 0.0, "end_time": 1.0,
            "status_dict": {"success": per_shard}}, indent=4))
    return {"shards": n_shards, "samples": n}


def write_assets(out) -> dict:
    return {"cc3m": write_shards(Path(out) / "cc3m")}
