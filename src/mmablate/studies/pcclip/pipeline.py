"""PC-CLIP's place in the pipeline: ablatable parts, metrics and stages (light imports only).

Stages (each a job per distinct config; shared work is its own stage):

    pcclip_pairs      image pairs + descriptions (world pairs, or COCO at paper scale)  — once
    rankclip_train    the base CLIP (tiny: RankCLIP's stage with λ = 0, the same job)   — per seed
    pcclip_captioner  a small LM of the captioner's family trained on the world corpus  — per captioner (tiny)
    pcclip_captions   difference captions of the training pairs, filtered               — per captioner
    pcclip_embed      the base model's image embeddings of the training and evaluation
                      pairs (each distinct image once; read by the text-only finetunes and by
                      the evaluations of models whose image tower is the base's) — per base seed
    pcclip_finetune   PC-CLIP finetuning of one variant                                 — per variant × seed
    pcclip_eval       the metrics of a variant, or of the base model (reference row)     — per variant × seed
"""
from __future__ import annotations

import copy
from pathlib import Path

from ...errors import ConfigError
from ...pipeline import SEED
from ..spec import PCCLIP as SPEC
from . import benchmarks as _bench

TITLE = SPEC.caption
ABLATABLE = SPEC.ablatable
OUTPUTS = SPEC.stages
# the plan's metrics and, where eval.benchmarks is set, one column per dataset (benchmarks.py)
METRICS = {**SPEC.metric_records, **_bench.metric_records()}
VALUES = {p.key: SPEC.labels(p.key) for p in SPEC.parts}  # part key → value → label


def dataset_name(scfg: dict, scale: str) -> str:
    return scfg["eval"]["dataset_name"]


def table_metrics(scfg: dict, metrics: list) -> list:
    """With ``eval.benchmarks`` (paper scale), a plan's difference-based and zero-shot
    classification become one column per dataset of the authors' (each column naming it),
    followed by the COCO-pair / ImageNet-1K column they replace; without it the list is
    unchanged (the world)."""
    b = scfg["eval"].get("benchmarks")
    if not b:
        return metrics
    expand = {"diff_acc": [_bench.diff_id(t) for t in b.get("difference", _bench.DIFFERENCE)],
              "zeroshot_acc": [_bench.zeroshot_id(n) for n in b.get("zeroshot", _bench.ZEROSHOT)]}
    out = []
    for m in metrics:
        out += [x for x in expand.get(m, []) + [m] if x not in out]
    return out


def metric_labels(scfg: dict, scale: str) -> dict:
    """With the authors' benchmarks beside them, the project's own columns name their data."""
    if not scfg["eval"].get("benchmarks"):
        return {}
    rec = SPEC.metric_records
    coco = {m: f"{rec[m]['label']} (COCO pairs)"
            for m in ("diff_acc", "diff_mc_acc", "clipscore", "arithmetic_acc")}
    zs = scfg["eval"].get("zeroshot_name", "ImageNet-1K")
    return {**coco, "zeroshot_acc": f"{rec['zeroshot_acc']['label']} ({zs})"}


def check_value(key: str, value) -> None:
    if key in VALUES and value not in VALUES[key]:
        what = "captioner" if key == "captions.captioner" else key.split(".")[-1]
        raise ValueError(f"unknown {what} {value!r}; known: {sorted(VALUES[key])}")


