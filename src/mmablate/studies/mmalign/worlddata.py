"""The mmalign world: instruction data, POVID-style pairs and benchmarks, in the real formats.

Writes under one directory (every image a PNG in ``images/``):

* ``sft/llava_instruct.json``  — LLaVA's instruction format (``id``, ``image``, ``conversations``
  with ``from: human/gpt``), the SFT data of the shared base;
* ``povid/povid_pairs.json``   — POVID's preference format: LLaVA conversations (the ground-truth
  answer as the ``gpt`` turn) plus ``chosen``/``rejected`` (rejected = hallucinated objects or
  attributes injected into the ground truth, POVID's recipe);
* ``pope/coco_pope_{random,popular,adversarial}.json`` — LLaVA's POPE question files (JSON lines
  ``question_id, image, text, label``);
* ``mmhal/response_template.json`` — MMHal-Bench's template (``question_type, image_src,
  question, gt_answer, image_content``);
* ``llavaw/questions.jsonl`` + ``llavaw/answers_gpt4.jsonl`` — LLaVA-Bench (in-the-wild);
* ``mmvet/mm-vet.json`` — MM-Vet (``{"v1_0": {imagename, question, answer, capability}}``);
* ``textvqa/TextVQA_0.5.1_val.json`` — TextVQA (``{"data": [{question_id, image_id, question,
  answers}]}``), reading questions about the rendered glyph;
* ``gqa/testdev_balanced_questions.json`` — GQA (``{qid: {imageId, question, answer,
  fullAnswer, types}}``), attribute and relation questions;
* ``coco/instances_val.json`` — COCO-style instances (images, annotations, categories) for the
  object recall of descriptions (Recall-coco);
* ``scenes.jsonl`` — the ground-truth scene of every image (the oracle judge reads it).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...world.scenes import NUMBER_WORDS, render
from ...world.vqa import (DESCRIBE, SHORT, BiasedSampler, companions, count_answer, describe,
                          exists_answer, exists_question, hallucinate)

POPE_SPLITS = ("random", "popular", "adversarial")


def _conv(img, q, a, i):
    return {"id": str(i), "image": img,
            "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}


def qa_items(scene, rng, colours, shapes):
    """The instruction questions of one scene (question, answer, kind)."""
    out = [(DESCRIBE, describe(scene), "describe")]
    present = {(o.colour, o.shape) for o in scene.objects}
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    out.append((exists_question(o.colour, o.shape), exists_answer(True, o.colour, o.shape), "exists"))
    absent = [(c, s) for c in colours for s in shapes if (c, s) not in present]
    # half of the absent probes are the co-occurring companion (the hard negative)
    comp = companions(tuple(colours), tuple(shapes))[scene.objects[0].shape]
    c, s = comp if comp not in present and rng.random() < 0.5 else absent[int(rng.integers(len(absent)))]
    out.append((exists_question(c, s), exists_answer(False, c, s), "exists"))
    out.append((f"what colour is the {o.shape} ?", f"the {o.shape} is {o.colour} .", "attribute"))
    out.append((f"what shape is the {o.colour} object ?", f"it is a {o.shape} .", "attribute"))
    out.append((f"where is the {o.colour} {o.shape} ?",
                f"the {o.colour} {o.shape} is on the {o.position} ." if o.position != "center"
                else f"the {o.colour} {o.shape} is in the center .", "relation"))
    out.append(("how many objects are there ?", count_answer(len(scene.objects)), "count"))
    if scene.glyph:
        out.append(("what letter is written in the image ?",
                    f"the letter is {scene.glyph.lower()} .", "ocr"))
    return out


def short_items(scene, rng):
    """GQA/TextVQA-style questions with LLaVA's short-answer suffix (answer = one word)."""
    o = scene.objects[int(rng.integers(len(scene.objects)))]
    out = [(f"what colour is the {o.shape} ?\n{SHORT}", o.colour, "attribute"),
           (f"where is the {o.colour} {o.shape} ?\n{SHORT}", o.position, "relation")]
    if scene.glyph:
        out.append((f"what letter is written in the image ?\n{SHORT}", scene.glyph.lower(), "ocr"))
    return out


