"""The LLaVA-style model: built from config (tiny) or loaded by hub id / saved directory (paper).

Tiny scale: a CLIP vision tower and a Llama language model, both small, joined by LLaVA's MLP
projector in transformers' `LlavaForConditionalGeneration` (``arch: llava``, LLaVA-1.5) or
`LlavaNextForConditionalGeneration` (``arch: llava_next``, LLaVA-1.6: AnyRes — the image is
resized to the best of ``image_grid_pinpoints`` and cut into tiles of the vision tower's size,
each tile plus a downscaled whole image encoded, newline tokens between rows), with a
word-level tokenizer over the world's vocabulary (`tokenizers` WordLevel) and the matching
processor made locally. Every stage
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
    """(model, processor) from the tiny config: fresh weights, seeded by the caller.
    ``mcfg["arch"]``: ``llava`` (default, LLaVA-1.5) or ``llava_next`` (LLaVA-1.6, AnyRes tiles
    over ``image_grid_pinpoints``, default the tile size × {1×2, 2×1, 2×2})."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaNextConfig,
                              LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor, LlavaProcessor)

    tok = world_tokenizer(colours, shapes)
    v, t = mcfg["vision"], mcfg["text"]
    size = v["image_size"]
    arch = mcfg.get("arch", "llava")
    if arch not in ("llava", "llava_next"):
        raise ValueError(f"model.tiny.arch: {arch!r}; known: llava, llava_next")
    pins = mcfg.get("image_grid_pinpoints") or [[size, 2 * size], [2 * size, size],
                                                 [2 * size, 2 * size]]
    common = dict(crop_size={"height": size, "width": size}, do_center_crop=True,
                  do_convert_rgb=True, size={"shortest_edge": size})
    ptype, ipt = (LlavaNextProcessor, LlavaNextImageProcessor(image_grid_pinpoints=pins, **common)) \
        if arch == "llava_next" else (LlavaProcessor, CLIPImageProcessor(**common))
    # num_additional_image_tokens=1: the vision tower's CLS token, which strategy "default" drops;
    # without it the processor's image-token count does not match the image features
    proc = ptype(image_processor=ipt, tokenizer=tok, patch_size=v["patch_size"],
                 vision_feature_select_strategy="default", image_token=SPECIAL["image"],
                 num_additional_image_tokens=1)
    vc = CLIPVisionConfig(image_size=size, patch_size=v["patch_size"], hidden_size=v["width"],
                          intermediate_size=4 * v["width"], num_hidden_layers=v["layers"],
                          num_attention_heads=v["heads"], projection_dim=v["width"])
    tc = LlamaConfig(vocab_size=len(tok), hidden_size=t["width"], intermediate_size=t["mlp"],
                     num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                     num_key_value_heads=t["heads"], max_position_embeddings=t["max_len"],
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    common = dict(vision_config=vc, text_config=tc,
                  image_token_index=tok.convert_tokens_to_ids(SPECIAL["image"]),
                  vision_feature_select_strategy="default", vision_feature_layer=-1,
                  projector_hidden_act="gelu")
    if arch == "llava_next":
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(image_grid_pinpoints=pins,
                                                                  **common))
    else:
        model = LlavaForConditionalGeneration(LlavaConfig(**common))
    _gen_config(model, proc)
    return model, proc


def _gen_config(model, proc):
    tok = proc.tokenizer
    g = model.generation_config
    g.pad_token_id, g.eos_token_id, g.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    image_id = model.config.image_token_id if hasattr(model.config, "image_token_id") \
        else model.config.image_token_index
    g.suppress_tokens = [int(image_id)]  # never generate the image placeholder token


def load(path_or_id: str, dtype=None):
    """(model, processor) from a saved directory or a hub id; a bad directory is a CheckpointError.

    A directory holding a LoRA adapter (``adapter_config.json``, what a LoRA DPO job saves: MBs,
    not the 14 GB of a merged 7B) loads its base model (``base_model_name_or_path``) and merges
    the adapter into it."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    p = Path(path_or_id)
    adapter = (p / "adapter_config.json").is_file()
    if (p.is_absolute() or path_or_id.startswith((".", "results"))) and not adapter \
            and not (p / "config.json").is_file():
        raise CheckpointError(f"{p}: not a saved model directory (no config.json)")
    try:
        if adapter:
            import json

            from peft import PeftModel

            base = json.loads((p / "adapter_config.json").read_text())["base_model_name_or_path"]
            model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
            model = PeftModel.from_pretrained(model, str(p)).merge_and_unload()
        else:
            model = AutoModelForImageTextToText.from_pretrained(path_or_id, dtype=dtype)
        proc = AutoProcessor.from_pretrained(path_or_id)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path_or_id}: cannot load the model/processor ({e})") from None
    proc.tokenizer.padding_side = "left"
    _gen_config(model, proc)
    return model, proc


def prompt(proc, question: str) -> str:
    """The conversation prompt with one image: the processor's own chat template where it has
    one (llava-hf/llava-v1.6-vicuna-7b-hf: vicuna_v1, "USER: <image>\\n… ASSISTANT:"), else the
    world's plain LLaVA-style prompt."""
    if getattr(proc, "chat_template", None):
        return proc.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True)
    return f"{proc.image_token if hasattr(proc, 'image_token') else '<image>'}\nUSER: {question}\nASSISTANT:"


class _Batches:
    """Batch i of a generation: its images decoded and processed with the prompts (map-style, so
    a `DataLoader` with workers decodes the next batches while the model generates)."""

    def __init__(self, proc, images, texts, batch_size):
        self.proc, self.images, self.texts, self.bs = proc, images, texts, batch_size

    def __len__(self):
        return (len(self.texts) + self.bs - 1) // self.bs

    def __getitem__(self, i):
        from .data import open_image

        sl = slice(i * self.bs, (i + 1) * self.bs)
        imgs = [open_image(im) if isinstance(im, (str, Path)) else im for im in self.images[sl]]
        return dict(self.proc(images=imgs, text=self.texts[sl], padding=True, return_tensors="pt"))


def generate(model, proc, images, questions, max_new_tokens=24, do_sample=False,
             temperature=1.0, batch_size=64, attention_hook=None, prefixes=None, stop_at_period=False,
             num_workers=0, progress=None):
    """Greedy (or sampled) answers to `questions` about `images`, decoded to text.

    `images` are paths (decoded batch by batch, in `num_workers` DataLoader workers when > 0)
    or PIL images. `prefixes` continue a partial answer (BDHS); `attention_hook(input_ids,
    attention_mask)` may return a modified attention mask (BDHS masks image tokens out of
    attention: every image token, i.e. every AnyRes tile's, carries the image token id).
    """
    import torch
    from torch.utils.data import DataLoader

    tok = proc.tokenizer
    out = []
    device = next(model.parameters()).device
    model.eval()
    pre = prefixes or [""] * len(questions)
    texts = [prompt(proc, q) + (" " + p if p else "") for q, p in zip(questions, pre)]
    batches = _Batches(proc, list(images), texts, batch_size)
    it = DataLoader(batches, batch_size=None, num_workers=num_workers) if num_workers else \
        (batches[i] for i in range(len(batches)))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(batches), desc=progress, mininterval=10)
    for enc in it:
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
