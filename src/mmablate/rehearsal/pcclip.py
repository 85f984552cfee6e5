"""PC-CLIP's rehearsal assets: COCO 2017 captions and images, the evaluation pairs, the ViT-L-14
base and the four captioner LMs, each a random miniature of its real class.

* ``coco/annotations/captions_{train,val}2017.json`` — COCO's structure (``info``, ``licenses``,
  ``images`` with id/file_name/width/height/coco_url/flickr_url/date_captured/license,
  ``annotations`` with id/image_id/caption, five captions per image) and
  ``coco/{train,val}2017/<12-digit id>.jpg``. The validation captions hold minimal caption pairs
  (one colour, number or size word apart), the only pairs `pcclip-coco-eval-pairs` builds.
* ``pcclip/eval_pairs.csv`` — written by the code of ``python -m mmablate pcclip-coco-eval-pairs``
  (`mmablate.studies.pcclip.data.coco_eval_pairs`) from the validation captions, as paper.yaml
  says it is built.
* ``models/laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K/`` — the base CLIP as the hub ships it:
  ``open_clip_config.json`` (``model_cfg`` = `VITL14_MINI`, an open_clip ``VisionTransformer``
  and text transformer at width 32) and ``open_clip_pytorch_model.bin`` (random weights). The
  overlay sets ``base.model.cfg`` to `VITL14_MINI` and ``base.model.pretrained`` to the file.
* ``bench/`` — PC-CLIP's own evaluation datasets in their distributed formats
  (`mmablate.rehearsal.pcclip_bench`).
* ``models/<hub id>/`` — the captioners, ``save_pretrained`` directories with their tokenizer:
  ``meta-llama/Llama-2-13b-chat-hf`` (``LlamaForCausalLM``, the Llama-2 chat template),
  ``EleutherAI/gpt-j-6b`` (``GPTJForCausalLM``), ``google-bert/bert-large-uncased``
  (``BertForMaskedLM``), ``google/flan-t5-xl`` (``T5ForConditionalGeneration``). Tokenizers are
  word-level fast tokenizers built offline over the prompts and captions
  (`mmablate.studies.pcclip.captioners.build_tokenizer`), never fetched.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..util import write_atomic

N_TRAIN_IMAGES = 24
N_VAL_IMAGES = 24
N_EVAL_PAIRS = 8
IMAGE_SIZE = 48
VITL14_DIR = "models/laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K"

#: a random miniature of open_clip's ViT-L-14 (24 layers × 1024 wide at 224 px, patch 14; text
#: 12 × 768): the same classes, 1 layer each, width 32, 32 px, patch 16
VITL14_MINI = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                   "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}

CAPTIONERS = {  # the paper.yaml hub id → (the class, tokenizer family)
    "meta-llama/Llama-2-13b-chat-hf": ("llama", "causal"),
    "EleutherAI/gpt-j-6b": ("gptj", "causal"),
    "google-bert/bert-large-uncased": ("bert", "masked"),
    "google/flan-t5-xl": ("t5", "seq2seq"),
}
# A random LM's greedy output is often one token repeated, which the paper's caption filter
# drops (max_repeat); with every caption dropped a finetune has nothing to train on. So each
# miniature's initialisation seed is the first of 0, 1, … whose captions of `probe_pairs` (the
# paper prompt, the overlay's MAX_NEW_TOKENS, greedy, as pcclip-captions runs it) pass the
# paper's filter at least half the time (T5 also gets initializer_factor 5: at the default
# scale it repeated one token for every seed tried). Numbers mean nothing.
MAX_NEW_TOKENS = 12  # = rehearsal.yaml's studies.pcclip.captions.max_new_tokens (a test holds it)
MAX_SEEDS = 20


# Llama-2 chat's prompt format as its tokenizer_config.json's chat_template writes it: an
# optional <<SYS>> block folded into the first user turn, each user turn in [INST] … [/INST]
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

_OBJECTS = ["bus", "car", "cat", "dog", "umbrella", "kite", "bench", "train"]
_PLACES = ["parked on the street", "in a grassy field", "next to a building", "on the beach"]
_COLOURS = ["red", "blue", "white", "black", "yellow", "green"]
_COUNTS = ["two", "three", "four"]
_SIZES = ["small", "large"]


def captions_of(k: int, val: bool) -> list[str]:
    """Five COCO-style captions of image `k`. Validation images share (object, place) in
    groups of distinct colours, so their first captions form minimal pairs."""
    obj = _OBJECTS[(k // len(_COLOURS)) % len(_OBJECTS)] if val else _OBJECTS[k % len(_OBJECTS)]
    place = _PLACES[(k // len(_COLOURS)) % len(_PLACES)] if val else _PLACES[k % len(_PLACES)]
    colour = _COLOURS[k % len(_COLOURS)]
    n, size = _COUNTS[k % len(_COUNTS)], _SIZES[k % len(_SIZES)]
    return [f"A {colour} {obj} {place}.", f"A {size} {obj} {place}",
            f"There are {n} {obj}s {place}.", f"a photo of a {obj} {place}",
            f"An image showing a {colour} {obj}."]


def write_coco(root, split: str, n_images: int, first_id: int, seed: int) -> dict:
    """``annotations/captions_<split>.json`` and ``<split>/<id>.jpg`` in COCO's layout."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    img_dir, ann_path = root / split, root / "annotations" / f"captions_{split}.json"
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    val = split.startswith("val")
    for k in range(n_images):
        iid = first_id + 37 * k
        name = f"{iid:012d}.jpg"
        arr = np.empty((IMAGE_SIZE, IMAGE_SIZE + 16, 3), dtype=np.uint8)
        arr[:] = rng.integers(0, 256, 3, dtype=np.uint8)
        arr[8:24, 8:30] = rng.integers(0, 256, 3, dtype=np.uint8)
        if not (img_dir / name).is_file():
            Image.fromarray(arr).save(img_dir / name, format="JPEG", quality=85)
        images.append({"license": 1 + k % 6, "file_name": name,
                       "coco_url": f"http://images.cocodataset.org/{split}/{name}",
                       "height": IMAGE_SIZE, "width": IMAGE_SIZE + 16,
                       "date_captured": "2013-11-14 11:18:45",
                       "flickr_url": f"http://farm4.staticflickr.com/{iid}.jpg", "id": iid})
        for j, c in enumerate(captions_of(k, val)):
            anns.append({"image_id": iid, "id": 100000 + 5 * (first_id + k) + j, "caption": c})
    if not ann_path.is_file():
        ann_path.write_text(json.dumps({
            "info": {"description": "COCO 2017 Dataset (rehearsal stand-in: random images)",
                     "url": "http://cocodataset.org", "version": "1.0", "year": 2017,
                     "contributor": "COCO Consortium", "date_created": "2017/09/01"},
            "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": i,
                          "name": "Attribution-NonCommercial-ShareAlike License"}
                         for i in range(1, 7)],
            "images": images, "annotations": anns}))
    return {"images": len(images), "annotations": len(anns)}


