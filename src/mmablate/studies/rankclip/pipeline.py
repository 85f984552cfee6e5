"""RankCLIP's place in the pipeline: its ablatable parts, metrics and stages (light imports only)."""
from __future__ import annotations

import math
from pathlib import Path

from ...errors import ConfigError
from ...pipeline import SEED
from ..spec import RANKCLIP as SPEC

TITLE = SPEC.caption
ABLATABLE = SPEC.ablatable
OUTPUTS = SPEC.stages
METRICS = SPEC.metric_records
DECAY_LABELS = SPEC.labels("loss.decay")


def dataset_name(scfg: dict, scale: str) -> str:
    return scfg["eval"]["dataset_name"]


def check_value(key: str, value) -> None:
    if key == "loss.rank_weight":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < 0:
            raise ValueError(f"rank_weight must be a finite number ≥ 0, got {value!r}")
    elif key == "loss.decay":
        if value not in DECAY_LABELS:
            raise ValueError(f"unknown decay {value!r}; known: {sorted(DECAY_LABELS)}")


def validate(scfg: dict, where: str) -> None:
    from ...training.schedule import check_warmup

    tc, data, ev = scfg["train"], scfg["data"], scfg["eval"]
    if scfg["loss"].get("scale", "paper") == "authors_code" and tc.get("epochs") == 1:
        raise ConfigError(f"{where}.loss.scale: authors_code ramps the ranking term by "
                          f"3·(epoch − 1)/(epochs − 1), which needs train.epochs ≥ 2 (got 1)")
    if (tc.get("steps") is None) == (tc.get("epochs") is None):
        raise ConfigError(f"{where}.train: set exactly one of steps and epochs, the other null "
                          f"(epochs: over the data's sample count)")
    if tc.get("steps") is not None:
        check_warmup(tc, where, "train")
    if (data.get("train_shards") is None) == (data.get("train_csv") is None):
        raise ConfigError(f"{where}.data: set exactly one of train_shards (webdataset shards) "
                          f"and train_csv (an open_clip CSV), the other null")
    if data.get("cache") and data.get("train_transform", "open_clip_train") == "open_clip_train":
        raise ConfigError(f"{where}.data.cache: a cached set is transformed once, which would "
                          f"freeze the random crop of train_transform open_clip_train; set "
                          f"data.train_transform: eval or data.cache: false")
    if ev.get("class_source", "files") == "files":
        for k in ("classnames", "templates"):
            if k not in ev:
                raise ConfigError(f"{where}.eval.{k}: required with eval.class_source files")
    if data["source"] == "files":
        for k in ("root", "eval_root"):
            if not Path(data.get(k, "")).is_dir():
                raise ConfigError(f"{where}.data.{k}: {data.get(k)!r} is not a directory")


def label(key: str, value, scfg: dict | None = None) -> str:
    if key == "loss.decay":
        return DECAY_LABELS[value]
    return f"{value:g}" if isinstance(value, float) else str(value)


def ablation_notes(scfg: dict, key: str, rows: list) -> list[str]:
    """What a table must say that its numbers cannot: under ``loss.scale: authors_code`` λ only
    switches the ranking term on (the authors' ``rankclip/train.py`` gates it on
    ``lambda1``/``lambda2`` > 0 and never multiplies by them), so the λ > 0 rows of a λ
    ablation train one objective and are equal by construction, not by a tie."""
    if key != "loss.rank_weight" or scfg["loss"].get("scale", "paper") != "authors_code":
        return []
    on = [r.label for r in rows if r.kind == "variant" and r.value > 0]
    if len(on) < 2:
        return []
    return [f"BY CONSTRUCTION: with loss.scale authors_code, λ only switches the ranking term on "
            f"(the authors' code never multiplies by it): rows {', '.join(on)} train the same "
            f"objective; their differences, if any, are run-to-run noise."]


def data_dirs(P, scfg: dict) -> tuple[str, str]:
    """(training data root, evaluation data root): the world's output or real dataset roots."""
    data = scfg["data"]
    if data["source"] == "world":
        d = P.world(P.config["world"])
        return d, d
    return data["root"], data["eval_root"]


def train_config(P, scfg: dict) -> tuple[str, dict]:
    """The CLIP pretraining stage config; λ = 0 makes the decay and the scale irrelevant
    (normalised away). ``loss.scale`` enters the stage config only when it is not the default
    ``paper``, so the paper-scaled jobs keep the hashes they had before the key existed."""
    loss = dict(scfg["loss"])
    scale = loss.pop("scale", "paper")
    if loss["rank_weight"] == 0:
        loss["decay"] = None
    elif scale != "paper":
        loss["scale"] = scale
    root, _ = data_dirs(P, scfg)
    data = {k: v for k, v in scfg["data"].items() if k not in ("source", "root", "eval_root")}
    cfg = {"model": scfg["model"], "train": scfg["train"], "loss": loss,
           "data": dict(data, root=root)}
    return P.add_stage("rankclip_train", cfg,
                       needs={"world": P.ref("world", P.hash_of_dir("world", root))}), cfg


def variant(P, vcfg: dict) -> tuple[str, dict]:
    th, _ = train_config(P, vcfg)
    _, eval_root = data_dirs(P, vcfg)
    eh = P.add_stage("rankclip_eval", {"train": th, "model": vcfg["model"], "eval": vcfg["eval"],
                                       "data": {"root": eval_root}},
                     needs={"model": P.ref("rankclip_train", th, SEED),
                            "world": P.ref("world", P.hash_of_dir("world", eval_root))})
    return th, {s: P.output("rankclip_eval", eh, s) for s in P.seeds}
