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
# Each stage config carries the paths its code opens; its `needs` name the jobs that write them
# (by stage and hash), which is what the rules' one input function reads.
def _world(P, scfg):
    return P.stage_dir("pairrank_world", P.add_stage("pairrank_world", scfg["world"], needs={}))


def world_ref(P, scfg):
    """The preference-pair world job (None with real data files)."""
    if scfg["data"]["source"] != "world":
        return None
    return P.ref("pairrank_world", P.hash_of_dir("pairrank_world", _world(P, scfg)))


def data_paths(P, scfg) -> dict:
    if scfg["data"]["source"] == "world":
        d = _world(P, scfg)
        return {"pairs": f"{d}/pairs_train.parquet", "prompts": f"{d}/prompts.json",
                "pretrain": f"{d}/pretrain.parquet", "reward_pairs": f"{d}/pairs_reward.parquet",
                "aesthetic": f"{d}/aesthetic.parquet"}
    return {"pairs": scfg["data"]["pairs"], "prompts": scfg["data"]["prompts"]}


def _clip(P, scfg):
    """(block, ref): the world CLIP (rankclip's stage with λ = 0: a plain CLIP-loss model,
    shared) of seed `clip_seed`."""
    from ..rankclip.pipeline import train_config

    rcfg = copy.deepcopy(P.config["studies"]["rankclip"])
    rcfg["loss"]["rank_weight"] = 0
    h, _ = train_config(P, rcfg)
    seed = scfg["clip_seed"]
    return ({"model": rcfg["model"], "weights": P.output("rankclip_train", h, seed)},
            P.ref("rankclip_train", h, seed))


def clip_block(P, scfg) -> dict:
    return _clip(P, scfg)[0]


def _model(P, scfg):
    """(block, ref): the base text-to-image model (the world UNet pretrained here, or SD)."""
    m = scfg["model"]
    if m["kind"] == "sd":
        return {"kind": "sd", "pretrained": m["pretrained"]}, None
    d = data_paths(P, scfg)
    clip, clip_ref = _clip(P, scfg)
    h = P.add_stage("pairrank_base", {"unet": m["unet"], "scheduler": m["scheduler"],
                                      "train": m["train"], "seed": m["seed"],
                                      "data": d["pretrain"], "text_encoder": clip},
                    needs={"up": [world_ref(P, scfg), clip_ref]})
    return {"kind": "world", "dir": P.stage_dir("pairrank_base", h)}, P.ref("pairrank_base", h)


def model_block(P, scfg) -> dict:
    return _model(P, scfg)[0]


def _reward(P, scfg, kind: str):
    """(block, ref) of reward model `kind`: a world twin trained here, or the published one."""
    r = scfg["rewards"]
    if r["source"] == "paper":
        extra = {"precision": r["precision"]} if "precision" in r else {}
        return {"source": "paper", "kind": kind, **r["paper"][kind], **extra}, None
    d = data_paths(P, scfg)
    clip, clip_ref = _clip(P, scfg)
    cfg = {"kind": kind, "seed": r["seed"], "train": r["train"][kind], "clip": clip,
           "data": d["aesthetic"] if kind == "aesthetic" else d["reward_pairs"]}
    h = P.add_stage("pairrank_reward", cfg, needs={"up": [clip_ref, world_ref(P, scfg)]})
    return {"source": "twin", "path": P.output("pairrank_reward", h)}, P.ref("pairrank_reward", h)


def reward_block(P, scfg, kind: str) -> dict:
    return _reward(P, scfg, kind)[0]


def _scores(P, scfg):
    d = data_paths(P, scfg)
    reward, reward_ref = _reward(P, scfg, scfg["rewards"]["psi"])
    # the loader's settings enter the stage config only where set (the paper scale's)
    loader = {k: scfg["rewards"][k] for k in ("batch_size", "num_workers") if k in scfg["rewards"]}
    h = P.add_stage("pairrank_score", {"pairs": d["pairs"], "reward": reward, **loader},
                    needs={"up": [world_ref(P, scfg), reward_ref]})
    return P.output("pairrank_score", h), P.ref("pairrank_score", h)


def scores_path(P, scfg) -> str:
    return _scores(P, scfg)[0]


