"""mmalign's rehearsal assets: every file ``config/scales/paper.yaml``'s mmalign block reads, in
its publisher's layout and field names, a handful of records each, and its two models as random
miniatures of their classes (no download; deterministic; idempotent).

Datasets (under ``out``; paper.yaml's ``/datasets/...`` paths mirrored):

* ``povid/povid_pairs.json`` — POVID (YiyangZhou/POVID_preference_data_for_VLLMs): a JSON list of
  LLaVA conversation records (``id``, ``image``: a COCO train2014 file name, ``conversations``)
  with ``chosen`` and ``rejected``; images in ``coco/train2014/COCO_train2014_<12 digits>.jpg``;
* ``pope/coco_pope_{random,popular,adversarial}.json`` — POPE as distributed: one JSON object per
  line (``question_id``, ``image``, ``text``, ``label``) over ``coco/val2014`` images;
* ``coco/annotations/instances_val2014.json`` — COCO instances (``info``, ``licenses``,
  ``images``, ``annotations``, ``categories`` with COCO's own category ids and names), over the
  POPE images and one image POPE does not ask about (``recall_coco.subset: pope`` drops it);
* ``mmhal/response_template.json`` — MMHal-Bench: a JSON list (``question_type``,
  ``question_topic``, ``image_id``, ``image_src``: a Flickr URL, ``image_content``, ``question``,
  ``gt_answer``, ``model_answer``); ``mmhal/images/<the URL's file name>``;
* ``llava-bench-in-the-wild/{questions,answers_gpt4,context}.jsonl`` and ``images/``;
* ``mm-vet/mm-vet.json`` — a JSON object keyed ``v1_<k>`` (``imagename``, ``capability``,
  ``question``, ``answer`` with ``<AND>``/``<OR>``) and ``mm-vet/images``;
* ``textvqa/TextVQA_0.5.1_val.json`` — ``{dataset_type, dataset_name, dataset_version, data:
  [...]}`` with 10 human answers per question; ``textvqa/train_images/<image_id>.jpg``;
* ``gqa/testdev_balanced_questions.json`` — a JSON object keyed by question id (``imageId``,
  ``question``, ``answer``, ``fullAnswer``, ``types``, ...); ``gqa/images/<imageId>.jpg``.

Models (``models/<hub id>``, `save_pretrained` directories):

* ``llava-hf/llava-v1.6-vicuna-7b-hf`` — a random `LlavaNextForConditionalGeneration` (CLIP
  vision tower, Llama text model, AnyRes ``image_grid_pinpoints`` over small tiles) with its
  `LlavaNextProcessor`: a byte-level BPE tokenizer trained here on the assets' own text (the
  ``<image>`` and ``<pad>`` tokens llava-hf adds) and LLaVA-1.6-vicuna's chat template (vicuna_v1:
  ``USER: <image>\\n… ASSISTANT:``);
* ``sentence-transformers/all-mpnet-base-v2`` — a random `MPNetModel` saved as a
  sentence-transformers directory (Transformer → mean Pooling → Normalize, as the real one),
  which `judge.SentenceSimilarity` loads by path.

`JudgeServer` (``rehearsal/judge.py``) is the judge stand-in both of the rehearsal's judge endpoints name.
"""
from __future__ import annotations

import json
from pathlib import Path

LLAVA = "models/llava-hf/llava-v1.6-vicuna-7b-hf"
EMBEDDER = "models/sentence-transformers/all-mpnet-base-v2"
POPE_SPLITS = ("random", "popular", "adversarial")

# LLaVA-1.6-vicuna's conversation format (vicuna_v1), as llava-hf's processor chat template
# renders it: the system line, then "USER: <image>\n<text> ASSISTANT:"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }}"
    "{% else %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

# COCO's own category ids and names (instances_*.json); the objects of the stand-in images
COCO_CATEGORIES = {1: ("person", "person"), 3: ("car", "vehicle"), 17: ("cat", "animal"),
                   18: ("dog", "animal"), 44: ("bottle", "kitchen"), 62: ("chair", "furniture"),
                   64: ("potted plant", "furniture"), 67: ("dining table", "furniture")}
