"""Loaders for the formats the real data sets are distributed in (the world writes the same).

Each returns plain records; images are opened lazily with `open_image` (an image that does not
decode is a DataError naming the file). Malformed records (a missing field, an empty response)
are DataErrors naming the file and the record, raised before any model is loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...data.imagetext import open_image  # noqa: F401  (re-exported for the study's stages)
from ...errors import DataError

POPE_SPLITS = ("random", "popular", "adversarial")


def _load(path):
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        if path.suffix == ".jsonl" or path.name.startswith("coco_pope_"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _field(rec, key, path, i):
    if key not in rec:
        raise DataError(f"{path}: record {i}: missing field {key!r}")
    return rec[key]


def _text(rec, key, path, i):
    v = _field(rec, key, path, i)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{path}: record {i}: field {key!r} is empty (every response must be "
                        f"non-empty text)")
    return v.strip()


def _human_question(conv, path, i):
    turns = [t for t in conv if t.get("from") == "human"]
    if not turns:
        raise DataError(f"{path}: record {i}: conversations has no 'human' turn")
    q = turns[0].get("value", "").replace("<image>", "").strip()
    if not q:
        raise DataError(f"{path}: record {i}: the question is empty")
    return q


def load_llava_instruct(path, image_root, limit=None) -> list[dict]:
    """LLaVA instruction data: [{id, image, conversations: [{from: human|gpt, value}, ...]}]
    -> one record per (human, gpt) turn pair: {image, question, answer}."""
    out = []
    for i, rec in enumerate(_load(path)[:limit]):
        conv = _field(rec, "conversations", path, i)
        img = Path(image_root) / _field(rec, "image", path, i)
        for j in range(0, len(conv) - 1, 2):
            if conv[j].get("from") != "human" or conv[j + 1].get("from") != "gpt":
                raise DataError(f"{path}: record {i}: turns {j}/{j + 1} are not human/gpt")
            q = conv[j]["value"].replace("<image>", "").strip()
            a = conv[j + 1].get("value", "").strip()
            if not q or not a:
                raise DataError(f"{path}: record {i}: turn {j} has an empty question or answer")
            out.append({"image": str(img), "question": q, "answer": a})
    return out


def load_povid(path, image_root, limit=None) -> list[dict]:
    """POVID preference pairs: LLaVA conversation records with ``chosen`` and ``rejected``
    (the prompt is the first human turn; ``chosen`` falls back to the first gpt turn)."""
    out = []
    for i, rec in enumerate(_load(path)[:limit]):
        conv = _field(rec, "conversations", path, i)
        q = _human_question(conv, path, i)
        if "chosen" not in rec:
            gpt = [t for t in conv if t.get("from") == "gpt"]
            rec = {**rec, "chosen": gpt[0]["value"] if gpt else ""}
        out.append({"id": str(rec.get("id", i)), "image": str(Path(image_root) / _field(rec, "image", path, i)),
                    "question": q, "chosen": _text(rec, "chosen", path, i),
                    "rejected": _text(rec, "rejected", path, i)})
    if not out:
        raise DataError(f"{path}: no preference pairs")
    return out


def load_pope(path, image_root) -> list[dict]:
    out = []
    for i, r in enumerate(_load(path)):
        lab = _field(r, "label", path, i)
        if lab not in ("yes", "no"):
            raise DataError(f"{path}: record {i}: label must be 'yes' or 'no', got {lab!r}")
        out.append({"qid": r.get("question_id", i), "image": str(Path(image_root) / _field(r, "image", path, i)),
                    "question": _text(r, "text", path, i), "label": lab})
    return out


def mmhal_image_name(src: str) -> str:
    """The file of an MMHal-Bench ``image_src`` in its ``images/`` folder: the published
    ``response_template.json`` holds Flickr URLs, the images are saved under the URL's last part
    (as MMHal-Bench's own evaluation loads them); a plain file name stays as it is."""
    return src.rstrip("/").split("/")[-1] if "://" in src else src


def load_mmhal(path, image_root) -> list[dict]:
    return [{"qid": i, "image": str(Path(image_root) / mmhal_image_name(
                 _field(r, "image_src", path, i))),
             "question": _text(r, "question", path, i), "gt_answer": r.get("gt_answer", ""),
             "type": r.get("question_type", ""), "image_content": r.get("image_content", [])}
            for i, r in enumerate(_load(path))]


def load_llavaw(questions, answers, image_root, context=None) -> list[dict]:
    """LLaVA-Bench (in the wild): questions, the GPT-4 reference answers and, where given,
    ``context.jsonl`` ({image, caption}: the captions its judge reads in place of the image)."""
    refs = {r["question_id"]: r["text"] for r in _load(answers)}
    ctx = {}
    for i, r in enumerate(_load(context) if context else []):
        cap = _field(r, "caption", context, i)
        ctx[_field(r, "image", context, i)] = "\n".join(cap) if isinstance(cap, list) else cap
    out = []
    for i, r in enumerate(_load(questions)):
        q = _field(r, "question_id", questions, i)
        if q not in refs:
            raise DataError(f"{answers}: no reference answer for question_id {q}")
        out.append({"qid": q, "image": str(Path(image_root) / _field(r, "image", questions, i)),
                    "question": _text(r, "text", questions, i), "gt_answer": refs[q],
                    "category": r.get("category", ""), "context": ctx.get(r["image"])})
        if context and r["image"] not in ctx:
            raise DataError(f"{context}: no caption for image {r['image']!r}")
    return out


def load_mmvet(path, image_root) -> list[dict]:
    d = _load(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: MM-Vet is a JSON object keyed by question id")
    return [{"qid": k, "image": str(Path(image_root) / _field(r, "imagename", path, k)),
             "question": _text(r, "question", path, k), "gt_answer": _field(r, "answer", path, k),
             "capability": r.get("capability", [])} for k, r in d.items()]


def load_textvqa(path, image_root, ext=".png") -> list[dict]:
    d = _load(path)
    if not isinstance(d, dict) or "data" not in d:
        raise DataError(f"{path}: TextVQA JSON must have a 'data' list")
    return [{"qid": r.get("question_id", i),
             "image": str(Path(image_root) / (_field(r, "image_id", path, i) + ext)),
             "question": _text(r, "question", path, i), "answers": _field(r, "answers", path, i)}
            for i, r in enumerate(d["data"])]


def load_gqa(path, image_root, ext=".png") -> list[dict]:
    d = _load(path)
    return [{"qid": k, "image": str(Path(image_root) / (_field(r, "imageId", path, k) + ext)),
             "question": _text(r, "question", path, k), "answer": _field(r, "answer", path, k)}
            for k, r in d.items()]


def load_coco_instances(path, image_root) -> list[dict]:
    """COCO instances JSON -> one record per image: {image, objects: [category names]}."""
    d = _load(path)
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise DataError(f"{path}: COCO instances JSON has no {key!r}")
    cats = {c["id"]: c["name"] for c in d["categories"]}
    objs = {}
    for a in d["annotations"]:
        objs.setdefault(a["image_id"], set()).add(cats[a["category_id"]])
    return [{"qid": im["id"], "image": str(Path(image_root) / im["file_name"]),
             "objects": sorted(objs.get(im["id"], ()))} for im in d["images"] if im["id"] in objs]


def load_scenes(path) -> dict:
    """image file name -> Scene (the world oracle's ground truth)."""
    from ...world.scenes import Scene

    out = {}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        try:
            r = json.loads(line)
            out[r["image"]] = Scene.from_dict(r["scene"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}: line {i + 1}: not a scene record ({e})") from None
    return out
