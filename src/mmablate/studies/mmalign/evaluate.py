"""The plan's eight benchmarks, run on one model (the world versions at tiny/smoke scale).

* POPE: yes/no object-existence questions, random / popular / adversarial negatives; answers
  parsed as LLaVA's ``eval_pope.py``; accuracy, F1 (positive = yes) and yes-ratio per split.
  ``pope`` = F1 averaged over the three splits.
* MMHAL: open questions rated 0–6 by the judge (MMHal-Bench's rubric); ``mmhal`` = mean rating,
  ``mmhalv`` = hallucination rate (ratings below 3), in %.
* LLaVA-W: open questions rated 1–10 by the judge, relative to the judge's rating of the
  reference answer (LLaVA-Bench's relative score), in %.
* MM-Vet: questions needing recognition, OCR, counting and spatial awareness, 0–1 by the judge.
* VQA-T (TextVQA): reading the rendered letter, VQA accuracy min(#matching answers / 3, 1).
* GQA: attribute and relation questions, exact match of the short answer.
* Recall-coco: share of an image's annotated objects named in the model's description.
"""
from __future__ import annotations

import re
import time

from .data import (POPE_SPLITS, load_coco_instances, load_gqa, load_llavaw, load_mmhal,
                   load_mmvet, load_pope, load_textvqa, open_image)


def normalise_answer(a: str) -> str:
    """VQA-style normalisation: lower case, punctuation and articles removed, spaces collapsed."""
    a = re.sub(r"[^\w\s]", " ", a.lower())
    return " ".join(w for w in a.split() if w not in ("a", "an", "the"))


def pope_scores(preds, labels) -> dict:
    tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(preds, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(preds, labels))
    n = len(labels)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    acc = sum(p == l for p, l in zip(preds, labels)) / n
    return {"acc": acc, "f1": f1, "precision": prec, "recall": rec,
            "yes_ratio": sum(p == "yes" for p in preds) / n}


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    p = normalise_answer(pred)
    return min(1.0, sum(normalise_answer(a) == p for a in answers) / 3.0)


def load_benchmarks(ecfg: dict) -> dict:
    """All benchmark records, loaded (and checked) before the model is."""
    b = ecfg["benchmarks"]
    lim = ecfg.get("limit")
    out = {f"pope_{sp}": load_pope(b["pope"]["files"][sp], b["pope"]["images"])[:lim]
           for sp in POPE_SPLITS}
    out["mmhal"] = load_mmhal(b["mmhal"]["file"], b["mmhal"]["images"])[:lim]
    out["llavaw"] = load_llavaw(b["llavaw"]["questions"], b["llavaw"]["answers"],
                                b["llavaw"]["images"])[:lim]
    out["mmvet"] = load_mmvet(b["mmvet"]["file"], b["mmvet"]["images"])[:lim]
    out["vqat"] = load_textvqa(b["vqat"]["file"], b["vqat"]["images"], b["vqat"].get("ext", ".png"))[:lim]
    out["gqa"] = load_gqa(b["gqa"]["file"], b["gqa"]["images"], b["gqa"].get("ext", ".png"))[:lim]
    out["recall_coco"] = load_coco_instances(b["recall_coco"]["file"],
                                             b["recall_coco"]["images"])[:lim]
    for r in out["recall_coco"]:
        r["question"] = ecfg["describe_prompt"]
    return out


def answer_all(model, proc, bench: dict, ecfg: dict) -> dict:
    """Greedy answers to every (image, question) of every benchmark, each asked once."""
    from .model import generate

    todo = {}
    for name, recs in bench.items():
        short = name.startswith("pope") or name in ("gqa", "vqat")
        for r in recs:
            todo.setdefault((r["image"], r["question"]), short)
    answers = {}
    for short in (True, False):
        keys = [k for k, s in todo.items() if s == short]
        imgs = [open_image(i) for i, _ in keys]
        outs = generate(model, proc, imgs, [q for _, q in keys],
                        max_new_tokens=ecfg["max_new_tokens_short" if short else "max_new_tokens"],
                        batch_size=ecfg.get("batch_size", 64))
        answers.update(zip(keys, outs))
    return answers


def score(bench: dict, answers: dict, judge) -> tuple[dict, dict]:
    from ...world.vqa import pope_parse

    A = lambda r: answers[(r["image"], r["question"])]  # noqa: E731
    m, detail = {}, {}
    pope = {sp: pope_scores([pope_parse(A(r)) for r in bench[f"pope_{sp}"]],
                            [r["label"] for r in bench[f"pope_{sp}"]]) for sp in POPE_SPLITS}
    detail["pope"] = pope
    m["pope"] = 100 * sum(p["f1"] for p in pope.values()) / 3
    m["pope_acc"] = 100 * sum(p["acc"] for p in pope.values()) / 3
    m["pope_yes_ratio"] = 100 * sum(p["yes_ratio"] for p in pope.values()) / 3
    hal = [judge.mmhal(r["image"], r["question"], A(r), r["gt_answer"]) for r in bench["mmhal"]]
    m["mmhal"] = sum(hal) / len(hal)
    m["mmhalv"] = 100 * sum(h < 3 for h in hal) / len(hal)
    mod = [judge.llavaw(r["image"], r["question"], A(r), r["gt_answer"]) for r in bench["llavaw"]]
    ref = [judge.llavaw(r["image"], r["question"], r["gt_answer"], r["gt_answer"])
           for r in bench["llavaw"]]
    m["llavaw"] = 100 * sum(mod) / sum(ref)
    m["mmvet"] = 100 * sum(judge.mmvet(r["image"], r["question"], A(r), r["gt_answer"])
                           for r in bench["mmvet"]) / len(bench["mmvet"])
    m["vqat"] = 100 * sum(vqa_accuracy(A(r), r["answers"]) for r in bench["vqat"]) / \
        max(1, len(bench["vqat"]))
    m["gqa"] = 100 * sum(normalise_answer(A(r)) == normalise_answer(r["answer"])
                         for r in bench["gqa"]) / len(bench["gqa"])
    rec = []
    for r in bench["recall_coco"]:
        text = " " + re.sub(r"\s+", " ", A(r).lower()) + " "
        rec.append(sum(f" {o.lower()} " in text or f" {o.lower()}s " in text
                       for o in r["objects"]) / len(r["objects"]))
    m["recall_coco"] = 100 * sum(rec) / len(rec)
    return m, detail


def evaluate(model, proc, ecfg: dict, bench: dict, judge, threads: int = 1):
    """(metrics, chance, details) of `model` on the loaded benchmarks `bench`."""
    import torch

    from ...training.schedule import set_threads

    set_threads(threads)
    t0 = time.time()
    if torch.cuda.is_available():
        model.to("cuda")
    answers = answer_all(model, proc, bench, ecfg)
    m, detail = score(bench, answers, judge)
    detail["wall_s"] = round(time.time() - t0, 2)
    detail["examples"] = {k: [{"q": r["question"], "a": answers[(r["image"], r["question"])]}
                              for r in v[:3]] for k, v in bench.items()}
    chance = {"pope": 50.0, "pope_acc": 50.0}  # uniform yes/no guessing on balanced POPE
    return m, chance, detail
