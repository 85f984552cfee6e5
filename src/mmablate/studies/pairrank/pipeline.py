"""Quality-aware pair ranking (plan 000): its ablatable parts, metrics and stages (light imports).

DAG per study config (identical stage configs are one job):

  pairrank_world ─┬─ pretrain.parquet ── pairrank_base (UNet, once) ─────────────┐
  (Pick-a-Pic     ├─ pairs_reward / aesthetic ── pairrank_reward ×4 (twins, once) ┤
   schema)        └─ pairs_train ── pairrank_score (ψ, once) ── pairrank_select ──┤
  rankclip_train (world CLIP, λ = 0) feeds the text encoder and the twins         │
                                         pairrank_dpo (LoRA, per seed) ── pairrank_eval (per seed)
  adaptive threshold: per candidate fraction, select(fixed) → short dpo → eval on val prompts,
  then select(adaptive) reads those validation results.
"""
from __future__ import annotations

import copy
import math

from ...errors import ConfigError
from ...util import get_path
from ..spec import PAIRRANK as SPEC

TITLE = SPEC.caption
QUALITY_LABELS = SPEC.labels("selection.quality")
THRESHOLD_LABELS = SPEC.labels("selection.threshold")
ABLATABLE = SPEC.ablatable
REAL_NAMES = {"aesthetic": "Aesthetic Score", "image_reward": "ImageReward",
              "pickscore": "PickScore", "hpsv2": "HPSv2"}  # the paper scale's column labels
OUTPUTS = SPEC.stages
METRICS = SPEC.metric_records
EVAL_METRICS = ("aesthetic", "image_reward", "pickscore", "hpsv2")


def metric_labels(scfg: dict, scale: str) -> dict:
    """Column labels: the real metric names only where the real models score (paper scale)."""
    if scfg["rewards"]["source"] == "paper":
        return dict(REAL_NAMES)
    return {m: METRICS[m]["label"] for m in METRICS}


def extra_metrics(scfg: dict) -> list:
    """On the world, every table also shows the oracle (does the sample show the prompt's colour),
    the one metric that is ground truth rather than a learnt reward."""
    return ["oracle"] if scfg["data"]["source"] == "world" else []


def dataset_name(scfg: dict, scale: str) -> str:
    if scfg["data"]["source"] == "world":
        return (f"held-out world prompts ({scfg['world']['n_eval_prompts']}×"
                f"{scfg['eval']['per_prompt']} samples); metrics are world twins trained with each "
                f"metric's recipe, not the published models")
    return scfg["eval"]["dataset_name"]


def check_value(key: str, value) -> None:
    if key == "selection.quality" and value not in QUALITY_LABELS:
        raise ValueError(f"unknown quality metric {value!r}; known: {sorted(QUALITY_LABELS)}")
    if key == "selection.threshold" and value not in THRESHOLD_LABELS:
        raise ValueError(f"unknown threshold {value!r}; known: {sorted(THRESHOLD_LABELS)}")


def validate(scfg: dict, where: str) -> None:
    sel = scfg["selection"]
    f = sel.get("top_fraction")
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
        raise ConfigError(f"{where}.selection.top_fraction: must be in (0, 1], got {f!r}")
    fr = sel["adaptive"]["fractions"]
    if not fr or any(not isinstance(x, (int, float)) or not 0 < x <= 1 for x in fr):
        raise ConfigError(f"{where}.selection.adaptive.fractions: need fractions in (0, 1], got {fr!r}")
    if not isinstance(sel.get("eps"), (int, float)) or not sel["eps"] > 0:
        raise ConfigError(f"{where}.selection.eps: must be > 0, got {sel.get('eps')!r}")
    b = scfg["dpo"]["beta"]
    if not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
        raise ConfigError(f"{where}.dpo.beta: must be a positive number, got {b!r}")
    if scfg["rewards"]["psi"] not in EVAL_METRICS:
        raise ConfigError(f"{where}.rewards.psi: {scfg['rewards']['psi']!r} is not one of "
                          f"{list(EVAL_METRICS)}")
    src = scfg["data"]["source"]
    if src not in ("world", "files"):
        raise ConfigError(f"{where}.data.source: expected 'world' or 'files', got {src!r}")
    if src == "files":
        from pathlib import Path

        for k in ("pairs", "prompts"):
            if not Path(scfg["data"].get(k) or "").exists():
                raise ConfigError(f"{where}.data.{k}: {scfg['data'].get(k)!r} does not exist")
    if scfg["rewards"]["source"] == "paper" and any(
            "image_reward" in ab["metrics"] for ab in scfg["ablations"]):
        # said before any GPU time is spent, not after the DPO runs
        raise ConfigError(f"{where}.rewards.paper.image_reward: the published ImageReward (BLIP) "
                          f"cannot be loaded under transformers 5 (the image-reward package fails "
                          f"to import) and is not yet ported here; drop image_reward from the "
                          f"ablations' metrics or run it in an environment with transformers<5")
    kind = scfg["model"]["kind"]
    if kind not in ("world", "sd"):
        raise ConfigError(f"{where}.model.kind: expected 'world' or 'sd', got {kind!r}")
    if kind == "world" and src != "world":
        raise ConfigError(f"{where}.model.kind: the world UNet is pretrained on world data; "
                          f"use model.kind 'sd' with data.source 'files'")
    if kind == "world":
        u = scfg["model"]["unet"]
        g = u.get("norm_num_groups", 32)
        bad = [c for c in u["block_out_channels"] if c % g]
        if bad:
            raise ConfigError(f"{where}.model.unet.norm_num_groups: {g} does not divide the "
                              f"channel count(s) {bad}")
        if u["sample_size"] != scfg["world"]["image_size"]:
            raise ConfigError(f"{where}.model.unet.sample_size: {u['sample_size']} differs from "
                              f"world.image_size {scfg['world']['image_size']}")