def corpus(prompts: list[str]) -> list[str]:
    """The texts the captioners' tokenizers are built over: each paper prompt filled with the
    COCO captions, the chat template's markers, and words a difference is written in."""
    caps = [c for k in range(max(N_TRAIN_IMAGES, N_VAL_IMAGES)) for v in (False, True)
            for c in captions_of(k, v)]
    texts = [p.format(a=a, b=b) for p in prompts for a, b in zip(caps, caps[1:])]
    return texts + ["[INST] [/INST] <<SYS>> <</SYS>>",
                    "the first image has more instead of fewer larger smaller brighter a an"]


def save_captioner(out, arch: str, family: str, texts: list[str], seed: int = 0) -> None:
    """A randomly initialised miniature of the captioner's class and its tokenizer, saved with
    ``save_pretrained`` (Llama-2's with its chat template)."""
    import torch
    import transformers as tf

    from ..studies.pcclip.captioners import build_tokenizer

    tok = build_tokenizer(texts, family)
    v = len(tok)
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
           "eos_token_id": tok.eos_token_id}
    torch.manual_seed(seed)
    if arch == "llama":
        tok.chat_template = LLAMA2_CHAT_TEMPLATE
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, **ids))
    elif arch == "gptj":
        model = tf.GPTJForCausalLM(tf.GPTJConfig(
            vocab_size=v, n_positions=512, n_embd=32, n_layer=2, n_head=2, rotary_dim=8, **ids))
    elif arch == "bert":
        model = tf.BertForMaskedLM(tf.BertConfig(
            vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id))
    elif arch == "t5":
        model = tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=v, d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id, initializer_factor=5.0))
    else:
        raise ValueError(f"unknown captioner arch {arch!r}")
    model.save_pretrained(out)
    tok.save_pretrained(out)


