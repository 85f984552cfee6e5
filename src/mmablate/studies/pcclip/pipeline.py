"""PC-CLIP's place in the pipeline: ablatable parts, metrics and stages (light imports only).

Stages (each a job per distinct config; shared work is its own stage):

    pcclip_pairs      image pairs + descriptions (world pairs, or COCO at paper scale)  — once
    rankclip_train    the base CLIP (tiny: the shared λ = 0 CLIP, mmablate.studies.shared) — per seed
    pcclip_captioner  a small LM of the captioner's family trained on the world corpus  — per captioner (tiny)
    pcclip_captions   difference captions of the training pairs, filtered               — per captioner
    pcclip_embed      the base model's image embeddings of the training and evaluation
                      pairs (each distinct image once; read by the text-only finetunes and by
                      the evaluations of models whose image tower is the base's) — per base seed
    pcclip_finetune   PC-CLIP finetuning of one variant                                 — per variant × seed
    pcclip_eval       the metrics of a variant, or of the base model (reference row)     — per variant × seed
"""
from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ...pipeline import SEED, ref
from ..protocol import StudyPipeline
from ..shared import clip_data, world_clip
from ..spec import PCCLIP as SPEC
from . import benchmarks as _bench


# ---- stages -------------------------------------------------------------------------------------
def base_model(P, scfg: dict):
    """(base: {dir, hash} or None, its job or None, model block, world root for zero-shot or
    None)."""
    if scfg["base"]["source"] == "rankclip":
        if "rankclip" not in P.config["studies"]:
            raise ConfigError(f"{P.where('studies.pcclip.base.source')}: 'rankclip' needs the "
                              f"rankclip study's config (it may be disabled)")
        job, rcfg = world_clip(P)
        _, eval_root, _ = clip_data(P, rcfg)
        return {"dir": job.dir, "hash": job.hash}, job, rcfg["model"], eval_root
    return None, None, scfg["base"]["model"], None


def pairs_stage(P, scfg: dict):
    pc = dict(scfg["pairs"])
    if pc["source"] == "world":
        w = P.config["world"]
        pc.update(colours=w["colours"], shapes=w["shapes"], image_size=w["image_size"])
    return P.add_stage("pcclip_pairs", pc, needs={})


def captions_stage(P, scfg: dict, pairs):
    cc = scfg["captions"]
    name = cc["captioner"]
    spec = cc["captioners"][name]
    source = spec.get("model")
    captioner = None
    if spec["family"] != "template" and source is None:  # trained here (tiny scale)
        captioner = P.add_stage("pcclip_captioner", {"name": name, "spec": spec,
                                                     "pairs": pairs.output(), "seed": cc["seed"]},
                                needs={"pairs": pairs.ref()})
        source = f"{captioner.dir}/model"
    cfg = {"name": name, "spec": spec, "source": source, "pairs": pairs.output(),
           "filter": cc["filter"], "batch_size": cc["batch_size"],
           "max_new_tokens": cc["max_new_tokens"]}
    return P.add_stage("pcclip_captions", cfg, needs={"pairs": pairs.ref(),
                                                      "captioner": ref(captioner)})


def _common(P, scfg):
    base, base_job, model, world_root = base_model(P, scfg)
    return base, base_job, model, world_root, pairs_stage(P, scfg)


def _needs(base_job, pairs) -> dict:
    """The inputs every pcclip job on these pairs and this base model reads."""
    return {"pairs": pairs.ref(), "base": ref(base_job, SEED)}


def embed_stage(P, scfg: dict):
    """The base model's image embeddings of the training and evaluation pairs: one job per base
    model and pairs, shared by every text-encoder-only variant and the base model's evaluation."""
    base, base_job, model, _, pairs = _common(P, scfg)
    return P.add_stage("pcclip_embed", {"base": base, "model": model, "pairs": pairs.output(),
                                        "loader": scfg.get("loader") or {}},
                       needs=_needs(base_job, pairs))


def eval_stage(P, scfg: dict, finetune, embed=None) -> dict:
    """`finetune`: the variant's finetuning job, or None (the base model); `embed`: the
    `embed_stage` job whose evaluation-pair embeddings stand for the model's (its image tower is
    the base model's), or None (encode them)."""
    base, base_job, model, world_root, pairs = _common(P, scfg)
    world = P.job_at("world", world_root) if world_root is not None else None
    ev = P.add_stage("pcclip_eval", {"base": base, "model": model,
                                     "finetune": finetune.hash if finetune else None,
                                     "pairs": pairs.output(), "eval": scfg["eval"],
                                     "loader": scfg.get("loader") or {},
                                     "embed": embed.hash if embed else None,
                                     "world_root": world_root},
                     needs={"model": ref(finetune, SEED), "embed": ref(embed, SEED),
                            "world": ref(world), **_needs(base_job, pairs)})
    return ev, {s: ev.output(s) for s in P.seeds}


