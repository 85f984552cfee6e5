"""Choosing the tiny DPO hyper-parameters on the world's *validation* split, never the test
benchmarks (issue 21: at the old learning rate DPO collapsed the descriptions).

The validation split is the mmalign world's generator run again with its seed offset by
`VAL_SEED_OFFSET` and no preference pairs: the same scene distribution (co-occurrence bias,
glyphs) and the same benchmark files, on images the test benchmarks never see. Each candidate
setting (e.g. ``train.lr``, ``dpo.beta``) trains the DPO variants given (by their γ and p) from
one finished DPO job's resolved config — the same SFT base, offline pairs and BDHS negatives
the pipeline uses — and evaluates them on the validation benchmarks beside the SFT base.

The rule (`choose`): a setting is *informative* when no tuned variant's validation
descriptions collapse against the base (`report.flags.collapse_reasons`) and none is shorter
than `KEEP_LENGTH` × the base's or names no object more often than the base + `KEEP_EMPTY`
points; among the informative settings the one with the highest mean validation MMHal score
(0–6: it rewards answers that are both informative and free of hallucination) wins, provided
it changed the model (`MIN_CHANGED` of the validation descriptions differ from the base's).
If none qualifies, the report says so: then no setting both changes the model and keeps it
informative.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

VAL_SEED_OFFSET = 7919
KEEP_LENGTH = 0.8    # validation descriptions at least 0.8 × the base's length
KEEP_EMPTY = 5.0     # at most 5 points more descriptions naming no object than the base
MIN_CHANGED = 0.10   # at least 10 % of validation descriptions differ from the base's


def write_validation_world(world_cfg: dict, out) -> Path:
    """The validation world (module docstring) under `out`; reused if already written."""
    from .worlddata import write_mmalign_world

    out = Path(out)
    if not (out / "scenes.jsonl").is_file():
        cfg = {**world_cfg, "seed": int(world_cfg["seed"]) + VAL_SEED_OFFSET, "n_pref": 0}
        write_mmalign_world(cfg, out)
    return out


def validation_eval(ecfg: dict, val_dir) -> dict:
    """`ecfg` (a DPO job's eval block) with every benchmark file and the scenes on `val_dir`."""
    from .pipeline import POPE_SPLITS

    d, I = str(val_dir), f"{val_dir}/images"
    bench = {
        "pope": {"files": {sp: f"{d}/pope/coco_pope_{sp}.json" for sp in POPE_SPLITS}, "images": I},
        "mmhal": {"file": f"{d}/mmhal/response_template.json", "images": I},
        "llavaw": {"questions": f"{d}/llavaw/questions.jsonl",
                   "answers": f"{d}/llavaw/answers_gpt4.jsonl", "images": I},
        "mmvet": {"file": f"{d}/mmvet/mm-vet.json", "images": I},
        "vqat": {"file": f"{d}/textvqa/TextVQA_0.5.1_val.json", "images": I},
        "gqa": {"file": f"{d}/gqa/testdev_balanced_questions.json", "images": I},
        "recall_coco": {"file": f"{d}/coco/instances_val.json", "images": I},
    }
    return {**ecfg, "benchmarks": bench, "scenes": f"{d}/scenes.jsonl"}


def _evaluate(model, proc, vecfg, threads):
    from .evaluate import answer_all, load_benchmarks, score
    from .judge import make_judge

    bench = load_benchmarks(vecfg)
    judge = make_judge({"kind": "oracle"}, vecfg["scenes"], "validation judge")
    answers = answer_all(model, proc, bench, vecfg)
    m, _ = score(bench, answers, judge)
    desc = [answers[(r["image"], r["question"])] for r in bench["recall_coco"]]
    return m, desc


def run_grid(dpo_cfg: dict, grid: list[dict], variants: list[tuple[float, float]], seed: int,
             work, threads: int = 1, log=sys.stderr) -> dict:
    """Trains every (setting, variant) of `grid` × `variants` ((γ, p) pairs) from `dpo_cfg` (a
    DPO job's resolved config) and evaluates it on the validation split. Returns {"base":
    metrics, "runs": [{setting, gamma, p, metrics, changed, train}], "examples": …}."""
    from ...training.schedule import set_threads
    from ...util import read_json
    from .dpo import train_dpo
    from .judge import make_judge
    from .model import load

    set_threads(threads)
    work = Path(work)
    world_cfg = read_json(_data_config(dpo_cfg))
    val = write_validation_world(world_cfg, work / "val_world")
    vecfg = validation_eval(dpo_cfg["eval"], val)
    out = {"validation_world_seed": int(world_cfg["seed"]) + VAL_SEED_OFFSET, "runs": []}
    base_file = work / "base.json"
    if base_file.is_file():
        b = json.loads(base_file.read_text())
        out["base"], base_desc = b["metrics"], b["desc"]
    else:
        model, proc = load(dpo_cfg["model"]["base"])
        out["base"], base_desc = _evaluate(model, proc, vecfg, threads)
        base_file.write_text(json.dumps({"metrics": out["base"], "desc": base_desc}))
    out["examples"] = {"base": base_desc[:5]}
    judge = make_judge(dpo_cfg["judge"], dpo_cfg["scenes"], "judge")
    for setting in grid:
        for gamma, p in variants:
            name = "_".join(f"{k}={v:g}" for k, v in sorted(setting.items())) + \
                f"_g{gamma:g}_p{p:g}_s{seed}"
            f = work / "runs" / f"{name}.json"
            if f.is_file():
                rec = json.loads(f.read_text())
            else:
                cfg = copy.deepcopy(dpo_cfg)
                for k, v in setting.items():
                    node = cfg
                    *head, last = k.split(".")
                    for h in head:
                        node = node[h]
                    node[last] = v
                cfg["bdhs"]["gamma"], cfg["mixed_dpo"]["p"] = gamma, p
                t0 = time.time()
                model, proc, summary = train_dpo(cfg, seed, work / "jobs" / name, threads, judge,
                                                 progress=False)
                m, desc = _evaluate(model, proc, vecfg, threads)
                changed = sum(a != b for a, b in zip(desc, base_desc)) / max(1, len(desc))
                rec = {"setting": setting, "gamma": gamma, "p": p, "seed": seed, "metrics": m,
                       "changed": changed, "examples": desc[:5],
                       "train": {k: summary.get(k) for k in ("final_loss", "reward_acc_last",
                                                             "chosen_reward_last", "mix")},
                       "wall_s": round(time.time() - t0, 1)}
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(json.dumps(rec, indent=1))
            print(f"[tune] {name}: words {rec['metrics']['desc_words']:.1f} empty "
                  f"{rec['metrics']['desc_empty']:.0f}% mmhal {rec['metrics']['mmhal']:.2f} "
                  f"mmhalv {rec['metrics']['mmhalv']:.1f} recall {rec['metrics']['recall_coco']:.1f}"
                  f" pope {rec['metrics']['pope']:.1f} changed {rec['changed']:.2f} chosen "
                  f"{rec['train']['chosen_reward_last']}", file=log, flush=True)
            out["runs"].append(rec)
    return out


def _data_config(dpo_cfg: dict) -> Path:
    """The mmalign_data stage's resolved config (the world) of a DPO job's config."""
    scenes = Path(dpo_cfg["scenes"])  # <results>/mmalign/data/<h>/scenes.jsonl
    results = scenes.parent.parent.parent.parent
    return results / "configs" / "mmalign_data" / f"{scenes.parent.name}.json"


def informative(m: dict, base: dict) -> list[str]:
    """Why validation metrics `m` are not informative enough against the base's ([] if they
    are): the collapse tests plus the tuning's stricter keep-length/keep-content bounds."""
    from ...report.flags import collapse_reasons

    out = collapse_reasons(m, base)
    if m["desc_words"] < KEEP_LENGTH * base["desc_words"]:
        out.append(f"words {m['desc_words']:.1f} < {KEEP_LENGTH:g} × base {base['desc_words']:.1f}")
    if m["desc_empty"] > base["desc_empty"] + KEEP_EMPTY:
        out.append(f"{m['desc_empty']:.0f}% name no object (base {base['desc_empty']:.0f}%)")
    return out


def choose(result: dict) -> dict:
    """The chosen setting by the rule of the module docstring, with every setting's summary."""
    base = result["base"]
    by = {}
    for r in result["runs"]:
        by.setdefault(json.dumps(r["setting"], sort_keys=True), []).append(r)
    table = []
    for key, runs in by.items():
        why = [f"γ {r['gamma']:g} p {r['p']:g}: {w}" for r in runs
               for w in informative(r["metrics"], base)]
        mean = lambda k: sum(r["metrics"][k] for r in runs) / len(runs)  # noqa: E731
        changed = sum(r["changed"] for r in runs) / len(runs)
        table.append({"setting": json.loads(key), "mmhal": mean("mmhal"),
                      "mmhalv": mean("mmhalv"), "desc_words": mean("desc_words"),
                      "desc_empty": mean("desc_empty"), "recall_coco": mean("recall_coco"),
                      "pope": mean("pope"), "changed": changed, "not_informative": why,
                      "ok": not why and changed >= MIN_CHANGED})
    ok = [t for t in table if t["ok"]]
    best = max(ok, key=lambda t: t["mmhal"]) if ok else None
    return {"base": {k: base[k] for k in ("mmhal", "mmhalv", "desc_words", "desc_empty",
                                           "recall_coco", "pope")},
            "settings": table, "chosen": best and best["setting"],
            "verdict": ("chosen: the informative setting with the best validation MMHal score"
                        if best else "no setting both changes the model and keeps it informative")}


def cmd_tune(a):
    from ...util import read_json

    cfg = read_json(a.dpo_config)
    grid = []
    for spec in a.grid:  # "train.lr=5e-5,dpo.beta=0.1"
        grid.append({k: float(v) for k, v in (kv.split("=") for kv in spec.split(","))})
    variants = [tuple(float(x) for x in v.split(",")) for v in a.variants]
    res = run_grid(cfg, grid, variants, a.seed, a.work, a.threads)
    res["choice"] = choose(res)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["choice"], indent=1))