def _select(P, scfg, threshold, top_fraction, val=None, val_refs=()) -> str:
    sel = scfg["selection"]
    scores, scores_ref = _scores(P, scfg)
    cfg = {"pairs": data_paths(P, scfg)["pairs"], "scores": scores,
           "quality": sel["quality"], "threshold": threshold, "eps": sel["eps"],
           "top_fraction": top_fraction if threshold in ("fixed",) else None,
           "val": val}
    h = P.add_stage("pairrank_select", cfg,
                    needs={"up": [world_ref(P, scfg), scores_ref, *val_refs]})
    return P.output("pairrank_select", h)


def _dpo(P, scfg, selection, train) -> tuple[str, str]:
    model, model_ref = _model(P, scfg)
    sh = P.hash_of_dir("pairrank_select", selection)
    h = P.add_stage("pairrank_dpo", {"model": model, "selection": selection, "train": train},
                    needs={"up": [model_ref, P.ref("pairrank_select", sh)]})
    return h, P.stage_dir("pairrank_dpo", h)


def _eval(P, scfg, lora, split: str, metrics, title: str) -> str:
    """`lora`: (DPO job hash, seed) of the adapter sampled with, or None (the base model)."""
    ev = scfg["eval"]
    model, model_ref = _model(P, scfg)
    rewards = {m: _reward(P, scfg, m) for m in metrics}
    lora_dir = f"{P.stage_dir('pairrank_dpo', lora[0])}/s{lora[1]}/lora" if lora else None
    cfg = {"model": model, "lora": lora_dir, "prompts": data_paths(P, scfg)["prompts"],
           "split": split, "per_prompt": ev["per_prompt"] if split == "eval" else ev["val_per_prompt"],
           "sampling": ev["sampling"], "metrics": {m: b for m, (b, _) in rewards.items()},
           "oracle_colours": scfg["world"]["colours"] if scfg["data"]["source"] == "world" else None,
           "title": title}
    return P.add_stage("pairrank_eval", cfg, needs={"up": [
        model_ref, P.ref("pairrank_dpo", lora[0], lora[1]) if lora else None,
        world_ref(P, scfg), *(r for _, r in rewards.values())]})


def selection_path(P, scfg) -> str:
    sel = scfg["selection"]
    if sel["threshold"] != "adaptive":
        return _select(P, scfg, sel["threshold"], sel["top_fraction"])
    ad = sel["adaptive"]
    train = {**scfg["dpo"], "steps": ad["steps"]}
    val, refs = {}, []
    for f in ad["fractions"]:
        cand = _select(P, scfg, "fixed", f)
        dh, _ = _dpo(P, scfg, cand, train)
        eh = _eval(P, scfg, (dh, ad["seed"]), "val", [scfg["rewards"]["psi"]],
                   f"validation, top {f:g}")
        val[f"{f:g}"] = P.output("pairrank_eval", eh, ad["seed"])
        refs.append(P.ref("pairrank_eval", eh, ad["seed"]))
    return _select(P, scfg, "adaptive", None, {"metric": scfg["rewards"]["psi"], "runs": val},
                   refs)


def variant(P, vcfg: dict) -> tuple[str, dict]:
    sel = selection_path(P, vcfg)
    h, _ = _dpo(P, vcfg, sel, vcfg["dpo"])
    title = (f"Diffusion-DPO, Q = {QUALITY_LABELS[vcfg['selection']['quality']]}, "
             f"{THRESHOLD_LABELS[vcfg['selection']['threshold']]}")
    evals = {}
    for s in P.seeds:
        eh = _eval(P, vcfg, (h, s), "eval", EVAL_METRICS, title)
        evals[s] = P.output("pairrank_eval", eh, s)
    return h, evals


def references(P, scfg: dict) -> list:
    from ...pipeline import Row

    eh = _eval(P, scfg, None, "eval", EVAL_METRICS, "base model (no DPO)")
    rows = [Row("base model (no DPO)", None, False, eh,
                {s: P.output("pairrank_eval", eh, s) for s in P.seeds}, kind="reference")]
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
    fh = P.add_stage("pairrank_distfig", {"selections": sels}, needs={"up": [
        P.ref("pairrank_select", P.hash_of_dir("pairrank_select", p)) for p in sels.values()]})
    P.add_target(P.output("pairrank_distfig", fh))
    return rows
