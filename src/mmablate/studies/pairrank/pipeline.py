"""Quality-aware pair ranking (plan 000): its ablatable parts, metrics and stages (light imports).

DAG per study config (identical stage configs are one job):

  pairrank_world ─┬─ pretrain.parquet ── pairrank_base (UNet, once) ─────────────┐
  (Pick-a-Pic     ├─ pairs_reward / aesthetic ── pairrank_reward ×4 (twins, once) ┤
   schema)        └─ pairs_train ── pairrank_score (ψ, once) ── pairrank_select ──┤
  rankclip_train (the shared world CLIP, λ = 0) feeds the text encoder and the twins         │
                                         pairrank_dpo (LoRA, per seed) ── pairrank_eval (per seed)
  adaptive threshold: per candidate fraction, select(fixed) → short dpo → eval on val prompts,
  then select(adaptive) reads those validation results.
"""
from __future__ import annotations

import copy

from ...errors import ConfigError
from ...pipeline import ref
from ...util import get_path, set_path
from ..protocol import StudyPipeline
from ..shared import world_clip
from ..spec import PAIRRANK as SPEC

QUALITY_LABELS = SPEC.labels("selection.quality")
THRESHOLD_LABELS = SPEC.labels("selection.threshold")
REAL_NAMES = {"aesthetic": "Aesthetic Score", "image_reward": "ImageReward",
              "pickscore": "PickScore", "hpsv2": "HPSv2"}  # the paper scale's column labels
EVAL_METRICS = ("aesthetic", "image_reward", "pickscore", "hpsv2")


# ---- stages --------------------------------------------------------------------------------
# Each stage config carries the paths its code opens; its `needs` name the jobs that write them
# (by stage and hash), which is what the rules' one input function reads.
def world_job(P, scfg):
    """The preference-pair world job (None with real data files)."""
    if scfg["data"]["source"] != "world":
        return None
    return P.add_stage("pairrank_world", scfg["world"], needs={})


def data_paths(P, scfg) -> dict:
    if scfg["data"]["source"] == "world":
        d = world_job(P, scfg).dir
        return {"pairs": f"{d}/pairs_train.parquet", "prompts": f"{d}/prompts.json",
                "pretrain": f"{d}/pretrain.parquet", "reward_pairs": f"{d}/pairs_reward.parquet",
                "aesthetic": f"{d}/aesthetic.parquet"}
    return {"pairs": scfg["data"]["pairs"], "prompts": scfg["data"]["prompts"]}


def _clip(P, scfg):
    """(block, ref): the shared world CLIP (mmablate.studies.shared; λ = 0: a plain CLIP-loss
    model) of seed `clip_seed`."""
    job, rcfg = world_clip(P, rank_weight=0)  # this study's λ = 0 job: the integer 0 (its hash)
    seed = scfg["clip_seed"]
    return {"model": rcfg["model"], "weights": job.output(seed)}, job.ref(seed)


def _model(P, scfg):
    """(block, ref): the base text-to-image model (the world UNet pretrained here, or SD)."""
    m = scfg["model"]
    if m["kind"] == "sd":
        return {"kind": "sd", "pretrained": m["pretrained"]}, None
    d = data_paths(P, scfg)
    clip, clip_ref = _clip(P, scfg)
    job = P.add_stage("pairrank_base", {"unet": m["unet"], "scheduler": m["scheduler"],
                                        "train": m["train"], "seed": m["seed"],
                                        "data": d["pretrain"], "text_encoder": clip},
                      needs={"up": [ref(world_job(P, scfg)), clip_ref]})
    return {"kind": "world", "dir": job.dir}, job.ref()


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
    job = P.add_stage("pairrank_reward", cfg, needs={"up": [clip_ref, ref(world_job(P, scfg))]})
    return {"source": "twin", "path": job.output()}, job.ref()


def _scores(P, scfg):
    d = data_paths(P, scfg)
    reward, reward_ref = _reward(P, scfg, scfg["rewards"]["psi"])
    # the loader's settings enter the stage config only where set (the paper scale's)
    loader = {k: scfg["rewards"][k] for k in ("batch_size", "num_workers") if k in scfg["rewards"]}
    job = P.add_stage("pairrank_score", {"pairs": d["pairs"], "reward": reward, **loader},
                      needs={"up": [ref(world_job(P, scfg)), reward_ref]})
    return job


def _select(P, scfg, threshold, top_fraction, val=None, val_refs=()):
    sel = scfg["selection"]
    scores = _scores(P, scfg)
    cfg = {"pairs": data_paths(P, scfg)["pairs"], "scores": scores.output(),
           "quality": sel["quality"], "threshold": threshold, "eps": sel["eps"],
           "top_fraction": top_fraction if threshold in ("fixed",) else None,
           "val": val}
    return P.add_stage("pairrank_select", cfg,
                       needs={"up": [ref(world_job(P, scfg)), scores.ref(), *val_refs]})


def _dpo(P, scfg, selection, train):
    """The Diffusion-DPO job on the pairs of `selection` (a pairrank_select job)."""
    model, model_ref = _model(P, scfg)
    return P.add_stage("pairrank_dpo", {"model": model, "selection": selection.output(),
                                        "train": train},
                       needs={"up": [model_ref, selection.ref()]})


