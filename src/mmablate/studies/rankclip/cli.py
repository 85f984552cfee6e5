"""RankCLIP's `python -m mmablate` commands (registered by mmablate.cli)."""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import MMAblateError


def cmd_train(a):
    from ...util import read_json
    from .train import train

    cfg = read_json(a.config)
    if not Path(cfg["data"]["root"]).is_dir():
        raise MMAblateError(f"{a.config}: data.root {cfg['data']['root']!r} is not a directory")
    print(json.dumps(train(cfg, a.seed, cfg["data"]["root"], a.out, a.threads, a.stop_after)))


def cmd_eval(a):
    from ...util import read_json, write_json
    from .evaluate import evaluate

    cfg = read_json(a.config)
    metrics, chance = evaluate(cfg, a.model, cfg["data"]["root"], a.threads)
    write_json(a.out, {"study": "rankclip", "seed": a.seed, "metrics": metrics, "chance": chance,
                       "config": cfg, "model": a.model})
    print(json.dumps(metrics))


def register(sub):
    s = sub.add_parser("rankclip-train", help="train a CLIP with the RankCLIP objective")
    s.add_argument("--config", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--stop-after", type=int, default=None,
                   help="checkpoint and exit after this many steps (to test resuming)")
    s.set_defaults(fn=cmd_train, gpu=True)  # gpu: claims a free GPU (mmablate.gpu)

    s = sub.add_parser("rankclip-eval", help="zero-shot top-1/3/5/10 of a trained CLIP")
    s.add_argument("--config", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_eval, gpu=True)  # ImageNet-1K zero-shot on the claimed GPU (paper)
