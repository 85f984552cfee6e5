"""Peak RSS of PC-CLIP's image embedding: streamed through a DataLoader (`encode_files`, today)
versus every preprocessed image stacked first (the code before). A small CLIP at 224 px (the
paper's input size, so each preprocessed image is 3×224×224 float32 = 0.6 MB), N JPEG
stand-ins written once under --dir.

    python benchmarks/pcclip_embed_mem.py --n 2000 --mode stream
    python benchmarks/pcclip_embed_mem.py --n 2000 --mode stacked
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--mode", choices=["stream", "stacked"], required=True)
    p.add_argument("--dir", default="/tmp/pcclip_embed_mem")
    p.add_argument("--workers", type=int, default=0)
    a = p.parse_args()
    import numpy as np
    import torch
    from PIL import Image

    from mmablate.models.clip import build
    from mmablate.studies.pcclip.finetune import encode_files

    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(a.n):
        f = d / f"{i:06d}.jpg"
        if not f.exists():
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(f)
        paths.append(str(f))
    torch.set_num_threads(1)
    model, preprocess, _ = build({"arch": "mem-bench-clip", "tokenizer": "world", "cfg": {
        "embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 1, "width": 32,
                                        "patch_size": 32, "head_width": 16},
        "text_cfg": {"context_length": 20, "width": 32, "heads": 2, "layers": 1}}})
    model.eval()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    if a.mode == "stream":
        emb = encode_files(model, preprocess, paths, batch=256, workers=a.workers, progress=False)
    else:
        from mmablate.data.imagetext import open_image

        x = torch.stack([preprocess(open_image(q)) for q in paths])
        with torch.no_grad():
            emb = torch.cat([model.encode_image(x[i:i + 256], normalize=True)
                             for i in range(0, len(x), 256)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": a.n, "mode": a.mode, "workers": a.workers, "shape": list(emb.shape),
                      "peak_rss_mb": round(peak / 1024), "before_mb": round(base / 1024),
                      "wall_s": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
