"""mmalign's `python -m mmablate` commands (registered by mmablate.cli)."""
from __future__ import annotations

import json
import shutil
import sys
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


def _load_for_eval(path):
    """A model for generation: bf16 on a GPU (LLaVA-1.6-7B: 14 GB), fp32 on the CPU."""
    import torch

    from .model import load

    return load(path, dtype=torch.bfloat16 if torch.cuda.is_available() else None)


def _model_identity(path) -> list:
    """A model folder's identity for reusing its answers: the path and its files' sizes and
    modification times (a retrained model at the same path is another model); a hub id alone."""
    p = Path(str(path))
    if not p.is_dir():
        return [str(path)]
    return [str(path)] + sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns]
                                for f in p.iterdir() if f.is_file())


def _judge(cfg, jcfg, where, roles=("rank", "bench")):
    """The job's judge; the endpoint of each role the job needs (`roles`: rank, bench) is
    checked to answer first (`preflight.check_judge`: a judge that is down fails the job
    before its model loads)."""
    from .judge import make_judge

    if jcfg.get("kind") == "endpoint":
        from .preflight import check_judge

        for role in roles:
            if (jcfg.get(role) or {}).get("endpoint"):
                check_judge(jcfg[role], f"studies.mmalign.judge.{role}")
    return make_judge(jcfg, cfg.get("scenes") or cfg["eval"].get("scenes"), where,
                      cache_dir=cfg["eval"].get("judge_cache"))


def cmd_eval(a):
    """All benchmarks of a saved model in one job (``eval.jobs: per_model``; the base row)."""
    from ...util import read_json, write_json
    from .evaluate import evaluate, load_benchmarks

    cfg = read_json(a.config)
    ecfg = cfg["eval"]
    bench = load_benchmarks(ecfg)  # bad benchmark files fail before the model loads
    judge = _judge(cfg, ecfg["judge"], "eval.judge", roles=("bench",))
    model, proc = _load_for_eval(cfg["model"])
    m, chance, detail = evaluate(model, proc, ecfg, bench, judge, a.threads)
    write_json(a.out, _eval_record(cfg, 0, m, chance, detail, {"model": cfg["model"]}))
    print(json.dumps(m))


def cmd_bench(a):
    """One benchmark of one saved model (``eval.jobs: per_benchmark``): its metrics only."""
    from ...util import read_json, write_json
    from .evaluate import evaluate, load_benchmarks

    cfg = read_json(a.config)
    ecfg = cfg["eval"]
    bench = load_benchmarks(ecfg, [cfg["benchmark"]])
    from .preflight import JUDGED

    judge = _judge(cfg, ecfg["judge"], "eval.judge",
                   roles=("bench",) if cfg["benchmark"] in JUDGED else ())
    model, proc = _load_for_eval(cfg["model"])
    # the answers kept beside the record: a job failing at the judge reruns without generating
    m, chance, detail = evaluate(model, proc, ecfg, bench, judge, a.threads,
                                 answers_file=Path(a.out).parent / "answers.json",
                                 model_id=_model_identity(cfg["model"]))
    write_json(a.out, _eval_record(cfg, cfg["seed"], m, chance, detail,
                                   {"model": cfg["model"], "benchmark": cfg["benchmark"]}))
    print(json.dumps(m))


def cmd_merge(a):
    """One evaluation record of a model from its benchmark jobs' records (and the training
    summary of its DPO job, when there is one)."""
    from ...errors import DataError
    from ...util import read_json, write_json

    cfg = read_json(a.config)
    metrics, chance, detail, extra = {}, {}, {}, {"model": cfg["model"]}
    for path in a.records:
        r = read_json(path)
        if "benchmark" not in r:  # the DPO job's record: its training summary
            extra["train"] = r.get("train")
            continue
        for k in r["metrics"]:
            if k in metrics:
                raise DataError(f"{path}: metric {k!r} also comes from another benchmark job")
        metrics.update(r["metrics"])
        chance.update(r.get("chance", {}))
        detail[r["benchmark"]] = r["detail"]
    if extra.get("train") is not None:  # no base record here: the absolute collapse tests
        from ...report.flags import collapse_reasons

        extra["train"]["collapse"] = collapse_reasons(
            metrics, None, extra["train"].get("chosen_reward_last"))
    missing = [b for b in cfg["benchmarks"] if b not in detail]
    if missing:
        raise DataError(f"{a.out}: no record of benchmark(s) {missing} among {a.records}")
    write_json(a.out, _eval_record(cfg, cfg["seed"], metrics, chance, detail, extra))