def validate(scfg: dict, where: str) -> None:
    from .captioners import check_captioner

    caps = scfg["captions"].get("captioners") or {}
    used = {scfg["captions"]["captioner"]} | {
        v for ab in scfg["ablations"] if ab["key"] == "captions.captioner" for v in ab["values"]}
    for name in sorted(used):
        if name not in caps:
            raise ConfigError(f"{where}.captions.captioners: no definition of captioner {name!r} "
                              f"(defined: {sorted(caps)})")
        check_captioner(name, caps[name], f"{where}.captions.captioners.{name}")
    base = scfg["base"]
    if base["source"] not in ("rankclip", "pretrained"):
        raise ConfigError(f"{where}.base.source: {base['source']!r}; known: rankclip, pretrained")
    if base["source"] == "pretrained" and not isinstance(base.get("model"), dict):
        raise ConfigError(f"{where}.base.model: a pretrained base needs a model block "
                          f"(arch, pretrained, tokenizer)")
    from ...training.schedule import check_warmup

    check_warmup(scfg["finetune"], where, "finetune")
    ev = scfg["eval"]
    if ev.get("class_source", "files") == "files" and "classnames" not in ev:
        raise ConfigError(f"{where}.eval.classnames: required with eval.class_source files (or "
                          f"class_source: imagenet1k for ImageNet-1K val)")
    b = ev.get("benchmarks")
    if b:
        need = list(b.get("zeroshot", _bench.ZEROSHOT)) + [
            _bench.DIFF_DATASET[t] for t in b.get("difference", _bench.DIFFERENCE)]
        for name in dict.fromkeys(need):
            if not (b.get("roots") or {}).get(name):
                raise ConfigError(f"{where}.eval.benchmarks.roots.{name}: no dataset root (needed "
                                  f"by eval.benchmarks' zeroshot/difference lists)")
    pairs = scfg["pairs"]
    if pairs["source"] == "coco":
        for k in ("captions_json", "eval_csv"):
            if not Path(pairs.get(k, "")).is_file():
                raise ConfigError(f"{where}.pairs.{k}: {pairs.get(k)!r} is not a file")
        if not Path(pairs.get("image_dir", "")).is_dir():
            raise ConfigError(f"{where}.pairs.image_dir: {pairs.get('image_dir')!r} is not a "
                              f"directory")
    elif pairs["source"] != "world":
        raise ConfigError(f"{where}.pairs.source: {pairs['source']!r}; known: world, coco")


def label(key: str, value, scfg: dict | None = None) -> str:
    """The paper's name of a value; a captioner trained here on the world says so (a small LM of
    the family, not the paper's model)."""
    name = VALUES.get(key, {}).get(value, str(value))
    if key == "captions.captioner" and scfg is not None:
        spec = (scfg["captions"].get("captioners") or {}).get(value) or {}
        if spec.get("family") not in (None, "template") and not spec.get("model"):
            return f"{name} (world {spec.get('arch', value)} LM)"
    return name


# ---- stages -------------------------------------------------------------------------------------
def _rankclip_base(P):
    """The base CLIP of the world: RankCLIP's pretraining stage with λ = 0 (plain CLIP loss)."""
    from ..rankclip.pipeline import data_dirs, train_config

    rcfg = copy.deepcopy(P.config["studies"]["rankclip"])
    rcfg["loss"]["rank_weight"] = 0.0
    th, _ = train_config(P, rcfg)
    _, eval_root = data_dirs(P, rcfg)
    return {"dir": P.stage_dir("rankclip_train", th), "hash": th}, rcfg["model"], eval_root


def base_model(P, scfg: dict):
    """(base: {dir, hash} or None, model block, world root for zero-shot or None)."""
    if scfg["base"]["source"] == "rankclip":
        if "rankclip" not in P.config["studies"]:
            raise ConfigError(f"{P.where('studies.pcclip.base.source')}: 'rankclip' needs the "
                              f"rankclip study's config (it may be disabled)")
        return _rankclip_base(P)
    return None, scfg["base"]["model"], None


def pairs_stage(P, scfg: dict) -> str:
    pc = dict(scfg["pairs"])
    if pc["source"] == "world":
        w = P.config["world"]
        pc.update(colours=w["colours"], shapes=w["shapes"], image_size=w["image_size"])
    return P.output("pcclip_pairs", P.add_stage("pcclip_pairs", pc, needs={}))