def label(key: str, value, scfg: dict | None = None) -> str:
    if key == "selection.quality":
        return QUALITY_LABELS[value]
    return THRESHOLD_LABELS[value]


# ---- stages --------------------------------------------------------------------------------
def _world(P, scfg):
    h = P.add_stage("pairrank_world", scfg["world"])
    return f"{P.results}/pairrank/world/{h}"


def data_paths(P, scfg) -> dict:
    if scfg["data"]["source"] == "world":
        d = _world(P, scfg)
        return {"pairs": f"{d}/pairs_train.parquet", "prompts": f"{d}/prompts.json",
                "pretrain": f"{d}/pretrain.parquet", "reward_pairs": f"{d}/pairs_reward.parquet",
                "aesthetic": f"{d}/aesthetic.parquet"}
    return {"pairs": scfg["data"]["pairs"], "prompts": scfg["data"]["prompts"]}


def clip_block(P, scfg) -> dict:
    """The world CLIP (rankclip's stage with λ = 0: a plain CLIP-loss model, shared)."""
    from ..rankclip.pipeline import train_config

    rcfg = copy.deepcopy(P.config["studies"]["rankclip"])
    rcfg["loss"]["rank_weight"] = 0
    h, _ = train_config(P, rcfg)
    return {"model": rcfg["model"], "weights": f"{P.results}/rankclip/train/{h}/s{scfg['clip_seed']}/model.pt"}


def model_block(P, scfg) -> dict:
    m = scfg["model"]
    if m["kind"] == "sd":
        return {"kind": "sd", "pretrained": m["pretrained"]}
    d = data_paths(P, scfg)
    h = P.add_stage("pairrank_base", {"unet": m["unet"], "scheduler": m["scheduler"],
                                      "train": m["train"], "seed": m["seed"],
                                      "data": d["pretrain"], "text_encoder": clip_block(P, scfg)})
    return {"kind": "world", "dir": f"{P.results}/pairrank/base/{h}"}


def reward_block(P, scfg, kind: str) -> dict:
    r = scfg["rewards"]
    if r["source"] == "paper":
        return {"source": "paper", "kind": kind, **r["paper"][kind]}
    d = data_paths(P, scfg)
    cfg = {"kind": kind, "seed": r["seed"], "train": r["train"][kind], "clip": clip_block(P, scfg),
           "data": d["aesthetic"] if kind == "aesthetic" else d["reward_pairs"]}
    h = P.add_stage("pairrank_reward", cfg)
    return {"source": "twin", "path": f"{P.results}/pairrank/reward/{h}/model.pt"}


def scores_path(P, scfg) -> str:
    d = data_paths(P, scfg)
    h = P.add_stage("pairrank_score", {"pairs": d["pairs"],
                                       "reward": reward_block(P, scfg, scfg["rewards"]["psi"])})
    return f"{P.results}/pairrank/score/{h}/scores.npz"


def _select(P, scfg, threshold, top_fraction, val=None) -> str:
    sel = scfg["selection"]
    cfg = {"pairs": data_paths(P, scfg)["pairs"], "scores": scores_path(P, scfg),
           "quality": sel["quality"], "threshold": threshold, "eps": sel["eps"],
           "top_fraction": top_fraction if threshold in ("fixed",) else None,
           "val": val}
    h = P.add_stage("pairrank_select", cfg)
    return f"{P.results}/pairrank/select/{h}/selection.json"


