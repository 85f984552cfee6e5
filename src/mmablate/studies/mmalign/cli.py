"""mmalign's `python -m mmablate` commands (registered by mmablate.cli)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path


def cmd_data(a):
    from ...util import read_json, write_json
    from .worlddata import write_mmalign_world

    cfg = read_json(a.config)
    out = Path(a.out).parent
    for sub in ("images", "sft", "povid", "pope", "mmhal", "llavaw", "mmvet", "textvqa", "gqa", "coco"):
        shutil.rmtree(out / sub, ignore_errors=True)
    t0 = time.time()
    summary = write_mmalign_world(cfg, out)
    summary["wall_s"] = round(time.time() - t0, 2)
    write_json(a.out, summary)


def cmd_sft(a):
    from ...util import read_json
    from .sft import train_sft

    cfg = read_json(a.config)
    print(json.dumps(train_sft(cfg, Path(a.out).parent, a.threads, a.stop_after)))


def cmd_bdhs(a):
    from ...util import read_json
    from .bdhs import run_bdhs

    print(json.dumps(run_bdhs(read_json(a.config), a.out, a.threads)))


def _eval_record(cfg, seed, metrics, chance, detail, extra):
    return {"study": "mmalign", "seed": seed, "metrics": metrics, "chance": chance,
            "config": cfg, "detail": detail, **extra}


def cmd_eval(a):
    """The benchmarks of a saved model (the base model's reference row)."""
    from ...util import read_json, write_json
    from .evaluate import evaluate, load_benchmarks
    from .judge import make_judge
    from .model import load

    cfg = read_json(a.config)
    ecfg = cfg["eval"]
    bench = load_benchmarks(ecfg)  # bad benchmark files fail before the model loads
    judge = make_judge(ecfg["judge"], ecfg.get("scenes"), "eval.judge")
    model, proc = load(cfg["model"])
    m, chance, detail = evaluate(model, proc, ecfg, bench, judge, a.threads)
    write_json(a.out, _eval_record(cfg, 0, m, chance, detail, {"model": cfg["model"]}))
    print(json.dumps(m))


def cmd_dpo(a):
    """Trains one variant (DPO with BDHS γ and Mixed-DPO p), then runs the benchmarks."""
    from ...util import read_json, write_json
    from .dpo import train_dpo
    from .evaluate import evaluate, load_benchmarks
    from .judge import make_judge

    cfg = read_json(a.config)
    ecfg = cfg["eval"]
    bench = load_benchmarks(ecfg)
    judge = make_judge(cfg["judge"], cfg.get("scenes"), "judge")
    out_dir = Path(a.out).parent
    model, proc, summary = train_dpo(cfg, a.seed, out_dir, a.threads, judge)
    if a.save_model:
        model.save_pretrained(out_dir / "model")
        proc.save_pretrained(out_dir / "model")
    shutil.rmtree(out_dir / "ckpt", ignore_errors=True)  # the run finished: no resume needed
    m, chance, detail = evaluate(model, proc, ecfg, bench, judge, a.threads)
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    write_json(a.out, _eval_record(cfg, a.seed, m, chance, detail, {"train": summary}))
    print(json.dumps({"train": summary, "metrics": m}))


def register(sub):
    """GPU stages (`gpu=True`: cli.main claims a free GPU first) are those whose rules declare
    `resources: gpu`: SFT, BDHS generation, DPO and the benchmarks."""
    s = sub.add_parser("mmalign-data", help="write the mmalign world (instructions, pairs, benchmarks)")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True, help="summary JSON; the data are written beside it")
    s.set_defaults(fn=cmd_data)

    s = sub.add_parser("mmalign-sft", help="build the tiny LLaVA and instruction-tune it")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True, help="summary JSON; the model is saved in model/ beside it")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--stop-after", type=int, default=None)
    s.set_defaults(fn=cmd_sft, gpu=True)

    s = sub.add_parser("mmalign-bdhs", help="BDHS negatives of the offline pairs (cached)")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_bdhs, gpu=True)

    s = sub.add_parser("mmalign-eval", help="the eight benchmarks of a saved model")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_eval, gpu=True)

    s = sub.add_parser("mmalign-dpo", help="DPO with BDHS (γ) and Mixed-DPO (p), then the benchmarks")
    s.add_argument("--config", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--save-model", action="store_true")
    s.set_defaults(fn=cmd_dpo, gpu=True)