def cmd_dpo(a):
    """Trains one variant (DPO with BDHS γ and Mixed-DPO p); with ``eval.jobs: per_model`` it
    then runs the benchmarks, with ``per_benchmark`` it saves the model for the benchmark jobs
    (``model/``: the LoRA adapter, or the whole model) and writes the training record."""
    from ...report.flags import collapse_reasons
    from ...util import read_json, write_json
    from .dpo import train_dpo
    from .evaluate import evaluate, load_benchmarks

    cfg = read_json(a.config)
    ecfg = cfg["eval"]
    per_model = ecfg.get("jobs", "per_model") == "per_model"
    bench = load_benchmarks(ecfg) if per_model else None
    judge = _judge(cfg, cfg["judge"], "judge",
                   roles=(("bench",) if per_model else ())
                   + (("rank",) if float(cfg["mixed_dpo"]["p"]) < 1 else ()))
    out_dir = Path(a.out).parent
    save = out_dir / "model" if (a.save_model or not per_model) else None
    model, proc, summary = train_dpo(cfg, a.seed, out_dir, a.threads, judge, save_to=save)
    shutil.rmtree(out_dir / "ckpt", ignore_errors=True)  # the run finished: no resume needed
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    if not per_model:
        write_json(a.out, _eval_record(cfg, a.seed, {}, {}, {}, {"train": summary,
                                                               "model": str(save)}))
        print(json.dumps({"train": summary}))
        return
    m, chance, detail = evaluate(model, proc, ecfg, bench, judge, a.threads)
    base = read_json(cfg["reference_eval"])["metrics"] if cfg.get("reference_eval") else None
    summary["collapse"] = collapse_reasons(m, base, summary.get("chosen_reward_last"))
    if summary["collapse"]:
        print(f"mmalign-dpo seed {a.seed}: COLLAPSE: {'; '.join(summary['collapse'])}",
              file=sys.stderr)
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    write_json(a.out, _eval_record(cfg, a.seed, m, chance, detail, {"train": summary}))
    print(json.dumps({"train": summary, "metrics": m}))


def _tune(a):
    from .tune import cmd_tune

    cmd_tune(a)


def register(sub):
    """GPU stages (`gpu=True`: cli.main claims a free GPU first) are those whose rules declare
    `resources: gpu`: SFT, BDHS generation, DPO and the benchmarks (merging records is not)."""
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

    for name, fn, text in (
            ("mmalign-bdhs", cmd_bdhs, "BDHS negatives of the offline pairs (cached)"),
            ("mmalign-eval", cmd_eval, "all benchmarks of a saved model in one job"),
            ("mmalign-bench", cmd_bench, "one benchmark of a saved model (its own job)")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--config", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--threads", type=int, default=1)
        s.set_defaults(fn=fn, gpu=True)

    s = sub.add_parser("mmalign-merge", help="one evaluation record from a model's benchmark jobs")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("records", nargs="+", help="the benchmark jobs' records (and the DPO job's)")
    s.set_defaults(fn=cmd_merge)

    s = sub.add_parser("mmalign-tune", help="tiny DPO hyper-parameters chosen on the world's "
                       "validation split (studies/mmalign/tune.py)")
    s.add_argument("--dpo-config", required=True, help="a finished DPO job's resolved config")
    s.add_argument("--grid", nargs="+", required=True,
                   help="settings, each 'key=value[,key=value]' (dotted keys of the DPO config)")
    s.add_argument("--variants", nargs="+", default=["0.5,0.5"], help="'γ,p' pairs to train")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--work", required=True, help="validation world, runs (resumable)")
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=_tune)

    s = sub.add_parser("mmalign-dpo", help="DPO with BDHS (γ) and Mixed-DPO (p), then the benchmarks")
    s.add_argument("--config", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--save-model", action="store_true")
    s.set_defaults(fn=cmd_dpo, gpu=True)

    # the rehearsal's judge stand-in (mmablate.rehearsal.judge): `rehearsal-judge --port P`
    from ...rehearsal.judge import register as register_judge

    register_judge(sub)