class PCCLIP(StudyPipeline):
    spec = SPEC

    def table_metrics(self, scfg: dict, metrics: list) -> list:
        """With ``eval.benchmarks`` (paper scale), a plan's difference-based and zero-shot
        classification become one column per dataset of the authors' (each column naming it),
        followed by the COCO-pair / ImageNet-1K column they replace; without it the list is
        unchanged (the world)."""
        b = scfg["eval"].get("benchmarks")
        if not b:
            return metrics
        expand = {"diff_acc": [_bench.diff_id(t) for t in b.get("difference", _bench.DIFFERENCE)],
                  "zeroshot_acc": [_bench.zeroshot_id(n)
                                   for n in b.get("zeroshot", _bench.ZEROSHOT)]}
        out = []
        for m in metrics:
            out += [x for x in expand.get(m, []) + [m] if x not in out]
        return out

    def metric_labels(self, scfg: dict, scale: str) -> dict:
        """With the authors' benchmarks beside them, the project's own columns name their
        data."""
        if not scfg["eval"].get("benchmarks"):
            return {}
        rec = SPEC.metric_records
        coco = {m: f"{rec[m]['label']} (COCO pairs)"
                for m in ("diff_acc", "diff_mc_acc", "clipscore", "arithmetic_acc")}
        zs = scfg["eval"].get("zeroshot_name", "ImageNet-1K")
        return {**coco, "zeroshot_acc": f"{rec['zeroshot_acc']['label']} ({zs})"}

    def validate(self, scfg: dict, where: str) -> None:
        from ...training.schedule import check_warmup
        from .captioners import check_captioner

        caps = scfg["captions"].get("captioners") or {}
        used = {scfg["captions"]["captioner"]} | {
            v for ab in scfg["ablations"] if ab["key"] == "captions.captioner"
            for v in ab["values"]}
        for name in sorted(used):
            if name not in caps:
                raise ConfigError(f"{where}.captions.captioners: no definition of captioner "
                                  f"{name!r} (defined: {sorted(caps)})")
            check_captioner(name, caps[name], f"{where}.captions.captioners.{name}")
        base = scfg["base"]
        if base["source"] == "pretrained" and not isinstance(base.get("model"), dict):
            raise ConfigError(f"{where}.base.model: a pretrained base needs a model block "
                              f"(arch, pretrained, tokenizer)")
        check_warmup(scfg["finetune"], where, "finetune")
        ev = scfg["eval"]
        if ev.get("class_source", "files") == "files" and "classnames" not in ev:
            raise ConfigError(f"{where}.eval.classnames: required with eval.class_source files "
                              f"(or class_source: imagenet1k for ImageNet-1K val)")
        b = ev.get("benchmarks")
        if b:
            need = list(b.get("zeroshot", _bench.ZEROSHOT)) + [
                _bench.DIFF_DATASET[t] for t in b.get("difference", _bench.DIFFERENCE)]
            for name in dict.fromkeys(need):
                if not (b.get("roots") or {}).get(name):
                    raise ConfigError(f"{where}.eval.benchmarks.roots.{name}: no dataset root "
                                      f"(needed by eval.benchmarks' zeroshot/difference lists)")
        pairs = scfg["pairs"]
        if pairs["source"] == "coco":
            for k in ("captions_json", "eval_csv"):
                if not Path(pairs.get(k, "")).is_file():
                    raise ConfigError(f"{where}.pairs.{k}: {pairs.get(k)!r} is not a file")
            if not Path(pairs.get("image_dir", "")).is_dir():
                raise ConfigError(f"{where}.pairs.image_dir: {pairs.get('image_dir')!r} is not "
                                  f"a directory")

    def training_blocks(self, scfg: dict) -> dict:
        caps = scfg["captions"].get("captioners") or {}
        return {"finetune": scfg["finetune"],
                **{f"captions.captioners.{n}.train": c["train"] for n, c in caps.items()
                   if isinstance(c.get("train"), dict)}}

    def label(self, key: str, value, scfg: dict | None = None) -> str:
        """The paper's name of a value; a captioner trained here on the world says so (a small
        LM of the family, not the paper's model)."""
        name = super().label(key, value, scfg)
        if key == "captions.captioner" and scfg is not None:
            spec = (scfg["captions"].get("captioners") or {}).get(value) or {}
            if spec.get("family") not in (None, "template") and not spec.get("model"):
                return f"{name} (world {spec.get('arch', value)} LM)"
        return name

    def variant(self, P, vcfg: dict):
        base, base_job, model, _, pairs = _common(P, vcfg)
        captions = captions_stage(P, vcfg, pairs)
        fc = vcfg["finetune"]
        embed = None
        if fc["encoders"] == "text":  # image embeddings once per base model, shared by these
            embed = embed_stage(P, vcfg)
        ft = P.add_stage("pcclip_finetune", {"base": base, "model": model,
                                             "pairs": pairs.output(), "captions": captions.hash,
                                             "embed": embed.hash if embed else None,
                                             "finetune": fc},
                         needs={"captions": captions.ref(), "embed": ref(embed, SEED),
                                **_needs(base_job, pairs)})
        return ft, eval_stage(P, vcfg, ft, embed)[1]

    def references(self, P, scfg: dict):
        """The base model, not finetuned (subtraction to combine), as a reference row."""
        from ...pipeline import Row

        ev, evals = eval_stage(P, scfg, None, embed_stage(P, scfg))
        return [Row("base CLIP (not finetuned)", None, False, ev.hash, evals, kind="reference")]


STUDY = PCCLIP()
