"""The pair-ranking study's `python -m mmablate` commands (registered by mmablate.cli).

Heavy imports (torch, diffusers, open_clip) stay inside the commands that need them: the
selection and figure stages import only numpy/pandas/matplotlib.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def _cfg(path):
    from ...util import read_json

    return read_json(path)


def cmd_world(a):
    from ...util import write_json
    from ...world.preference import write_pairs

    cfg = _cfg(a.config)
    t0 = time.time()
    summary = write_pairs(cfg, Path(a.out).parent)
    summary["wall_s"] = round(time.time() - t0, 2)
    write_json(a.out, summary)
    print(json.dumps(summary))


def cmd_pretrain(a):
    from .diffusion import pretrain

    print(json.dumps(pretrain(_cfg(a.config), Path(a.out).parent, a.threads, a.stop_after)))


def cmd_reward(a):
    from .rewards import train_twin

    print(json.dumps(train_twin(_cfg(a.config), a.out, a.threads)))


def cmd_score(a):
    from ...training.schedule import set_threads
    from ...util import write_json
    from .rewards import score_pairs

    set_threads(a.threads)
    s = score_pairs(_cfg(a.config), a.out)
    write_json(Path(a.out).with_name("summary.json"), s)
    print(json.dumps(s))


def cmd_select(a):
    import numpy as np

    from ...errors import DataError
    from ...util import read_json, write_json
    from .selection import choose_fraction, select, selection_truth

    cfg = _cfg(a.config)
    try:
        sc = np.load(cfg["scores"])
    except FileNotFoundError:
        raise DataError(f"{cfg['scores']}: score cache not found") from None
    fraction, val = None, None
    if cfg["threshold"] == "adaptive":
        val = {}
        m = cfg["val"]["metric"]  # validation performance = mean ψ on the validation prompts
        for f, path in cfg["val"]["runs"].items():
            rec = read_json(path)
            if m not in rec["metrics"]:
                raise DataError(f"{path}: no validation metric {m!r}")
            val[float(f)] = rec["metrics"][m]
        fraction, val = choose_fraction(val)
    try:
        out = select(sc["winner"], sc["loser"], cfg["quality"], cfg["threshold"],
                     cfg["top_fraction"], cfg["eps"], fraction)
    except DataError as e:
        raise DataError(f"{a.config}: {e}") from None
    out.update(pairs=cfg["pairs"], scores=cfg["scores"], quality=cfg["quality"],
               threshold=cfg["threshold"], eps=cfg["eps"],
               validation={f"{k:g}": v for k, v in (val or {}).items()} or None,
               chosen_fraction=fraction)
    out["world_truth"] = selection_truth(cfg["pairs"], out["indices"])  # None for real data
    write_json(a.out, out)
    print(f"{cfg['quality']}/{cfg['threshold']}: kept {out['n_kept']} of {out['n_pairs']} pairs "
          f"({100 * out['fraction']:.2f}%), cut {out['cut']:.4g}")
    if out["world_truth"]:
        k, al = out["world_truth"]["kept"], out["world_truth"]["all"]
        print(f"world truth: clean pairs (winner right colour, loser wrong) {100 * k['clean']:.1f}% "
              f"of those kept vs {100 * al['clean']:.1f}% of all; reversed {100 * k['reversed']:.1f}% "
              f"vs {100 * al['reversed']:.1f}%")


def cmd_dpo(a):
    from .dpo import train_dpo

    out_dir = Path(a.out).parent.parent  # .../s<seed>/lora/adapter.pt
    print(json.dumps(train_dpo(_cfg(a.config), a.seed, out_dir, a.threads, a.stop_after)))


def cmd_eval(a):
    from ...util import read_json, write_json
    from .evaluate import evaluate

    cfg = _cfg(a.config)
    res = evaluate(cfg, a.seed, a.out, a.grid, a.threads)
    rec = {"study": "pairrank", "seed": a.seed, "metrics": res["metrics"], "config": cfg,
           "n_images": res["n_images"], "wall_s": res["wall_s"]}
    if cfg.get("lora"):
        s = Path(cfg["lora"]).parent / "summary.json"
        rec["dpo"] = read_json(s) if s.is_file() else None
    write_json(a.out, rec)
    print(json.dumps(res["metrics"]))


def cmd_distfig(a):
    from .figures import distribution_figure

    distribution_figure(_cfg(a.config), a.out)


def register(sub):
    def add(name, fn, help, seed=False, threads=True, stop=False, grid=False, gpu=False):
        s = sub.add_parser(name, help=help)
        s.add_argument("--config", required=True)
        s.add_argument("--out", required=True)
        if seed:
            s.add_argument("--seed", type=int, required=True)
        if threads:
            s.add_argument("--threads", type=int, default=1)
        if stop:
            s.add_argument("--stop-after", type=int, default=None,
                           help="checkpoint and exit after this many steps (to test resuming)")
        if grid:
            s.add_argument("--grid", default=None, help="PNG grid of samples")
        s.set_defaults(fn=fn, gpu=gpu)  # gpu: cli.main claims a free GPU (mmablate.gpu)

    add("pairrank-world", cmd_world, "write the preference-pair world (Pick-a-Pic schema)",
        threads=False)
    add("pairrank-pretrain", cmd_pretrain, "pretrain the world's text-to-image UNet", stop=True,
        gpu=True)
    add("pairrank-reward", cmd_reward, "train one world reward twin", gpu=True)
    add("pairrank-score", cmd_score, "score every pair once with the reward model ψ", gpu=True)
    add("pairrank-select", cmd_select, "rank pairs by quality and select", threads=False)
    add("pairrank-dpo", cmd_dpo, "Diffusion-DPO with LoRA on the selected pairs", seed=True,
        stop=True, gpu=True)
    add("pairrank-eval", cmd_eval, "sample held-out prompts and score them", seed=True, grid=True,
        gpu=True)
    add("pairrank-distfig", cmd_distfig, "quality-score distributions with every threshold",
        threads=False)