def write_mmalign_world(cfg: dict, out) -> dict:
    out = Path(out)
    rng = np.random.default_rng(cfg["seed"])
    colours, shapes = cfg["colours"], cfg["shapes"]
    sampler = BiasedSampler(colours, shapes, cfg["max_objects"], cfg["glyph_prob"], cfg["cooccur"])
    (out / "images").mkdir(parents=True, exist_ok=True)
    scenes_f = open(out / "scenes.jsonl", "w")

    def new_image(split, i):
        s = sampler.scene(rng)
        name = f"{split}_{i:05d}.png"
        render(s, cfg["image_size"], rng).save(out / "images" / name, compress_level=1)
        scenes_f.write(json.dumps({"image": name, "scene": s.to_dict()}) + "\n")
        return name, s

    # SFT instruction data
    sft, k = [], 0
    for i in range(cfg["n_sft"]):
        name, s = new_image("sft", i)
        for q, a, _ in qa_items(s, rng, colours, shapes) + short_items(s, rng):
            sft.append(_conv(name, q, a, k))
            k += 1
    # POVID-style preference pairs: descriptions (POVID's own task) and existence questions
    povid = []
    for i in range(cfg["n_pref"]):
        name, s = new_image("pref", i)
        if rng.random() < cfg["pref_yesno_frac"]:
            q, a, _ = qa_items(s, rng, colours, shapes)[1 + int(rng.integers(2))]
            rej = a.replace("yes , there is a", "no , there is no") if a.startswith("yes") \
                else a.replace("no , there is no", "yes , there is a")
        else:
            q, a, rej = DESCRIBE, describe(s), hallucinate(s, rng, colours, shapes)
        rec = _conv(name, q, a, f"povid_{i}")
        rec.update({"chosen": a, "rejected": rej})
        povid.append(rec)
    # benchmarks on held-out images
    ev = [new_image("eval", i) for i in range(cfg["n_eval"])]
    scenes_f.close()
    freq = {}
    for line in open(out / "scenes.jsonl"):
        r = json.loads(line)
        if r["image"].startswith("sft_"):
            for o in r["scene"]["objects"]:
                freq[(o["colour"], o["shape"])] = freq.get((o["colour"], o["shape"]), 0) + 1
    popular = sorted(freq, key=lambda cs: -freq[cs])
    comp = companions(tuple(colours), tuple(shapes))
    pope = {sp: [] for sp in POPE_SPLITS}
    mmhal, llq, lla, mmvet, tvqa, gqa = [], [], [], {}, [], {}
    coco = {"images": [], "annotations": [],
            "categories": [{"id": j, "name": f"{c} {s}"} for j, (c, s) in
                           enumerate((c, s) for c in colours for s in shapes)]}
    cat_id = {c["name"]: c["id"] for c in coco["categories"]}
    qid = 0
    for n, (name, s) in enumerate(ev):
        present = [(o.colour, o.shape) for o in s.objects]
        absent = [(c, sh) for c in colours for sh in shapes if (c, sh) not in present]
        for sp in POPE_SPLITS:
            if sp == "random":
                order = [absent[j] for j in rng.permutation(len(absent))]
            elif sp == "popular":
                order = [cs for cs in popular if cs not in present]
            else:  # co-occurring companions first, then objects sharing a colour or shape
                near = [comp[sh] for _, sh in present if comp[sh] not in present]
                near += [cs for cs in absent if cs not in near and
                         any(cs[0] == p[0] or cs[1] == p[1] for p in present)]
                order = near + [cs for cs in absent if cs not in near]
            for (c, sh) in present:
                qid += 1
                pope[sp].append({"question_id": qid, "image": name, "text": exists_question(c, sh),
                                 "label": "yes"})
            for (c, sh) in order[:len(present)]:
                qid += 1
                pope[sp].append({"question_id": qid, "image": name, "text": exists_question(c, sh),
                                 "label": "no"})
        items = qa_items(s, rng, colours, shapes)
        d = items[0]
        mmhal.append({"question_type": "holistic", "question_topic": "world", "image_id": name,
                      "image_src": name, "image_content": [f"{c} {sh}" for c, sh in present],
                      "question": d[0], "gt_answer": d[1], "model_answer": ""})
        att = items[3]
        mmhal.append({"question_type": "attribute", "question_topic": "world", "image_id": name,
                      "image_src": name, "image_content": [f"{c} {sh}" for c, sh in present],
                      "question": att[0], "gt_answer": att[1], "model_answer": ""})
        for q, a, kind in (items[0], items[5]):
            qid += 1
            llq.append({"question_id": qid, "image": name, "text": q,
                        "category": "detail" if kind == "describe" else "conv"})
            lla.append({"question_id": qid, "text": a, "category": llq[-1]["category"]})
        for q, a, kind in items[3:]:
            cap = {"attribute": ["rec"], "relation": ["spat"], "count": ["rec", "spat"],
                   "ocr": ["ocr"]}[kind]
            mmvet[f"v1_{len(mmvet)}"] = {"imagename": name, "question": q, "answer": a,
                                         "capability": cap}
        if s.glyph:
            qid += 1
            tvqa.append({"question_id": qid, "image_id": name.removesuffix(".png"),
                         "question": f"what letter is written in the image ?\n{SHORT}",
                         "answers": [s.glyph.lower()] * 10})
        o = s.objects[0]
        for q, a, t in ((f"what colour is the {o.shape} ?\n{SHORT}", o.colour, "attribute"),
                        (f"where is the {o.colour} {o.shape} ?\n{SHORT}", o.position,
                         "relation")):
            qid += 1
            gqa[str(qid)] = {"imageId": name.removesuffix(".png"), "question": q, "answer": a,
                             "fullAnswer": a, "types": {"structural": "query", "semantic": t[:4],
                                                        "detailed": t}}
        coco["images"].append({"id": n, "file_name": name})
        for c, sh in present:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": n,
                                        "category_id": cat_id[f"{c} {sh}"]})
    files = {
        "sft/llava_instruct.json": sft, "povid/povid_pairs.json": povid,
        "mmhal/response_template.json": mmhal, "mmvet/mm-vet.json": mmvet,
        "textvqa/TextVQA_0.5.1_val.json": {"data": tvqa},
        "gqa/testdev_balanced_questions.json": gqa, "coco/instances_val.json": coco,
    }
    for rel, obj in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(json.dumps(obj, indent=0))
    for rel, rows in [*((f"pope/coco_pope_{sp}.json", pope[sp]) for sp in POPE_SPLITS),
                      ("llavaw/questions.jsonl", llq), ("llavaw/answers_gpt4.jsonl", lla)]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"n_sft": len(sft), "n_pref": len(povid), "n_eval_images": len(ev),
            "n_pope": {sp: len(v) for sp, v in pope.items()}, "n_mmhal": len(mmhal),
            "n_llavaw": len(llq), "n_mmvet": len(mmvet), "n_textvqa": len(tvqa), "n_gqa": len(gqa),
            "number_words": list(NUMBER_WORDS)}
