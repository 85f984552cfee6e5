"""Peak memory of streamed RankCLIP training against the size of the shard set.

Makes world shard sets in img2dataset's layout (`mmablate.data.shards.ShardWriter`, 1,000
samples a shard, PNG at --image-size px; --pool distinct world scenes rendered once and written
cyclically under distinct keys, so making 200k samples takes seconds, not a render of each),
then runs a --steps-step `python -m mmablate rankclip-train` on each with the paper-scale data
path (streamed, open_clip's training transform, --workers DataLoader workers) and prints, per
set: the peak RSS of the training process (getrusage of the child, as `/usr/bin/time -v`'s
"Maximum resident set size") and the peak of the summed RSS of the process tree (main process
+ DataLoader workers, sampled every 0.2 s from /proc; pages shared after fork are counted once
per process, so this overstates the real footprint).

    python benchmarks/shard_memory.py --sizes 20000 200000 --out /tmp/shard_mem
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))


def make_shards(out: Path, n: int, image_size: int, pool: int, seed: int = 0) -> float:
    import numpy as np

    from mmablate.data.shards import ShardWriter
    from mmablate.world.scenes import WorldSampler, caption, render

    if (out / "_done").is_file():
        return 0.0
    t = time.time()
    rng = np.random.default_rng(seed)
    sampler = WorldSampler()
    items = []
    for _ in range(pool):
        s = sampler.scene(rng)
        buf = io.BytesIO()
        render(s, image_size, rng).save(buf, format="PNG", compress_level=1)
        items.append((buf.getvalue(), caption(s)))
    with ShardWriter(out, maxcount=1000, ext="png") as w:
        for i in range(n):
            img, cap = items[i % pool]
            w.write(img, cap, {"index": i})
    (out / "_done").write_text(str(n))
    return time.time() - t


def tree_rss_kb(pid: int) -> int:
    """Summed VmRSS (kB) of `pid` and its descendants."""
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total


def run_training(shards: Path, out: Path, steps: int, workers: int, image_size: int) -> dict:
    import yaml

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())["studies"]["rankclip"]
    model = json.loads(json.dumps(cfg["model"]))
    model["cfg"]["vision_cfg"]["image_size"] = image_size
    stage = {"model": model, "loss": cfg["loss"],
             "data": {"root": str(shards), "train_shards": ".", "cache": False,
                      "train_transform": "open_clip_train", "shuffle_buffer": 1000},
             "train": dict(cfg["train"], steps=steps, warmup=5, num_workers=workers,
                           ckpt_every=10 * steps, log_every=10)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage.json").write_text(json.dumps(stage, sort_keys=True))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "mmablate", "rankclip-train", "--config", str(out / "stage.json"),
           "--seed", "0", "--out", str(out / "model.pt"), "--threads", "1"]
    t = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=open(out / "log", "w"))
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_rss_kb(proc.pid))
        time.sleep(0.2)
    wall = time.time() - t
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"training failed ({status}); see {out / 'log'}")
    child_peak = usage.ru_maxrss  # kB: this child (its largest process)
    summary = json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
    return {"wall_s": round(wall, 1), "peak_tree_rss_mb": round(peak / 1024),
            "max_process_rss_mb": round(child_peak / 1024), "steps": summary["steps"],
            "num_samples": summary["num_samples"], "shards": summary["shards"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--pool", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="/tmp/mmablate_shard_memory")
    a = ap.parse_args()
    rows = []
    for n in a.sizes:
        d = Path(a.out) / f"shards_{n}"
        made = make_shards(d, n, a.image_size, a.pool)
        size_mb = sum(p.stat().st_size for p in d.glob("*.tar")) / 2**20
        r = run_training(d, Path(a.out) / f"run_{n}", a.steps, a.workers, a.image_size)
        r.update(samples=n, shard_mb=round(size_mb), make_s=round(made, 1))
        rows.append(r)
        print(json.dumps(r), flush=True)
    print("\n| samples | shards | shard set MB | steps | peak RSS, training process MB | "
          "peak RSS, process tree MB | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['samples']:,} | {r['shards']} | {r['shard_mb']:,} | {r['steps']} | "
              f"{r['max_process_rss_mb']:,} | {r['peak_tree_rss_mb']:,} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
