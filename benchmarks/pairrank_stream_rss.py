"""Peak RSS of pair ranking's scoring stage on Pick-a-Pic-schema stand-ins, streamed vs the
whole-table reader it replaced.

    python benchmarks/pairrank_stream_rss.py --pairs 20000 --mode stream
    python benchmarks/pairrank_stream_rss.py --pairs 200000 --mode table

Writes the stand-in shards once under --dir (parquet in Pick-a-Pic v2's schema with real JPEG
bytes, 16 px, shards of 10,000 rows, row groups of 100 rows as the hub's; ~10% ties) and a
reward twin with an untrained world CLIP (the tiny scale's architecture); then scores every pair
once, in this process, and prints one JSON line with the peak RSS (``resource.getrusage``, MB;
of this process, and of its largest DataLoader worker) and the wall time. ``--scorer mean``
(default) scores each image by its mean pixel value, so the data path alone is measured and
timed; ``--scorer twin`` runs the CLIP twin (its memory is constant in the data size).
``--mode stream`` is the scoring stage (`rewards.score_pairs`: row-group units decoded in
DataLoader workers, one score file per shard); ``--mode table`` is the previous code path
(every shard in one frame, every image decoded and stacked, then scored).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def standins(d: Path, n: int) -> Path:
    from mmablate.data.pickapic import write_standin

    pairs = d / f"pairs_{n}"
    if not (pairs / "done").is_file():
        write_standin(pairs, n_pairs=n, n_shards=max(1, n // 10_000), size=16, seed=n,
                      row_group_size=100)
        (pairs / "done").write_text("ok")
    return pairs


def twin(d: Path) -> Path:
    import torch
    import yaml

    from mmablate.models import clip as clipm

    p = d / "twin.pt"
    if not p.is_file():
        cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
        mcfg = cfg["studies"]["rankclip"]["model"]
        torch.manual_seed(0)
        model, _, _ = clipm.build(mcfg)
        torch.save(model.state_dict(), d / "clip.pt")
        torch.save({"kind": "hpsv2", "clip_cfg": {"model": mcfg, "weights": str(d / "clip.pt")},
                    "clip": model.state_dict()}, p)
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, required=True)
    ap.add_argument("--mode", choices=["stream", "table"], default="stream")
    ap.add_argument("--dir", default="/tmp/mmablate-pairrank-bench")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prepare", action="store_true", help="only write the stand-ins")
    ap.add_argument("--scorer", choices=["mean", "twin"], default="mean",
                    help="mean: each image's mean pixel value + the prompt's length (the data "
                         "path alone); twin: the untrained world-CLIP reward twin")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    if a.prepare:
        standins(d, a.pairs), twin(d)
        return
    if not (d / f"pairs_{a.pairs}" / "done").is_file() or not (d / "twin.pt").is_file():
        import subprocess  # written by another process: its memory is not this one's peak

        subprocess.run([sys.executable, __file__, "--prepare", "--pairs", str(a.pairs),
                        "--dir", str(d)], check=True)
    pairs, tw = standins(d, a.pairs), twin(d)
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    from mmablate.studies.pairrank import rewards
    from mmablate.studies.pairrank.rewards import Scorer, load_scorer, score_pairs

    if a.scorer == "mean":
        def mean_fn(images, prompts):
            return np.asarray(images, np.float32).mean(axis=(1, 2, 3)) + np.array([len(p) for p in prompts])

        rewards.load_scorer = load_scorer = lambda r, device="cpu": Scorer("hpsv2", mean_fn, "mean")

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    reward = {"source": "twin", "path": str(tw)}
    if a.mode == "stream":
        out = d / f"scores_{a.pairs}_stream" / "scores.npz"
        if out.parent.exists():
            import shutil

            shutil.rmtree(out.parent)  # a fresh run, not a resume
        s = score_pairs({"pairs": str(pairs), "reward": reward, "num_workers": a.workers},
                        out, progress=False)
        n = s["n_pairs"]
    else:
        from mmablate.data.pickapic import load_pairs

        p = load_pairs(pairs)
        sc = load_scorer(reward)
        w = sc(p.images("winner"), p.captions)
        l = sc(p.images("loser"), p.captions)
        n = len(w)
        np.savez(d / f"scores_{a.pairs}_table.npz", winner=w, loser=l)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"mode": a.mode, "scorer": a.scorer, "pairs_in": a.pairs, "pairs_scored": n,
                      "peak_rss_mb": round(rss, 1), "rss_before_scoring_mb": round(rss0, 1),
                      "peak_rss_worker_mb": round(kids, 1), "wall_s": round(time.time() - t0, 1),
                      "workers": a.workers if a.mode == "stream" else 0}))


if __name__ == "__main__":
    main()