def _eval(P, scfg, lora, split: str, metrics, title: str):
    """`lora`: (DPO job, seed) of the adapter sampled with, or None (the base model)."""
    ev = scfg["eval"]
    model, model_ref = _model(P, scfg)
    rewards = {m: _reward(P, scfg, m) for m in metrics}
    lora_dir = f"{lora[0].dir}/s{lora[1]}/lora" if lora else None
    cfg = {"model": model, "lora": lora_dir, "prompts": data_paths(P, scfg)["prompts"],
           "split": split, "per_prompt": ev["per_prompt"] if split == "eval" else ev["val_per_prompt"],
           "sampling": ev["sampling"], "metrics": {m: b for m, (b, _) in rewards.items()},
           "oracle_colours": scfg["world"]["colours"] if scfg["data"]["source"] == "world" else None,
           "title": title}
    return P.add_stage("pairrank_eval", cfg, needs={"up": [
        model_ref, lora[0].ref(lora[1]) if lora else None,
        ref(world_job(P, scfg)), *(r for _, r in rewards.values())]})


def selection(P, scfg):
    """The pairrank_select job of the config's quality and threshold."""
    sel = scfg["selection"]
    if sel["threshold"] != "adaptive":
        return _select(P, scfg, sel["threshold"], sel["top_fraction"])
    ad = sel["adaptive"]
    train = {**scfg["dpo"], "steps": ad["steps"]}
    val, refs = {}, []
    for f in ad["fractions"]:
        dpo = _dpo(P, scfg, _select(P, scfg, "fixed", f), train)
        ev = _eval(P, scfg, (dpo, ad["seed"]), "val", [scfg["rewards"]["psi"]],
                   f"validation, top {f:g}")
        val[f"{f:g}"] = ev.output(ad["seed"])
        refs.append(ev.ref(ad["seed"]))
    return _select(P, scfg, "adaptive", None, {"metric": scfg["rewards"]["psi"], "runs": val},
                   refs)


class PairRank(StudyPipeline):
    spec = SPEC

    def metric_labels(self, scfg: dict, scale: str) -> dict:
        """Column labels: the real metric names only where the real models score (paper
        scale)."""
        if scfg["rewards"]["source"] == "paper":
            return dict(REAL_NAMES)
        return {m: self.METRICS[m]["label"] for m in self.METRICS}

    def extra_metrics(self, scfg: dict) -> list:
        """On the world, every table also shows the oracle (does the sample show the prompt's
        colour), the one metric that is ground truth rather than a learnt reward."""
        return ["oracle"] if scfg["data"]["source"] == "world" else []

    def dataset_name(self, scfg: dict, scale: str) -> str:
        if scfg["data"]["source"] == "world":
            return (f"held-out world prompts ({scfg['world']['n_eval_prompts']}×"
                    f"{scfg['eval']['per_prompt']} samples); metrics are world twins trained "
                    f"with each metric's recipe, not the published models")
        return scfg["eval"]["dataset_name"]

    def validate(self, scfg: dict, where: str) -> None:
        src = scfg["data"]["source"]
        if src == "files":
            from pathlib import Path

            for k in ("pairs", "prompts"):
                if not Path(scfg["data"].get(k) or "").exists():
                    raise ConfigError(f"{where}.data.{k}: {scfg['data'].get(k)!r} does not exist")
        kind = scfg["model"]["kind"]
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
                raise ConfigError(f"{where}.model.unet.sample_size: {u['sample_size']} differs "
                                  f"from world.image_size {scfg['world']['image_size']}")

    def training_blocks(self, scfg: dict) -> dict:
        train = scfg["model"].get("train")
        return {**({"model.train": train} if train else {}), "dpo": scfg["dpo"]}

    def variant(self, P, vcfg: dict):
        dpo = _dpo(P, vcfg, selection(P, vcfg), vcfg["dpo"])
        title = (f"Diffusion-DPO, Q = {QUALITY_LABELS[vcfg['selection']['quality']]}, "
                 f"{THRESHOLD_LABELS[vcfg['selection']['threshold']]}")
        evals = {s: _eval(P, vcfg, (dpo, s), "eval", EVAL_METRICS, title).output(s)
                 for s in P.seeds}
        return dpo, evals

    def references(self, P, scfg: dict) -> list:
        from ...pipeline import Row

        ev = _eval(P, scfg, None, "eval", EVAL_METRICS, "base model (no DPO)")
        rows = [Row("base model (no DPO)", None, False, ev.hash,
                    {s: ev.output(s) for s in P.seeds}, kind="reference")]
        # One figure of the ψ-quality distributions with every threshold's cut drawn on it.
        sels = {}
        for ab in P.study_ablations["pairrank"]:
            base = get_path(scfg, ab["key"])
            for v in [base] + [x for x in ab["values"] if x != base]:
                vcfg = copy.deepcopy(scfg)
                set_path(vcfg, ab["key"], v)
                q, t = vcfg["selection"]["quality"], vcfg["selection"]["threshold"]
                sels[f"{q}|{t}"] = selection(P, vcfg)
        fig = P.add_stage("pairrank_distfig", {"selections": {k: j.output()
                                                              for k, j in sels.items()}},
                          needs={"up": [j.ref() for j in sels.values()]})
        P.add_target(fig.output())
        return rows


STUDY = PairRank()
