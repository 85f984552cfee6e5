"""The plan's benchmarks, run on one model (the world versions at tiny/smoke scale), each scored
by its own protocol (`protocols`, which cites the benchmarks' evaluation code).

* POPE: yes/no object-existence questions, random / popular / adversarial splits; answers
  parsed as LLaVA's ``eval_pope.py``; accuracy, F1 (positive = yes) and yes-ratio per split.
  ``pope`` = F1 averaged over the three splits.
* MMHAL: MMHal-Bench's judge template, rating 0–6; ``mmhal`` = mean rating, ``mmhalv`` =
  hallucination rate (ratings below 3), in %.
* LLaVA-W: LLaVA-Bench's rule (reference and model answer rated 1–10 in one judge request),
  ``llavaw`` = 100 · mean(model) / mean(reference).
* MM-Vet: MM-Vet's grader prompt, 0–1 per question, in %.
* The endpoint judge's replies that do not read are scored as each benchmark's script scores
  them and counted: ``judge_unparsed_mmhal``, ``judge_unparsed_llavaw``, ``judge_unparsed_mmvet``
  (the world oracle reads nothing: no such metric at tiny scale).
* VQA-T (TextVQA): LLaVA's short-answer instruction; VQA accuracy over the 10 human answers
  with EvalAI's normalisation (m4c_evaluator).
* GQA: LLaVA's short-answer instruction; exact match after LLaVA's conversion.
* Recall-coco: share of an image's annotated COCO objects named in the model's description
  (a name or its plural, whole words). Images: ``recall_coco.subset: pope`` keeps the COCO
  val2014 images the POPE files ask about (500 images; their objects are annotated for all 80
  categories, and they are the images POPE already probes for hallucination), ``all`` every
  annotated image of the instances file (val2014: 40k descriptions of up to 512 tokens, ~10×
  the generation cost of all other benchmarks together). The paper scale uses ``pope``; the
  world writes one COCO file over its benchmark images (the same images either way).

Each benchmark can run in its own job (``eval.jobs: per_benchmark``: `run_benchmarks` with one
name) or all of a model's in one (``per_model``); the metrics are the same either way.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from .data import (POPE_SPLITS, load_coco_instances, load_gqa, load_llavaw, load_mmhal,
                   load_mmvet, load_pope, load_textvqa)
from .protocols import (SHORT_ANSWER, gqa_correct, gqa_prediction, pope_parse, pope_scores,
                        textvqa_accuracy)
from ...util import write_atomic

BENCHMARKS = ("pope", "mmhal", "llavaw", "mmvet", "vqat", "gqa", "recall_coco")
# the metrics each benchmark job writes
# (the mmhal job also writes mmhal_<type> / mmhalv_<type> for each question type it holds)
# (with the endpoint judge, mmhal, llavaw and mmvet also write judge_unparsed_<benchmark>)
BENCH_METRICS = {"pope": ("pope", "pope_acc", "pope_yes_ratio"), "mmhal": ("mmhal", "mmhalv"),
                 "llavaw": ("llavaw",), "mmvet": ("mmvet",), "vqat": ("vqat",), "gqa": ("gqa",),
                 "recall_coco": ("recall_coco", "desc_words", "desc_empty")}
SHORT = ("pope", "vqat", "gqa")  # short answers (max_new_tokens_short)


def _short(q: str) -> str:
    """LLaVA's short-answer instruction after the question (once; the world's files have it)."""
    return q if "single word or phrase" in q.lower() else f"{q}\n{SHORT_ANSWER}"


def load_benchmarks(ecfg: dict, names=BENCHMARKS) -> dict:
    """The records of benchmarks `names` (POPE as its three splits), loaded and checked before
    the model is. Images stay paths (decoded batch by batch at generation)."""
    b = ecfg["benchmarks"]
    lim = ecfg.get("limit")
    out = {}
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        from ...errors import ConfigError

        raise ConfigError(f"eval: unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    if "pope" in names:
        for sp in POPE_SPLITS:
            out[f"pope_{sp}"] = load_pope(b["pope"]["files"][sp], b["pope"]["images"])[:lim]
    if "mmhal" in names:
        out["mmhal"] = load_mmhal(b["mmhal"]["file"], b["mmhal"]["images"])[:lim]
    if "llavaw" in names:
        out["llavaw"] = load_llavaw(b["llavaw"]["questions"], b["llavaw"]["answers"],
                                    b["llavaw"]["images"], b["llavaw"].get("context"))[:lim]
    if "mmvet" in names:
        out["mmvet"] = load_mmvet(b["mmvet"]["file"], b["mmvet"]["images"])[:lim]
    if "vqat" in names:
        out["vqat"] = [{**r, "question": _short(r["question"])} for r in load_textvqa(
            b["vqat"]["file"], b["vqat"]["images"], b["vqat"].get("ext", ".png"))[:lim]]
    if "gqa" in names:
        out["gqa"] = [{**r, "question": _short(r["question"])} for r in load_gqa(
            b["gqa"]["file"], b["gqa"]["images"], b["gqa"].get("ext", ".png"))[:lim]]
    if "recall_coco" in names:
        rc = b["recall_coco"]
        recs = load_coco_instances(rc["file"], rc["images"])
        if rc.get("subset", "all") == "pope":
            from pathlib import Path

            keep = {Path(r["image"]).name for sp in POPE_SPLITS
                    for r in load_pope(b["pope"]["files"][sp], b["pope"]["images"])}
            recs = [r for r in recs if Path(r["image"]).name in keep]
        out["recall_coco"] = recs[:lim]
        vocab = coco_categories(rc["file"])
        for r in out["recall_coco"]:
            r["question"] = ecfg["describe_prompt"]
            r["vocabulary"] = vocab
    return out


def coco_categories(path) -> list[str]:
    """Every category name of a COCO instances file (what a description may name)."""
    import json

    with open(path) as f:
        return sorted({c["name"] for c in json.load(f)["categories"]})


def answer_all(model, proc, bench: dict, ecfg: dict) -> dict:
    """Greedy answers to every (image, question) of the loaded benchmarks, each asked once,
    in batches of ``eval.batch_size`` (images decoded per batch, ``eval.num_workers``)."""
    from .model import generate

    todo = {}
    for name, recs in bench.items():
        short = name.split("_")[0] in SHORT
        for r in recs:
            todo.setdefault((r["image"], r["question"]), short)
    answers = {}
    for short in (True, False):
        keys = [k for k, s in todo.items() if s == short]
        if not keys:
            continue
        outs = generate(model, proc, [i for i, _ in keys], [q for _, q in keys],
                        max_new_tokens=ecfg["max_new_tokens_short" if short else "max_new_tokens"],
                        batch_size=ecfg.get("batch_size", 64), num_workers=ecfg.get("num_workers", 0),
                        progress="answers (short)" if short else "answers")
        answers.update(zip(keys, outs))
    return answers


def object_recall(text: str, objects) -> float:
    return sum(names(text, o) for o in objects) / len(objects)


def names(text: str, obj: str) -> bool:
    """`text` names object `obj` (its name or plural, whole words)."""
    t = " " + re.sub(r"\s+", " ", text.lower()) + " "
    return f" {obj.lower()} " in t or f" {obj.lower()}s " in t


def words(text: str) -> int:
    """Words of an answer, punctuation tokens not counted (the world's tokenizer spaces them)."""
    return sum(bool(re.search(r"\w", w)) for w in text.split())


def informativeness(descriptions: list[str], vocabulary) -> dict:
    """How much the descriptions say, beside how much they hallucinate (issue 21: a model whose
    descriptions collapse to "there is a" scores "no hallucination"):
    ``desc_words`` = mean words per description; ``desc_empty`` = % of descriptions naming no
    object of `vocabulary` (the instances file's category names: COCO's 80, the world's
    colour-shape objects), right or wrong."""
    n = max(1, len(descriptions))
    return {"desc_words": sum(words(d) for d in descriptions) / n,
            "desc_empty": 100 * sum(not any(names(d, o) for o in vocabulary)
                                    for d in descriptions) / n}


def score(bench: dict, answers: dict, judge) -> tuple[dict, dict]:
    """(metrics, details) of the benchmarks present in `bench`."""
    A = lambda r: answers[(r["image"], r["question"])]  # noqa: E731
    m, detail = {}, {}

    def items(name, **extra):
        return [{"qid": r["qid"], "image": r["image"], "question": r["question"],
                 "response": A(r), "gt_answer": r.get("gt_answer", ""),
                 **{k: r.get(k) for k in extra}} for r in bench[name]]

    def unparsed(name):  # the endpoint judge's count of replies that did not read
        if name in getattr(judge, "unparsed", {}):
            m[f"judge_unparsed_{name}"] = judge.unparsed[name]

    if "pope_random" in bench:
        pope = {sp: pope_scores([pope_parse(A(r)) for r in bench[f"pope_{sp}"]],
                                [r["label"] for r in bench[f"pope_{sp}"]]) for sp in POPE_SPLITS}
        detail["pope"] = pope
        m["pope"] = 100 * sum(p["f1"] for p in pope.values()) / 3
        m["pope_acc"] = 100 * sum(p["acc"] for p in pope.values()) / 3
        m["pope_yes_ratio"] = 100 * sum(p["yes_ratio"] for p in pope.values()) / 3
    if "mmhal" in bench:
        hal = judge.mmhal_many(items("mmhal", image_content=1))
        unparsed("mmhal")
        m["mmhal"] = sum(hal) / len(hal)
        m["mmhalv"] = 100 * sum(h < 3 for h in hal) / len(hal)
        # the per-question-type split (MMHal-Bench's eight types; the world's holistic
        # descriptions and attribute questions): which kind of answer a change comes from
        by_type = {}
        for r, h in zip(bench["mmhal"], hal):
            by_type.setdefault(r.get("type") or "other", []).append(h)
        for t, hs in sorted(by_type.items()):
            m[f"mmhal_{t}"] = sum(hs) / len(hs)
            m[f"mmhalv_{t}"] = 100 * sum(h < 3 for h in hs) / len(hs)
    if "llavaw" in bench:
        sc = judge.llavaw_many(items("llavaw", context=1))
        unparsed("llavaw")
        m["llavaw"] = 100 * sum(s[1] for s in sc) / sum(s[0] for s in sc)
        detail["llavaw_reference_mean"] = sum(s[0] for s in sc) / len(sc)
    if "mmvet" in bench:
        m["mmvet"] = 100 * sum(judge.mmvet_many(items("mmvet"))) / len(bench["mmvet"])
        unparsed("mmvet")
    if "vqat" in bench:
        m["vqat"] = 100 * sum(textvqa_accuracy(A(r), r["answers"]) for r in bench["vqat"]) / \
            max(1, len(bench["vqat"]))
    if "gqa" in bench:
        m["gqa"] = 100 * sum(gqa_correct(A(r), str(r["answer"])) for r in bench["gqa"]) / \
            len(bench["gqa"])
        detail["gqa_predictions"] = {str(r["qid"]): gqa_prediction(A(r)) for r in bench["gqa"][:20]}
    if "recall_coco" in bench:
        rec = [object_recall(A(r), r["objects"]) for r in bench["recall_coco"]]
        m["recall_coco"] = 100 * sum(rec) / len(rec)
        vocab = bench["recall_coco"][0].get("vocabulary") if bench["recall_coco"] else None
        m.update(informativeness([A(r) for r in bench["recall_coco"]],
                                 vocab or sorted({o for r in bench["recall_coco"]
                                                  for o in r["objects"]})))
        detail["descriptions"] = [A(r) for r in bench["recall_coco"][:10]]
    return m, detail


def _answers_key(bench: dict, ecfg: dict, model_id) -> str:
    from ...util import config_hash

    gen = {k: ecfg.get(k) for k in ("max_new_tokens", "max_new_tokens_short", "describe_prompt")}
    return config_hash({"model": model_id, "gen": gen,
                        "asked": sorted({(r["image"], r["question"]) for v in bench.values()
                                         for r in v})})


def evaluate(model, proc, ecfg: dict, bench: dict, judge, threads: int = 1, answers_file=None,
             model_id=None):
    """(metrics, chance, details) of `model` on the loaded benchmarks `bench`.

    `answers_file`: the model's answers are kept there before they are scored, so a job that
    fails in scoring (a judge that stops answering, or answers what its parser cannot read)
    reruns without generating again; reused only for the same `model_id` (the model folder with
    its weights' sizes and times), generation settings and questions."""
    import torch

    from ...training.schedule import set_threads

    set_threads(threads)
    t0 = time.time()
    if torch.cuda.is_available():
        model.to("cuda")
    key = _answers_key(bench, ecfg, model_id) if answers_file and model_id else None
    answers = None
    if key is not None and Path(answers_file).is_file():
        rec = json.loads(Path(answers_file).read_text())
        if rec.get("key") == key:
            answers = {(i, q): a for i, q, a in rec["answers"]}
    if answers is None:
        answers = answer_all(model, proc, bench, ecfg)
        if key is not None:
            with write_atomic(answers_file) as tmp:
                tmp.write_text(json.dumps({"key": key, "answers": [[i, q, a] for (i, q), a
                                                                   in answers.items()]}))
    m, detail = score(bench, answers, judge)
    detail["wall_s"] = round(time.time() - t0, 2)
    detail["examples"] = {k: [{"q": r["question"], "a": answers[(r["image"], r["question"])]}
                              for r in v[:3]] for k, v in bench.items()}
    if hasattr(judge, "clients"):
        detail["judge_requests"] = judge.stats
    chance = {"pope": 50.0, "pope_acc": 50.0} if "pope_random" in bench else {}
    return m, chance, detail