def write_base_clip(out) -> dict:
    """The ViT-L-14 base as open_clip's hub repositories hold it: config + weights file."""
    import tempfile

    import torch

    from ..models.clip import import_open_clip

    out = Path(out)
    ckpt = out / "open_clip_pytorch_model.bin"
    if not ckpt.is_file():
        open_clip = import_open_clip()
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as d:
            # registered under its own name: this process's "ViT-L-14" stays open_clip's
            p = Path(d) / "rehearsal-ViT-L-14.json"
            p.write_text(json.dumps(VITL14_MINI))
            open_clip.add_model_config(p)
        torch.manual_seed(0)
        model = open_clip.create_model("rehearsal-ViT-L-14")
        (out / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": VITL14_MINI,
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                               "std": [0.26862954, 0.26130258, 0.27577711]}}, indent=2))
        with write_atomic(ckpt) as tmp:
            torch.save(model.state_dict(), tmp)
    return {"checkpoint": str(ckpt)}


def write_assets(out) -> dict:
    import yaml

    from ..pipeline import REPO
    from ..studies.pcclip.data import coco_eval_pairs

    out = Path(out)
    coco = out / "coco"
    summary = {"coco/train2017": write_coco(coco, "train2017", N_TRAIN_IMAGES, 9, seed=1),
               "coco/val2017": write_coco(coco, "val2017", N_VAL_IMAGES, 139, seed=2)}
    ev = out / "pcclip" / "eval_pairs.csv"
    if not ev.is_file():
        ev.parent.mkdir(parents=True, exist_ok=True)
        # pcclip-coco-eval-pairs' code, as paper.yaml says the CSV is built
        summary["pcclip/eval_pairs.csv"] = coco_eval_pairs(
            coco / "annotations" / "captions_val2017.json", coco / "val2017", ev,
            N_EVAL_PAIRS, 0)
    summary[VITL14_DIR] = write_base_clip(out / VITL14_DIR)
    from .pcclip_bench import write_benchmarks  # PC-CLIP's own evaluation datasets

    summary["bench"] = write_benchmarks(out / "bench")
    # the captioners' prompts are paper.yaml's: the tokenizers must cover their words
    paper = yaml.safe_load((REPO / "config/scales/paper.yaml").read_text())
    specs = paper["studies"]["pcclip"]["captions"]["captioners"]
    texts = corpus([s["prompt"] for s in specs.values()])
    filt = paper["studies"]["pcclip"]["captions"]["filter"]
    for name, s in specs.items():
        d = out / "models" / s["model"]
        if not (d / "config.json").is_file() or not (d / "tokenizer.json").is_file():
            summary[f"models/{s['model']}"] = write_captioner(d, name, s, texts, filt)
        else:
            summary[f"models/{s['model']}"] = CAPTIONERS[s["model"]][0]
    return summary


def probe_pairs(n: int = 12) -> list[dict]:
    """Caption pairs of the training images (as `coco_pairs` draws them: two images' first
    captions) on which each captioner's initialisation is chosen."""
    caps = [captions_of(k, False)[0] for k in range(N_TRAIN_IMAGES)]
    return [{"caption_a": caps[i], "caption_b": caps[(5 * i + 3) % len(caps)]} for i in range(n)]


def write_captioner(d, name: str, spec: dict, texts: list[str], filt: dict) -> dict:
    """The captioner's miniature with the first seed whose captions pass the filter (above)."""
    import shutil

    from ..studies.pcclip.captioners import is_degenerate, make_captioner

    arch, family = CAPTIONERS[spec["model"]]
    pairs = probe_pairs()
    for seed in range(MAX_SEEDS):
        shutil.rmtree(d, ignore_errors=True)
        save_captioner(d, arch, family, texts, seed)
        out = make_captioner(name, spec, str(d), batch_size=16,
                             max_new_tokens=MAX_NEW_TOKENS).caption(pairs)
        kept = sum(is_degenerate(t, p, filt) is None for t, p in zip(out, pairs))
        if 2 * kept >= len(pairs):
            return {"class": arch, "init_seed": seed, "kept": f"{kept}/{len(pairs)}"}
    raise RuntimeError(f"{d}: no initialisation seed below {MAX_SEEDS} writes captions the "
                       f"filter keeps")