def captions_stage(P, scfg: dict, pairs: str) -> str:
    cc = scfg["captions"]
    name = cc["captioner"]
    spec = cc["captioners"][name]
    source = spec.get("model")
    pairs_job = P.ref("pcclip_pairs", P.hash_of_dir("pcclip_pairs", pairs))
    kh = None
    if spec["family"] != "template" and source is None:  # trained here (tiny scale)
        kh = P.add_stage("pcclip_captioner", {"name": name, "spec": spec, "pairs": pairs,
                                              "seed": cc["seed"]}, needs={"pairs": pairs_job})
        source = f"{P.stage_dir('pcclip_captioner', kh)}/model"
    cfg = {"name": name, "spec": spec, "source": source, "pairs": pairs, "filter": cc["filter"],
           "batch_size": cc["batch_size"], "max_new_tokens": cc["max_new_tokens"]}
    return P.add_stage("pcclip_captions", cfg, needs={
        "pairs": pairs_job, "captioner": P.ref("pcclip_captioner", kh)})


def _common(P, scfg):
    base, model, world_root = base_model(P, scfg)
    return base, model, world_root, pairs_stage(P, scfg)


def _needs(P, base, pairs) -> dict:
    """The inputs every pcclip job on these pairs and this base model reads."""
    return {"pairs": P.ref("pcclip_pairs", P.hash_of_dir("pcclip_pairs", pairs)),
            "base": P.ref("rankclip_train", base["hash"] if base else None, SEED)}


def embed_stage(P, scfg: dict) -> str:
    """The base model's image embeddings of the training and evaluation pairs: one job per base
    model and pairs, shared by every text-encoder-only variant and the base model's evaluation."""
    base, model, _, pairs = _common(P, scfg)
    return P.add_stage("pcclip_embed", {"base": base, "model": model, "pairs": pairs,
                                        "loader": scfg.get("loader") or {}},
                       needs=_needs(P, base, pairs))


def eval_stage(P, scfg: dict, finetune_hash: str | None, embed: str | None = None) -> dict:
    """`embed`: the `embed_stage` job whose evaluation-pair embeddings stand for the model's
    (its image tower is the base model's), or None (encode them)."""
    base, model, world_root, pairs = _common(P, scfg)
    wh = P.hash_of_dir("world", world_root) if world_root is not None else None
    eh = P.add_stage("pcclip_eval", {"base": base, "model": model, "finetune": finetune_hash,
                                     "pairs": pairs, "eval": scfg["eval"],
                                     "loader": scfg.get("loader") or {}, "embed": embed,
                                     "world_root": world_root},
                     needs={"model": P.ref("pcclip_finetune", finetune_hash, SEED),
                            "embed": P.ref("pcclip_embed", embed, SEED),
                            "world": P.ref("world", wh), **_needs(P, base, pairs)})
    return {s: P.output("pcclip_eval", eh, s) for s in P.seeds}


def variant(P, vcfg: dict) -> tuple[str, dict]:
    base, model, _, pairs = _common(P, vcfg)
    ch = captions_stage(P, vcfg, pairs)
    fc = vcfg["finetune"]
    embed = None
    if fc["encoders"] == "text":  # image embeddings once per base model, shared by these variants
        embed = embed_stage(P, vcfg)
    fh = P.add_stage("pcclip_finetune", {"base": base, "model": model, "pairs": pairs,
                                         "captions": ch, "embed": embed, "finetune": fc},
                     needs={"captions": P.ref("pcclip_captions", ch),
                            "embed": P.ref("pcclip_embed", embed, SEED), **_needs(P, base, pairs)})
    return fh, eval_stage(P, vcfg, fh, embed)


def references(P, scfg: dict):
    """The base model, not finetuned (subtraction to combine), as a reference row."""
    from ...pipeline import Row

    evals = eval_stage(P, scfg, None, embed_stage(P, scfg))
    h = Path(next(iter(evals.values()))).parent.parent.name
    return [Row("base CLIP (not finetuned)", None, False, h, evals, kind="reference")]
