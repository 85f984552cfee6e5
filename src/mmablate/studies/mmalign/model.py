"""The LLaVA-style model: built from config (tiny) or loaded by hub id / saved directory (paper).

Tiny scale: a CLIP vision tower and a Llama language model, both small, joined by LLaVA's MLP
projector in transformers' `LlavaForConditionalGeneration`, with a word-level tokenizer over the
world's vocabulary (`tokenizers` WordLevel) and a `LlavaProcessor` made locally. Every stage
after SFT loads the model with `load()` from a `save_pretrained` directory — the same call the
paper scale makes with ``llava-hf/llava-v1.6-vicuna-7b-hf`` (`AutoModelForImageTextToText`
dispatches LLaVA-1.6 to `LlavaNextForConditionalGeneration`).
"""
from __future__ import annotations

from pathlib import Path

from ...errors import CheckpointError
from ...world.scenes import vocabulary
from ...world.vqa import EXTRA_WORDS

SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "image": "<image>"}


def world_tokenizer(colours, shapes):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(vocabulary(tuple(colours), tuple(shapes)) + EXTRA_WORDS))
    vocab = {t: i for i, t in enumerate(list(SPECIAL.values()) + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["unk"]))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation (".", "?", ":")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=SPECIAL["pad"],
                                  bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"],
                                  unk_token=SPECIAL["unk"], extra_special_tokens={"image_token": SPECIAL["image"]})
    tok.add_special_tokens({"additional_special_tokens": [SPECIAL["image"]]})
    tok.padding_side = "left"
    return tok


def build_tiny(mcfg: dict, colours, shapes):
    """(model, processor) from the tiny config: fresh weights, seeded by the caller."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = world_tokenizer(colours, shapes)
    v, t = mcfg["vision"], mcfg["text"]
    size = v["image_size"]
    ip = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                            do_center_crop=True, do_convert_rgb=True)
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=v["patch_size"],
                          vision_feature_select_strategy="default", image_token=SPECIAL["image"],
                          num_additional_image_tokens=1)  # CLS token (PITFALLS)
    vc = CLIPVisionConfig(image_size=size, patch_size=v["patch_size"], hidden_size=v["width"],
                          intermediate_size=4 * v["width"], num_hidden_layers=v["layers"],
                          num_attention_heads=v["heads"], projection_dim=v["width"])
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=t["width"], intermediate_size=t["mlp"],
                     num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                     num_key_value_heads=t["heads"], max_position_embeddings=t["max_len"],
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    cfg = LlavaConfig(vision_config=vc, text_config=tc,
                      image_token_index=tok.convert_tokens_to_ids(SPECIAL["image"]),
                      vision_feature_select_strategy="default", vision_feature_layer=-1,
                      projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg)
    _gen_config(model, proc)
    return model, proc


def _gen_config(model, proc):
    tok = proc.tokenizer
    g = model.generation_config
    g.pad_token_id, g.eos_token_id, g.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    image_id = model.config.image_token_id if hasattr(model.config, "image_token_id") \
        else model.config.image_token_index
    g.suppress_tokens = [int(image_id)]  # never generate the image placeholder (PITFALLS)


def load(path_or_id: str, dtype=None):
    """(model, processor) from a saved directory or a hub id; a bad directory is a CheckpointError."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    p = Path(path_or_id)
    if (p.is_absolute() or path_or_id.startswith((".", "results"))) and not (p / "config.json").is_file():
        raise CheckpointError(f"{p}: not a saved model directory (no config.json)")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path_or_id, dtype=dtype)
        proc = AutoProcessor.from_pretrained(path_or_id)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path_or_id}: cannot load the model/processor ({e})") from None
    proc.tokenizer.padding_side = "left"
    _gen_config(model, proc)
    return model, proc


def prompt(proc, question: str) -> str:
    """The LLaVA-1.5/1.6 (vicuna) conversation prompt with one image."""
    return f"{proc.image_token if hasattr(proc, 'image_token') else '<image>'}\nUSER: {question}\nASSISTANT:"


def generate(model, proc, images, questions, max_new_tokens=24, do_sample=False,
             temperature=1.0, batch_size=64, attention_hook=None, prefixes=None, stop_at_period=False):
    """Greedy (or sampled) answers to `questions` about `images`, decoded to text.

    `prefixes` continue a partial answer (BDHS); `attention_hook(input_ids, attention_mask)` may
    return a modified attention mask (BDHS masks image tokens out of attention).
    """
    import torch

    tok = proc.tokenizer
    out = []
    device = next(model.parameters()).device
    model.eval()
    for i in range(0, len(questions), batch_size):
        qs = questions[i:i + batch_size]
        pre = (prefixes or [""] * len(questions))[i:i + batch_size]
        texts = [prompt(proc, q) + (" " + p if p else "") for q, p in zip(qs, pre)]
        enc = proc(images=images[i:i + batch_size], text=texts, padding=True, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        if attention_hook is not None:
            enc["attention_mask"] = attention_hook(enc["input_ids"], enc["attention_mask"])
        kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample)
        if do_sample:
            kw.update(temperature=temperature, top_k=0, top_p=1.0)
        if stop_at_period:
            kw["eos_token_id"] = [tok.eos_token_id, tok.convert_tokens_to_ids(".")]
        with torch.no_grad():
            ids = model.generate(**enc, **kw)
        new = ids[:, enc["input_ids"].shape[1]:]
        out += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    return out