COLOURS = {"red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200),
           "yellow": (220, 200, 40), "white": (235, 235, 235), "black": (25, 25, 25)}

# (objects, colour of the first) of each stand-in image, by role
TRAIN = [(["dog", "chair"], "black"), (["cat", "dining table"], "white"),
         (["person", "car"], "red"), (["bottle", "potted plant"], "green")]
VAL = [(["dog", "person"], "yellow"), (["cat", "bottle"], "blue"),
       (["car", "chair"], "red"), (["potted plant", "dining table"], "green")]


def _jpeg(path: Path, objects, colour, seed: int, size=(56, 40), fmt="JPEG"):
    """A small image: a background and one filled box per object (first in `colour`)."""
    if path.exists():
        return
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(60, 200, 3)))
    d = ImageDraw.Draw(im)
    for k, _ in enumerate(objects):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))
        fill = COLOURS[colour] if k == 0 else tuple(int(c) for c in rng.integers(0, 256, 3))
        d.rectangle([x0, y0, x1, y1], fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))


def _write_json(path: Path, obj, lines=False):
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if lines:
        path.write_text("".join(json.dumps(r) + "\n" for r in obj))
    else:
        path.write_text(json.dumps(obj, indent=1))


def _describe(objects, colour) -> str:
    a, b = objects
    return (f"The image shows a {colour} {a} next to a {b}. The {a} is in the upper left part of "
            f"the picture. The background is plain.")


def coco_name(split: str, k: int) -> str:
    return f"COCO_{split}_{100000 + 17 * k:012d}.jpg"


# ---- datasets --------------------------------------------------------------------------------
def write_povid(out: Path) -> dict:
    pairs = []
    for k in range(8):
        objs, col = TRAIN[k % len(TRAIN)]
        img = coco_name("train2014", k % len(TRAIN))
        _jpeg(out / "coco/train2014" / img, objs, col, 100 + k % len(TRAIN))
        if k % 2 == 0:
            q, chosen = "Describe this image in detail.", _describe(objs, col)
            rejected = chosen.replace(objs[1], "horse").replace(col, "purple")
        else:
            q = f"Is there a {objs[0]} in the image?"
            chosen, rejected = f"Yes, there is a {objs[0]} in the image.", \
                f"No, there is no {objs[0]} in the image."
        pairs.append({"id": f"povid_{k}", "image": img,
                      "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                        {"from": "gpt", "value": chosen}],
                      "chosen": chosen, "rejected": rejected})
    _write_json(out / "povid/povid_pairs.json", pairs)
    return {"povid/povid_pairs.json": len(pairs), "coco/train2014": len(TRAIN)}


def write_coco_val(out: Path) -> dict:
    """val2014 images, POPE's three files over the first three, instances over all four."""
    images, anns = [], []
    for k, (objs, col) in enumerate(VAL):
        name = coco_name("val2014", k)
        _jpeg(out / "coco/val2014" / name, objs, col, 200 + k, size=(48, 64) if k % 2 else (64, 48))
        iid = 100000 + 17 * k
        w, h = (48, 64) if k % 2 else (64, 48)
        images.append({"license": 1, "file_name": name, "coco_url": "", "height": h, "width": w,
                       "date_captured": "2013-11-14 16:28:13", "flickr_url": "", "id": iid})
        for j, o in enumerate(objs):
            cid = next(c for c, (n, _) in COCO_CATEGORIES.items() if n == o)
            anns.append({"segmentation": [[1.0, 1.0, 20.0, 1.0, 20.0, 20.0]], "area": 190.0,
                         "iscrowd": 0, "image_id": iid, "bbox": [1.0, 1.0, 19.0, 19.0],
                         "category_id": cid, "id": 900000 + 10 * k + j})
    inst = {"info": {"description": "rehearsal stand-in of COCO 2014 val (random images)",
                     "version": "1.0", "year": 2014},
            "licenses": [{"url": "", "id": 1, "name": "stand-in"}], "images": images,
            "annotations": anns,
            "categories": [{"supercategory": s, "id": c, "name": n}
                           for c, (n, s) in sorted(COCO_CATEGORIES.items())]}
    _write_json(out / "coco/annotations/instances_val2014.json", inst)
    absent = {"random": "bicycle", "popular": "person", "adversarial": "chair"}
    for sp in POPE_SPLITS:
        recs, qid = [], 1
        for k, (objs, _) in enumerate(VAL[:3]):
            for obj, lab in ((objs[0], "yes"), (absent[sp] if absent[sp] not in objs else "bus",
                                                 "no")):
                recs.append({"question_id": qid, "image": coco_name("val2014", k),
                             "text": f"Is there a {obj} in the image?", "label": lab})
                qid += 1
        _write_json(out / f"pope/coco_pope_{sp}.json", recs, lines=True)
    return {"coco/val2014": len(VAL), "pope": {sp: 6 for sp in POPE_SPLITS},
            "coco/annotations/instances_val2014.json": len(images)}


