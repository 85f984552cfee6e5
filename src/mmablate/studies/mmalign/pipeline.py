"""The multimodal-LLM alignment study (plan 004): BDHS and Mixed-DPO. Light imports only.

Stages (each a job, shared where the config is the same):
  mmalign_data  — the world's instruction data, POVID-style pairs and benchmarks (tiny/smoke);
  mmalign_sft   — the tiny LLaVA built from config and instruction-tuned: the shared base
                  (paper scale: skipped, the base is llava-hf/llava-v1.6-vicuna-7b-hf);
  mmalign_bdhs  — BDHS negatives of every offline pair from the reference (= base) model, once;
  mmalign_dpo   — per variant and seed: DPO (γ-averaged, p-mixed), then (``eval.jobs:
                  per_model``, the tiny default) the benchmarks in the same job;
  mmalign_eval  — (per_model) the benchmarks of the base model itself (the reference row);
  mmalign_bench — (``eval.jobs: per_benchmark``, the paper default) one job per (model,
                  benchmark), GPU: a failing benchmark fails only its job;
  mmalign_merge — (per_benchmark) a model's benchmark records as its one evaluation record
                  (seconds, no GPU).
"""
from __future__ import annotations

from ...errors import ConfigError
from ...pipeline import ref
from ..protocol import StudyPipeline
from ..spec import MMALIGN as SPEC

POPE_SPLITS = ("random", "popular", "adversarial")


# ---- stages --------------------------------------------------------------------------------
def _world(P, scfg):
    """(world data job, benchmark paths, pairs, scenes) of the world, registering its stage."""
    data = P.add_stage("mmalign_data", scfg["data"]["world"], needs={})
    d = data.dir
    I = f"{d}/images"
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
    return data, bench, {"file": f"{d}/povid/povid_pairs.json", "images": I}, f"{d}/scenes.jsonl"


def resolved(P, scfg):
    """(base model, sft job or None, world data job or None, benchmarks, pairs, scenes) for
    this study config."""
    if scfg["data"]["source"] == "world":
        data, bench, pairs, scenes = _world(P, scfg)
        d = data.dir
        w = scfg["data"]["world"]
        sft = {"seed": scfg["sft"]["seed"], "train": {k: v for k, v in scfg["sft"].items()
                                                      if k != "seed"},
               "model": scfg["model"]["tiny"], "colours": w["colours"], "shapes": w["shapes"],
               "data": {"file": f"{d}/sft/llava_instruct.json", "images": f"{d}/images"}}
        sft_job = P.add_stage("mmalign_sft", sft, needs={"world": data.ref()})
        base = f"{sft_job.dir}/model"
    else:
        sft_job, data, bench, scenes = None, None, scfg["eval"]["benchmarks"], None
        pairs = scfg["data"]["pairs"]
        base = scfg["model"]["base"]
    pairs = {**pairs, "limit": scfg["data"].get("pairs_limit")}
    return base, sft_job, data, bench, pairs, scenes


def eval_config(scfg, bench, scenes, results=None) -> dict:
    e = {k: v for k, v in scfg["eval"].items() if k not in ("benchmarks", "dataset_name")}
    out = {**e, "benchmarks": bench, "judge": scfg["judge"], "scenes": scenes}
    if scfg["judge"]["kind"] == "endpoint" and results is not None:
        # every judge request and answer, shared by all jobs (keyed by the request's content)
        out["judge_cache"] = scfg["judge"].get("cache_dir") or f"{results}/mmalign/judge_cache"
    return out


def per_benchmark(scfg) -> bool:
    return scfg["eval"].get("jobs", "per_model") == "per_benchmark"


def benchmark_jobs(P, model: str, seed: int, ecfg: dict, needs: dict, train=None):
    """The (model, benchmark) jobs of one model and the job merging their records; returns the
    merging job. `needs`: the upstream jobs the model needs (its DPO job, the world); `train`:
    the DPO job's Ref whose training summary the merged record carries."""
    from .evaluate import BENCHMARKS

    refs = []
    for b in BENCHMARKS:
        bench = P.add_stage("mmalign_bench", {"model": model, "seed": seed, "benchmark": b,
                                              "eval": ecfg}, needs=needs)
        refs.append(bench.ref())
    return P.add_stage("mmalign_merge", {"model": model, "seed": seed,
                                         "benchmarks": list(BENCHMARKS),
                                         "bench_jobs": [r.h for r in refs]},
                       needs={"records": refs + ([train] if train else [])})


def _needs(sft_job, data) -> dict:
    """The world data (where the scenes are the world's) and the SFT base a job reads."""
    return {"world": ref(data), "sft": ref(sft_job)}


def bdhs_stage(P, scfg, base, sft_job, data, pairs, scenes):
    b = {k: v for k, v in scfg["bdhs"].items() if k != "gamma"}  # γ only weights the loss
    return P.add_stage("mmalign_bdhs", {"reference": base,
                                        "sft": sft_job.hash if sft_job else None,
                                        "pairs": pairs, "bdhs": b,
                                        "seed": scfg["bdhs"]["seed"], "scenes": scenes},
                       needs=_needs(sft_job, data))


def base_eval(P, scfg, base, sft_job, data, bench, scenes):
    """The base model's evaluation job (``eval.jobs: per_model``): the reference row."""
    ecfg = eval_config(scfg, bench, scenes, P.results)
    return P.add_stage("mmalign_eval", {"model": base, "sft": sft_job.hash if sft_job else None,
                                        "eval": ecfg},
                       needs=_needs(sft_job, data))