def _dpo(P, scfg, selection, train) -> tuple[str, str]:
    h = P.add_stage("pairrank_dpo", {"model": model_block(P, scfg), "selection": selection,
                                     "train": train})
    return h, f"{P.results}/pairrank/dpo/{h}"


def _eval(P, scfg, lora_dir, split: str, metrics, title: str) -> str:
    ev = scfg["eval"]
    cfg = {"model": model_block(P, scfg), "lora": lora_dir, "prompts": data_paths(P, scfg)["prompts"],
           "split": split, "per_prompt": ev["per_prompt"] if split == "eval" else ev["val_per_prompt"],
           "sampling": ev["sampling"], "metrics": {m: reward_block(P, scfg, m) for m in metrics},
           "oracle_colours": scfg["world"]["colours"] if scfg["data"]["source"] == "world" else None,
           "title": title}
    return P.add_stage("pairrank_eval", cfg)


def selection_path(P, scfg) -> str:
    sel = scfg["selection"]
    if sel["threshold"] != "adaptive":
        return _select(P, scfg, sel["threshold"], sel["top_fraction"])
    ad = sel["adaptive"]
    train = {**scfg["dpo"], "steps": ad["steps"]}
    val = {}
    for f in ad["fractions"]:
        cand = _select(P, scfg, "fixed", f)
        _, d = _dpo(P, scfg, cand, train)
        lora = f"{d}/s{ad['seed']}/lora"
        eh = _eval(P, scfg, lora, "val", [scfg["rewards"]["psi"]], f"validation, top {f:g}")
        val[f"{f:g}"] = f"{P.results}/pairrank/eval/{eh}/s{ad['seed']}/metrics.json"
    return _select(P, scfg, "adaptive", None, {"metric": scfg["rewards"]["psi"], "runs": val})


def variant(P, vcfg: dict) -> tuple[str, dict]:
    sel = selection_path(P, vcfg)
    h, d = _dpo(P, vcfg, sel, vcfg["dpo"])
    title = (f"Diffusion-DPO, Q = {QUALITY_LABELS[vcfg['selection']['quality']]}, "
             f"{THRESHOLD_LABELS[vcfg['selection']['threshold']]}")
    evals = {}
    for s in P.seeds:
        eh = _eval(P, vcfg, f"{d}/s{s}/lora", "eval", EVAL_METRICS, title)
        evals[s] = f"{P.results}/pairrank/eval/{eh}/s{s}/metrics.json"
    return h, evals


def references(P, scfg: dict) -> list:
    from ...pipeline import Row

    eh = _eval(P, scfg, None, "eval", EVAL_METRICS, "base model (no DPO)")
    rows = [Row("base model (no DPO)", None, False, eh,
                {s: f"{P.results}/pairrank/eval/{eh}/s{s}/metrics.json" for s in P.seeds},
                kind="reference")]
    # One figure of the ψ-quality distributions with every threshold's cut drawn on it.
    sels = {}
    for ab in P.study_ablations["pairrank"]:
        base = get_path(scfg, ab["key"])
        for v in [base] + [x for x in ab["values"] if x != base]:
            vcfg = copy.deepcopy(scfg)
            from ...util import set_path

            set_path(vcfg, ab["key"], v)
            q, t = vcfg["selection"]["quality"], vcfg["selection"]["threshold"]
            sels[f"{q}|{t}"] = selection_path(P, vcfg)
    fh = P.add_stage("pairrank_distfig", {"selections": sels})
    P.add_target(f"{P.results}/pairrank/distfig/{fh}/quality_distributions.png")
    return rows


def upstream(P, cfg) -> list[str]:
    """The files a stage config refers to, as the outputs of the rules that make them
    (a world path → that world's summary.json, a base model dir → its t2i.json, a LoRA dir →
    its adapter.pt); paths outside the results dir (real data) are left to the stage to check."""
    import re

    r = re.escape(P.results)
    found = set()

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and x.startswith(P.results + "/"):
            if m := re.match(rf"{r}/pairrank/world/(\w+)", x):
                found.add(f"{P.results}/pairrank/world/{m.group(1)}/summary.json")
            elif m := re.match(rf"{r}/pairrank/base/(\w+)$", x):
                found.add(f"{x}/t2i.json")
            elif x.endswith("/lora"):
                found.add(f"{x}/adapter.pt")
            else:
                found.add(x)

    walk(cfg)
    return sorted(found)