def write_mmhal(out: Path) -> dict:
    recs = []
    qs = [("attribute", "animal", "What colour is the {a}?", "The {a} is {c}."),
          ("counting", "indoor", "How many {b}s are in the image?", "There is one {b}."),
          ("holistic", "outdoor", "Describe this image in detail.", None)]
    for k, (qt, topic, q, gt) in enumerate(qs):
        objs, col = VAL[k]
        fname = f"{4675740 + k}_7a0d8fb5d8_o.jpg"
        _jpeg(out / "mmhal/images" / fname, objs, col, 300 + k)
        a, b = objs
        recs.append({"question_type": qt, "question_topic": topic, "image_id": f"ebfa7e3e0e3a8b0{k}",
                     "image_src": f"https://c{k + 3}.staticflickr.com/1/229/{fname}",
                     "image_content": [o.title() for o in objs],
                     "question": q.format(a=a, b=b), "gt_answer": (gt or _describe(objs, col)).format(
                         a=a, b=b, c=col), "model_answer": ""})
    _write_json(out / "mmhal/response_template.json", recs)
    return {"mmhal/response_template.json": len(recs)}


def write_llavaw(out: Path) -> dict:
    root = out / "llava-bench-in-the-wild"
    qs, ans, ctx = [], [], []
    for k, cat in enumerate(("conv", "detail", "complex")):
        objs, col = VAL[k // 2]
        img = f"{k // 2 + 1:03d}.jpg"
        _jpeg(root / "images" / img, objs, col, 400 + k // 2)
        text = {"conv": f"What is the colour of the {objs[0]}?",
                "detail": "Describe this photo in detail.",
                "complex": f"Why might someone keep a {objs[1]} here?"}[cat]
        ref = {"conv": f"The {objs[0]} is {col}.", "detail": _describe(objs, col),
               "complex": f"A {objs[1]} next to a {objs[0]} suggests a home setting."}[cat]
        qs.append({"question_id": k, "image": img, "text": text, "category": cat})
        ans.append({"question_id": k, "prompt": text, "text": ref, "answer_id": f"ans{k:04d}",
                    "model_id": "gpt-4-0314", "metadata": {}})
        if not any(c["image"] == img for c in ctx):  # one caption per image
            ctx.append({"id": img.split(".")[0], "image": img, "caption": _describe(objs, col)})
    _write_json(root / "questions.jsonl", qs, lines=True)
    _write_json(root / "answers_gpt4.jsonl", ans, lines=True)
    _write_json(root / "context.jsonl", ctx, lines=True)
    return {"llava-bench-in-the-wild": {"questions": len(qs), "images": len(ctx)}}


def write_mmvet(out: Path) -> dict:
    recs = {}
    for k, (cap, q, a) in enumerate((
            (["rec"], "What animal is shown?", "{a}"),
            (["rec", "spat"], "What is next to the {a}?", "{b}<OR>a {b}"),
            (["rec", "ocr"], "Which colours appear in the image?", "{c}<AND>grey"))):
        objs, col = VAL[k]
        name = f"v1_{k}.png" if k != 1 else f"v1_{k}.jpg"
        _jpeg(out / "mm-vet/images" / name, objs, col, 500 + k,
              fmt="PNG" if name.endswith(".png") else "JPEG")
        recs[f"v1_{k}"] = {"imagename": name, "capability": cap,
                           "question": q.format(a=objs[0]),
                           "answer": a.format(a=objs[0], b=objs[1], c=col)}
    _write_json(out / "mm-vet/mm-vet.json", recs)
    return {"mm-vet/mm-vet.json": len(recs)}


def write_textvqa(out: Path) -> dict:
    data = []
    words = ["stop", "open", "exit"]
    for k, w in enumerate(words):
        objs, col = VAL[k]
        iid = f"003a8ae2ef43b90{k}"
        _jpeg(out / "textvqa/train_images" / f"{iid}.jpg", objs, col, 600 + k)
        answers = [w] * 7 + [w.upper(), f"{w} sign", "unanswerable"]
        data.append({"question": "what does the sign say?", "image_id": iid,
                     "image_classes": [o.title() for o in objs],
                     "flickr_original_url": f"https://farm2.staticflickr.com/{iid}_o.jpg",
                     "flickr_300k_url": f"https://c4.staticflickr.com/{iid}_z.jpg",
                     "image_width": 64, "image_height": 48, "answers": answers,
                     "question_tokens": ["what", "does", "the", "sign", "say"],
                     "question_id": 34602 + k, "set_name": "val"})
    _write_json(out / "textvqa/TextVQA_0.5.1_val.json",
                {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                 "data": data})
    return {"textvqa/TextVQA_0.5.1_val.json": len(data)}


def write_gqa(out: Path) -> dict:
    recs = {}
    for k in range(3):
        objs, col = VAL[k]
        iid = f"n16131{k}"
        _jpeg(out / "gqa/images" / f"{iid}.jpg", objs, col, 700 + k)
        q, a = ((f"Is there a {objs[0]} in the picture?", "yes") if k != 1 else
                (f"What colour is the {objs[0]}?", col))
        recs[str(201307251 + k)] = {
            "semantic": [{"operation": "select", "dependencies": [], "argument": f"{objs[0]} (1)"}],
            "entailed": [], "equivalent": [str(201307251 + k)], "question": q, "imageId": iid,
            "isBalanced": True, "groups": {"global": None, "local": "10q-" + objs[0]},
            "answer": a, "semanticStr": f"select: {objs[0]} (1)",
            "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"structural": "verify" if a == "yes" else "query",
                      "semantic": "obj" if a == "yes" else "attr", "detailed": "existC"},
            "fullAnswer": f"Yes, there is a {objs[0]}." if a == "yes" else f"The {objs[0]} is {a}."}
    _write_json(out / "gqa/testdev_balanced_questions.json", recs)
    return {"gqa/testdev_balanced_questions.json": len(recs)}


# ---- models ----------------------------------------------------------------------------------
def _corpus(out: Path) -> list[str]:
    """Every text of the written datasets (the miniature tokenizers' training text)."""
    texts = []
    for p in sorted(out.glob("**/*.json*")):
        if "models" in p.parts:
            continue
        for line in ([p.read_text()] if p.suffix == ".json" else p.read_text().splitlines()):
            texts.append(line)
    texts += ["A chat between a curious human and an artificial intelligence assistant.",
              "USER: ASSISTANT: Answer the question using a single word or phrase.",
              "yes no there is a an the of in on with next to left right top bottom colour"]
    return texts


def build_llava_next(out_dir: Path, corpus: list[str], seed: int = 0, image_size: int = 32,
                     patch_size: int = 8, vision: dict | None = None, text: dict | None = None):
    """A random `LlavaNextForConditionalGeneration` with its `LlavaNextProcessor` (byte-level BPE
    tokenizer trained on `corpus`, LLaVA-1.6-vicuna's chat template, AnyRes pinpoints of 1–2
    tiles of `image_size`), saved with `save_pretrained` in `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig,
                              LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor, PreTrainedTokenizerFast)

    vision = {"width": 32, "layers": 2, "heads": 2, **(vision or {})}
    text = {"width": 32, "mlp": 64, "layers": 2, "heads": 2, "max_len": 512, **(text or {})}
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>",
                                  extra_special_tokens={"image_token": "<image>"})
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.padding_side = "left"
    s = image_size
    pins = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    ip = LlavaNextImageProcessor(image_grid_pinpoints=pins, size={"shortest_edge": s},
                                 crop_size={"height": s, "width": s}, do_center_crop=True,
                                 do_convert_rgb=True)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=patch_size,
                              vision_feature_select_strategy="default", image_token="<image>",
                              num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    vc = CLIPVisionConfig(image_size=s, patch_size=patch_size, hidden_size=vision["width"],
                          intermediate_size=4 * vision["width"], num_hidden_layers=vision["layers"],
                          num_attention_heads=vision["heads"], projection_dim=vision["width"])
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=text["width"], intermediate_size=text["mlp"],
                     num_hidden_layers=text["layers"], num_attention_heads=text["heads"],
                     num_key_value_heads=text["heads"], max_position_embeddings=text["max_len"],
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    cfg = LlavaNextConfig(vision_config=vc, text_config=tc, image_grid_pinpoints=pins,
                          image_token_index=tok.convert_tokens_to_ids("<image>"),
                          vision_feature_select_strategy="default", vision_feature_layer=-2,
                          projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg)
    g = model.generation_config
    g.pad_token_id, g.eos_token_id, g.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return model, proc


def build_sentence_embedder(out_dir: Path, corpus: list[str], seed: int = 0, width: int = 32):
    """A random `MPNetModel` (all-mpnet-base-v2's class) with a WordPiece tokenizer trained on
    `corpus`, saved as a sentence-transformers directory: Transformer → mean Pooling →
    Normalize (all-mpnet-base-v2's modules)."""
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers ≥ 6 (the old `models` path warns)
        from sentence_transformers.sentence_transformer import modules as stm
    except ImportError:
        from sentence_transformers import models as stm
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tk = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator(corpus, trainers.WordPieceTrainer(
        vocab_size=500, special_tokens=specials, show_progress=False))
    tk.post_processor = TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tk.token_to_id("<s>")), ("</s>", tk.token_to_id("</s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
                                  sep_token="</s>", mask_token="<mask>", model_max_length=128)
    torch.manual_seed(seed)
    cfg = MPNetConfig(vocab_size=len(tok), hidden_size=width, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=2 * width,
                      max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        MPNetModel(cfg).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        word = stm.Transformer(tmp, max_seq_length=128)
        st = SentenceTransformer(modules=[word, stm.Pooling(width, pooling_mode="mean"),
                                          stm.Normalize()], device="cpu")
        out_dir.mkdir(parents=True, exist_ok=True)
        st.save(str(out_dir))
    return st


def write_assets(out) -> dict:
    out = Path(out)
    summary = {}
    for fn in (write_povid, write_coco_val, write_mmhal, write_llavaw, write_mmvet, write_textvqa,
               write_gqa):
        summary.update(fn(out))
    corpus = _corpus(out)
    if not (out / LLAVA / "config.json").is_file() or \
            not (out / LLAVA / "processor_config.json").is_file():
        build_llava_next(out / LLAVA, corpus)
    if not (out / EMBEDDER / "modules.json").is_file():
        build_sentence_embedder(out / EMBEDDER, corpus)
    summary[LLAVA] = "LlavaNextForConditionalGeneration + LlavaNextProcessor (random miniature)"
    summary[EMBEDDER] = "sentence-transformers MPNet (random miniature)"
    return summary