class MMAlign(StudyPipeline):
    spec = SPEC

    def extra_metrics(self, scfg: dict) -> list:
        """Informativeness beside the plan's hallucination metrics, at every scale: description
        length and the share of descriptions naming no object (the Recall-coco descriptions);
        on the world also MMHal's hallucination rate split by its two question types
        (descriptions, attribute questions). Every MMHal type's split is in the records at
        every scale."""
        extra = ["desc_words", "desc_empty"]
        if scfg["data"]["source"] == "world":
            extra += ["mmhalv_holistic", "mmhalv_attribute"]
        return extra

    def dataset_name(self, scfg: dict, scale: str) -> str:
        if scfg["data"]["source"] == "world":
            return ("the synthetic world (world versions of POPE, MMHal, LLaVA-W, MM-Vet, "
                    "TextVQA, GQA, COCO recall; oracle judge)")
        from .judge_config import bench_settings

        j = scfg["judge"]
        bench = ", ".join(f"{b} {bench_settings(j['bench'], b)['model']}"
                          for b in ("mmhal", "llavaw", "mmvet"))
        return "POPE, MMHal-Bench, LLaVA-Bench-in-the-wild, MM-Vet, TextVQA, GQA, COCO " \
               f"(judges: online pairs {j['rank'].get('model')}; {bench})"

    def validate(self, scfg: dict, where: str) -> None:
        from .judge_config import check_config

        check_config(scfg["judge"], f"{where}.judge", scfg["data"]["source"])
        if scfg["data"]["source"] == "files":
            data = scfg["data"]
            if not scfg["model"].get("base"):
                raise ConfigError(f"{where}.model.base: real data need a base model id or "
                                  f"directory")
            for k in ("file", "images"):
                if not data.get("pairs", {}).get(k):
                    raise ConfigError(f"{where}.data.pairs.{k}: required with data.source: files")
            if not scfg["eval"].get("benchmarks"):
                raise ConfigError(f"{where}.eval.benchmarks: required with data.source: files")

    def training_blocks(self, scfg: dict) -> dict:
        return {"sft": scfg["sft"], "train": scfg["train"]}

    def label(self, key: str, value, scfg: dict | None = None) -> str:
        name = "γ" if key == "bdhs.gamma" else "p"
        return f"{name} = {value:g}" if isinstance(value, (int, float)) else str(value)

    def variant(self, P, vcfg: dict):
        base, sft_job, data, bench, pairs, scenes = resolved(P, vcfg)
        sh = sft_job.hash if sft_job else None
        gamma = vcfg["bdhs"]["gamma"]
        bdhs = bdhs_stage(P, vcfg, base, sft_job, data, pairs, scenes) if gamma < 1 else None
        cfg = {"model": {"base": base, "lora": vcfg["model"].get("lora")}, "sft": sh,
               "bdhs_stage": bdhs.hash if bdhs else None,
               "bdhs_file": bdhs.output() if bdhs else None,
               "pairs": pairs, "bdhs": {"gamma": gamma}, "mixed_dpo": vcfg["mixed_dpo"],
               "dpo": vcfg["dpo"], "train": vcfg["train"], "judge": vcfg["judge"],
               "scenes": scenes, "eval": eval_config(vcfg, bench, scenes, P.results)}
        if per_benchmark(vcfg):  # the benchmarks run in their own jobs: training ignores them
            cfg["eval"] = {"jobs": "per_benchmark",
                           **({"judge_cache": cfg["eval"]["judge_cache"]}
                              if "judge_cache" in cfg["eval"] else {})}
        needs = {**_needs(sft_job, data), "bdhs": ref(bdhs)}
        if not per_benchmark(vcfg):
            # the base model's evaluation: the job flags a collapse of its answers against it
            ev = base_eval(P, vcfg, base, sft_job, data, bench, scenes)
            cfg["reference_eval"] = ev.output()
            needs["reference"] = ev.ref()
        dpo = P.add_stage("mmalign_dpo", cfg, needs=needs)
        if not per_benchmark(vcfg):
            return dpo, {s: dpo.output(s) for s in P.seeds}
        ecfg = eval_config(vcfg, bench, scenes, P.results)
        evals = {}
        for seed in P.seeds:
            model = f"{dpo.dir}/s{seed}/model"
            evals[seed] = benchmark_jobs(P, model, seed, ecfg,
                                         {**_needs(sft_job, data), "model": dpo.ref(seed)},
                                         train=dpo.ref(seed)).output()
        return dpo, evals

    def references(self, P, scfg):
        """The base model (SFT at tiny scale, LLaVA-1.6 at paper scale) as the reference row."""
        from ...pipeline import Row

        base, sft_job, data, bench, _, scenes = resolved(P, scfg)
        ecfg = eval_config(scfg, bench, scenes, P.results)
        label = "base (SFT)" if sft_job else "base"
        if per_benchmark(scfg):
            merge = benchmark_jobs(P, base, 0, ecfg, _needs(sft_job, data))
            return [Row(label, None, False, merge.hash, {0: merge.output()}, kind="reference")]
        ev = base_eval(P, scfg, base, sft_job, data, bench, scenes)
        return [Row(label, None, False, ev.hash, {0: ev.output()}, kind="reference")]


STUDY = MMAlign()
