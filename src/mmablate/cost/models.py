"""Model FLOPs per sample, counted by torch's `FlopCounterMode` on models built on the `meta`
device: the real classes (open_clip, transformers, diffusers, peft) at their real shapes, no
weights allocated, nothing downloaded.

Paper-scale models are built from their published configurations (`PUBLISHED`, each with its
source: the hub repository's ``config.json``); open_clip's architectures from the model configs
that ship with open_clip. The tiny/smoke models from the stage configs, with the studies' own
builders where they build from a config (`mmablate.studies.pcclip.captioners.build_model`,
`mmablate.studies.mmalign.model.build_tiny`, `mmablate.studies.pairrank.dpo.add_lora`).

What is counted (torch.utils.flop_counter): matrix products, convolutions and attention
(scaled-dot-product kernels included), forward and — for training — backward, gradient
checkpointing's recomputation included where the model runs it. Element-wise work (norms,
activations, the optimizer) is not counted; nor are data loading and decoding.

Depth: a stack of identical layers costs the same per layer, so a published model of depth L
is counted at depths 1 and 2 (the real layer classes and widths) and its FLOPs taken as
F(1) + (L − 1)·(F(2) − F(1)) — exact for such stacks (tests/test_cost.py checks it against a full
count) and what keeps a 7B model's count to seconds on a CPU. Every count is memoised per
(what, shapes) for the process: the 454 paper jobs need ~25 counts.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

_MEMO: dict = {}
_DISK = {"path": None, "loaded": False}


def use_cache(path) -> None:
    """Keep counts across runs in the JSON file `path` (None: this process only). Entries are
    keyed by the versions of torch, transformers, diffusers, open_clip and peft too."""
    _DISK.update(path=None if path is None else Path(path), loaded=False)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in ("torch", "transformers", "diffusers", "open_clip_torch", "peft"):
        try:
            out.append(f"{p}={version(p)}")
        except PackageNotFoundError:
            out.append(f"{p}=?")
    return ",".join(out)


def _disk_load():
    if _DISK["loaded"] or _DISK["path"] is None:
        return
    _DISK["loaded"] = True
    try:
        data = json.loads(_DISK["path"].read_text())
    except (OSError, ValueError):
        return
    if data.get("versions") == _versions():
        for k, v in data.get("counts", {}).items():
            _MEMO.setdefault(k, v)


def _disk_save():
    if _DISK["path"] is None:
        return
    from ..util import write_json

    try:
        write_json(_DISK["path"], {"versions": _versions(), "counts": _MEMO})
    except OSError:  # a read-only home: the counts stay in this process
        pass


def memo(key, fn):
    """fn() once per key (in this process, and across runs with `use_cache`)."""
    _disk_load()
    k = json.dumps(key, sort_keys=True, default=str)
    if k not in _MEMO:
        _MEMO[k] = fn()
        _disk_save()
    return _MEMO[k]


def count(fn) -> float:
    """FLOPs of `fn()` as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


@contextlib.contextmanager
def quiet():
    """open_clip and transformers warn about random weights; there are none at all here."""
    import logging

    old = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(old)


def by_depth(fn, depth: int) -> float:
    """fn(depth) for a stack of `depth` identical layers, from fn(1) and fn(2) when deeper."""
    if depth <= 2:
        return fn(depth)
    f1, f2 = fn(1), fn(2)
    return f1 + (depth - 1) * (f2 - f1)


def _depth_keys(cls: str) -> tuple:
    return {"GPTJConfig": ("n_layer",), "T5Config": ("num_layers", "num_decoder_layers")}.get(
        cls, ("num_hidden_layers",))


def _depth(p) -> int:
    return int(p.kwargs[_depth_keys(p.cls)[0]])


def _at_depth(p, d: int):
    return Published(p.cls, {**p.kwargs, **{k: d for k in _depth_keys(p.cls)}}, p.source)


# ---- published configurations (paper scale) ----------------------------------------------------
@dataclass(frozen=True)
class Published:
    cls: str        # transformers config class
    kwargs: dict
    source: str


PUBLISHED = {
    "meta-llama/Llama-2-13b-chat-hf": Published("LlamaConfig", dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
        "meta-llama/Llama-2-13b-chat-hf config.json (Touvron et al. 2023, Table 1: 13B, 40 layers)"),
    "EleutherAI/gpt-j-6b": Published("GPTJConfig", dict(
        n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048),
        "EleutherAI/gpt-j-6b config.json"),
    "google-bert/bert-large-uncased": Published("BertConfig", dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        vocab_size=30522, max_position_embeddings=512),
        "google-bert/bert-large-uncased config.json (Devlin et al. 2019: BERT-large 24/1024/16)"),
    "google/flan-t5-xl": Published("T5Config", dict(
        d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24,
        vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
        "google/flan-t5-xl config.json"),
    # LLaVA-1.6 (LLaVA-NeXT) Vicuna-7B: Vicuna-7B v1.5 (Llama-2-7B shapes) + CLIP ViT-L/14-336
    "llava-hf/llava-v1.6-vicuna-7b-hf": Published("LlavaNextConfig", dict(
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                  max_position_embeddings=4096),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768),
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        vision_feature_layer=-2, vision_feature_select_strategy="default"),
        "llava-hf/llava-v1.6-vicuna-7b-hf config.json (text: lmsys/vicuna-7b-v1.5; vision: "
        "openai/clip-vit-large-patch14-336)"),
    "sentence-transformers/all-mpnet-base-v2": Published("MPNetConfig", dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        vocab_size=30527), "sentence-transformers/all-mpnet-base-v2 config.json"),
    # SD-1.5's VAE and text encoder (the UNet: mmablate.bench.sd15_unet_config)
    "sd15/vae": Published("AutoencoderKL", dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, norm_num_groups=32),
        "runwayml/stable-diffusion-v1-5 vae/config.json"),
    "sd15/text_encoder": Published("CLIPTextConfig", dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu"),
        "runwayml/stable-diffusion-v1-5 text_encoder/config.json (CLIP ViT-L/14's text tower)"),
    # ImageReward: BLIP ViT-L/16 at 224 px + a BERT-base text encoder cross-attending to it
    "THUDM/ImageReward": Published("Blip", dict(
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=224, patch_size=16),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, encoder_hidden_size=1024, vocab_size=30524),
        text_len=35),
        "THUDM/ImageReward med_config.json (BERT-base, cross-attention width 1024) and "
        "Xu et al. 2023 (BLIP ViT-L/16 image encoder, prompts truncated to 35 tokens)"),
}
SD15_UNET_SOURCE = "runwayml/stable-diffusion-v1-5 unet/config.json (mmablate.bench.sd15_unet_config)"


def local_config(path):
    """The transformers config of a local model directory (its config.json), else None."""
    if path is None or not (Path(str(path)) / "config.json").is_file():
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def published(name: str) -> Published:
    if name not in PUBLISHED:
        from ..errors import ConfigError

        raise ConfigError(f"cost: no published configuration of {name!r} (known: "
                          f"{sorted(PUBLISHED)}); add it to mmablate.cost.models.PUBLISHED")
    return PUBLISHED[name]


def _tf_config(p: Published):
    import transformers as tf

    return getattr(tf, p.cls)(**p.kwargs)


def params_of(model) -> float:
    return float(sum(t.numel() for t in model.parameters()))


# ---- open_clip ---------------------------------------------------------------------------------
def clip_model(block: dict, depth: int | None = None):
    """An open_clip model of a stage's model block on the meta device: a named architecture
    (the configs open_clip ships) or the tiny world model registered from ``cfg``; `depth`:
    both towers cut to that many layers (for `by_depth`)."""
    import torch

    from ..models.clip import import_open_clip, world_tokenizer

    open_clip = import_open_clip(block)
    arch = block["arch"]
    cfg = block.get("cfg")
    if depth is not None:
        cfg = json.loads(json.dumps(cfg or open_clip.get_model_config(arch)))
        cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = depth
        arch = f"{arch}-mmablate-cost-depth{depth}"
    if cfg is not None:
        cfg = json.loads(json.dumps(cfg))
        # a name of its own: open_clip's registry is per process, and a miniature registered
        # as "RN50" would replace the real RN50 for every later count
        from ..util import config_hash

        arch = f"{arch}-mmablate-cost-{config_hash(cfg)}"
        if block.get("cfg") is not None and block.get("tokenizer", "world") == "world":
            tok = world_tokenizer(cfg["text_cfg"].get("context_length", 24))
            cfg["text_cfg"].update(vocab_size=tok.vocab_size, pool_type="eos", eos_id=tok.eot_id)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / f"{arch}.json"
            p.write_text(json.dumps(cfg))
            open_clip.add_model_config(p)
    with quiet(), torch.device("meta"):
        return open_clip.create_model(arch, pretrained=None, output_dict=True, device="meta")


def _clip_key(block):
    return {"arch": block["arch"], "cfg": block.get("cfg")}


def clip_shapes(block: dict) -> tuple[int, int]:
    """(image size, context length) of an open_clip model block."""
    def f():
        m = clip_model(block)
        size = m.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return int(size), int(m.context_length)
    return tuple(memo(("clip_shapes", _clip_key(block)), f))


def _clip_layers(block: dict):
    """The towers' common depth of a named ViT architecture (None: count it whole)."""
    if block.get("cfg") is not None:
        return None
    from ..models.clip import import_open_clip

    cfg = import_open_clip(block).get_model_config(block["arch"]) or {}
    v, t = cfg.get("vision_cfg", {}).get("layers"), cfg.get("text_cfg", {}).get("layers")
    if isinstance(v, int) and isinstance(t, int) and not cfg.get("text_cfg", {}).get("hf_model_name"):
        return v, t
    return None


def clip_flops(block: dict, part: str, train: str | None = None) -> float:
    """FLOPs of one sample through an open_clip model: `part` image | text; `train` None
    (forward, no grad), "all" (forward + backward, every weight trained) or "transformer"
    (the text transformer trained, the rest frozen: PC-CLIP's authors)."""
    layers = _clip_layers(block)
    if layers is not None:
        L = layers[0] if part == "image" else layers[1]
        return memo(("clip", _clip_key(block), part, train), lambda: by_depth(
            lambda d: _clip_count(block, part, train, d), L))
    return memo(("clip", _clip_key(block), part, train),
                lambda: _clip_count(block, part, train, None))


def _clip_count(block, part, train, depth):
    import torch

    m = clip_model(block, depth)
    size, ctx = clip_shapes(block)
    x = torch.zeros(1, 3, size, size, device="meta")
    t = torch.zeros(1, ctx, dtype=torch.long, device="meta")
    enc = (lambda: m.encode_image(x)) if part == "image" else (lambda: m.encode_text(t))
    if train is None or (part == "image" and train == "transformer"):
        with torch.no_grad():
            return count(enc)
    m.requires_grad_(train == "all")
    if train == "transformer":
        m.transformer.requires_grad_(True)
    return count(lambda: enc().float().sum().backward())


# ---- language models ---------------------------------------------------------------------------
class _Vocab:
    """What the captioners' `build_model` reads of a tokenizer: its size and special ids."""

    def __init__(self, n: int):
        self.n = n
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def __len__(self):
        return self.n


TINY_VOCAB = 128  # the world's word-level vocabularies are ~100 words (embeddings cost no FLOPs;
                  # only the LM head's width depends on it)


def lm_model(source: str | None, arch: str | None = None, size: dict | None = None,
             depth: int | None = None):
    """A captioner language model on meta: the paper's by hub id (PUBLISHED; `depth`: cut to
    that many layers) or a tiny one of `arch`/`size` built by the captioners' `build_model`."""
    import torch
    import transformers as tf

    with quiet(), torch.device("meta"):
        local = local_config(source)
        if local is not None:  # a local model directory (e.g. a rehearsal miniature)
            auto = {"bert": tf.AutoModelForMaskedLM, "t5": tf.AutoModelForSeq2SeqLM}.get(
                local.model_type, tf.AutoModelForCausalLM)
            return auto.from_config(local)
        if source is not None:
            p = published(source)
            if depth is not None:
                p = _at_depth(p, depth)
            cfg = _tf_config(p)
            cls = {"LlamaConfig": tf.LlamaForCausalLM, "GPTJConfig": tf.GPTJForCausalLM,
                   "BertConfig": tf.BertForMaskedLM, "T5Config": tf.T5ForConditionalGeneration}[p.cls]
            return cls(cfg)
        from ..studies.pcclip.captioners import build_model

        return build_model(arch, size, _Vocab(TINY_VOCAB), 256)


def lm_flops(source, arch, size, tokens: int, decoder_tokens: int = 0, train: bool = False) -> float:
    """FLOPs of one sequence of `tokens` tokens through a captioner LM (an encoder–decoder gets
    `decoder_tokens` on the decoder side), forward only or forward + backward."""
    def at(depth):
        import torch

        m = lm_model(source, arch, size, depth)
        ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
        kw = {}
        if m.config.is_encoder_decoder:
            kw["decoder_input_ids"] = torch.zeros(1, max(1, decoder_tokens), dtype=torch.long,
                                                  device="meta")
        m.config.pad_token_id = None  # else transformers looks for padding (a value: none on meta)
        run = lambda: m(input_ids=ids, **kw).logits  # noqa: E731
        if not train:
            with torch.no_grad():
                return count(run)
        return count(lambda: run().float().sum().backward())

    def f():
        if source is None or local_config(source) is not None:
            return at(None)
        return by_depth(at, _depth(published(source)))
    return memo(("lm", source, arch, size, tokens, decoder_tokens, train), f)


def lm_params(source, arch=None, size=None) -> float:
    def f():
        if source is None or local_config(source) is not None:
            return params_of(lm_model(source, arch, size))
        return by_depth(lambda d: params_of(lm_model(source, depth=d)), _depth(published(source)))
    return memo(("lm_params", source, arch, size), f)


def encoder_flops(name: str, tokens: int) -> float:
    """A sentence encoder (BDHS's similarity model) over one sequence."""
    def at(depth):
        import torch
        import transformers as tf

        with quiet(), torch.device("meta"):
            local = local_config(name)
            m = tf.AutoModel.from_config(local) if local is not None else \
                tf.MPNetModel(_tf_config(_at_depth(published(name), depth)))
        ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
        m.config.pad_token_id = None
        with torch.no_grad():
            return count(lambda: m(input_ids=ids))
    return memo(("encoder", name, tokens), lambda: at(None) if local_config(name) is not None
                else by_depth(at, _depth(published(name))))


# ---- LLaVA -------------------------------------------------------------------------------------
def llava_model(base: str | None, tiny: dict | None = None, colours=None, shapes=None,
                depth: int | None = None):
    """The paper's LLaVA-1.6 from PUBLISHED (`depth`: both stacks cut to that many layers), or
    the tiny one by mmalign's own `build_tiny`."""
    import torch

    with quiet(), torch.device("meta"):
        if tiny is not None:
            from ..studies.mmalign.model import build_tiny

            return build_tiny(tiny, colours, shapes)[0]
        import transformers as tf

        local = local_config(base)
        if local is not None:  # a local model directory (e.g. a rehearsal miniature)
            cls = tf.LlavaNextForConditionalGeneration if local.model_type == "llava_next" \
                else tf.LlavaForConditionalGeneration
            return cls(local)
        p = published(base).kwargs
        cut = {} if depth is None else {"num_hidden_layers": depth}
        cfg = tf.LlavaNextConfig(
            vision_config=tf.CLIPVisionConfig(**{**p["vision"], **cut}),
            text_config=tf.LlamaConfig(**{**p["text"], **cut}),
            image_grid_pinpoints=p["image_grid_pinpoints"],
            vision_feature_layer=p["vision_feature_layer"],
            vision_feature_select_strategy=p["vision_feature_select_strategy"],
            image_token_index=p["text"]["vocab_size"] - 1)
        return tf.LlavaNextForConditionalGeneration(cfg)


def _llava_key(base, tiny):
    return {"base": base, "tiny": tiny}


def llava_tiles(model, image_hw=(480, 640)) -> tuple[int, int]:
    """(vision-tower tiles, image tokens in the LM) of one image of `image_hw` (height, width):
    LLaVA-NeXT's AnyRes (the base tile + the best grid of tiles; transformers'
    `select_best_resolution` and the processor's own feature count); LLaVA-1.5: one tile."""
    cfg = model.config
    v = cfg.vision_config
    base = (v.image_size // v.patch_size) ** 2
    pins = getattr(cfg, "image_grid_pinpoints", None)
    if not pins:
        return 1, base + (1 if cfg.vision_feature_select_strategy == "full" else 0)
    import types

    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    h, w = select_best_resolution(list(image_hw), pins)
    tiles = 1 + (h // v.image_size) * (w // v.image_size)
    ns = types.SimpleNamespace(image_processor=types.SimpleNamespace(image_grid_pinpoints=pins),
                               patch_size=v.patch_size, num_additional_image_tokens=0)
    ns._get_unpadded_features = lambda *a: LlavaNextProcessor._get_unpadded_features(ns, *a)
    n = LlavaNextProcessor._get_number_of_features(ns, image_hw[0], image_hw[1], v.image_size,
                                                   v.image_size)
    return tiles, int(n)


def llava_flops(base, tiny, colours, shapes, seq: int, mode: str, lora: dict | None = None,
                checkpointing: bool = False, image_hw=(480, 640)) -> dict:
    """FLOPs of one (image, text) sequence of `seq` LM tokens (image tokens included) through
    LLaVA, split as {vision, projector, lm}: `mode` forward (no grad) or train (LoRA on the
    LM's projections when `lora`, else the whole LM; the vision tower frozen, as mmalign's DPO
    and SFT train it), with gradient checkpointing's recomputation when `checkpointing`."""
    def at(depth):
        import torch

        m = llava_model(base, tiny, colours, shapes, depth)
        tiles, _ = llava_tiles(m, image_hw)
        v = m.config.vision_config
        core = m.model
        px = torch.zeros(tiles, 3, v.image_size, v.image_size, device="meta")
        with torch.no_grad():
            vis = count(lambda: core.vision_tower(px, output_hidden_states=True))
            feats = torch.zeros(tiles, (v.image_size // v.patch_size) ** 2, v.hidden_size,
                                device="meta")
            proj = count(lambda: core.multi_modal_projector(feats))
        lm = core.language_model
        head = m.lm_head
        emb = torch.zeros(1, seq, m.config.text_config.hidden_size, device="meta")

        def fwd():
            return head(lm(inputs_embeds=emb).last_hidden_state)
        if mode == "forward":
            with torch.no_grad():
                return {"vision": vis, "projector": proj, "lm": count(fwd)}
        m.requires_grad_(False)
        if lora:
            from peft import LoraConfig, inject_adapter_in_model

            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"]
            inject_adapter_in_model(LoraConfig(r=lora["r"], lora_alpha=lora["alpha"],
                                               target_modules=targets), lm)
        else:
            lm.requires_grad_(True)
        lmf = count(lambda: fwd().float().sum().backward())
        if checkpointing:  # one more forward of the LM (the recomputation), without grad
            with torch.no_grad():
                lmf += count(fwd)
        return {"vision": vis, "projector": proj, "lm": lmf}

    def f():
        if tiny is not None or local_config(base) is not None:
            return at(None)
        p = published(base).kwargs
        got: dict = {}
        cut = lambda d: got.setdefault(d, None) or got.__setitem__(d, at(d)) or got[d]  # noqa: E731
        return {"vision": by_depth(lambda d: cut(d)["vision"], p["vision"]["num_hidden_layers"]),
                "projector": cut(1)["projector"],
                "lm": by_depth(lambda d: cut(d)["lm"], p["text"]["num_hidden_layers"])}
    return memo(("llava", _llava_key(base, tiny), seq, mode, lora, checkpointing,
                 list(image_hw)), f)


def llava_info(base, tiny, colours, shapes, image_hw=(480, 640)) -> dict:
    def parts(depth):
        m = llava_model(base, tiny, colours, shapes, depth)
        return m, params_of(m.model.vision_tower), \
            params_of(m.model.language_model) + params_of(m.lm_head), params_of(m)

    def f():
        whole = tiny is not None or local_config(base) is not None
        m, vis, lm, total = parts(None if whole else 1)
        tiles, n_img = llava_tiles(m, image_hw)
        if not whole:  # parameters are affine in depth too
            p = published(base).kwargs
            m2, vis2, lm2, total2 = parts(2)
            rest = total - vis - lm
            vis = vis + (p["vision"]["num_hidden_layers"] - 1) * (vis2 - vis)
            lm = lm + (p["text"]["num_hidden_layers"] - 1) * (lm2 - lm)
            total = rest + vis + lm
        return {"tiles": tiles, "image_tokens": n_img, "params": total, "lm_params": lm}
    return memo(("llava_info", _llava_key(base, tiny), list(image_hw)), f)


# ---- diffusion -------------------------------------------------------------------------------
def sd_part_config(sd_dir, part: str) -> dict | None:
    """A diffusers pipeline directory's `part` config (unet/, vae/), else None."""
    p = Path(str(sd_dir or "")) / part / "config.json"
    if not p.is_file():
        return None
    return {k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("_")}


def unet_config(unet) -> dict:
    """SD-1.5's UNet config (paper), a local pipeline directory's, or the tiny world UNet's."""
    if isinstance(unet, str):
        return sd_part_config(unet, "unet") or unet_config(None)
    if unet is None:
        from ..bench import sd15_unet_config

        return sd15_unet_config(64, smoke=False)
    return dict(unet)


def unet_flops(unet: dict | None, mode: str, lora_rank: int | None = None,
               checkpointing: bool = False, text_len: int = 77) -> float:
    """One UNet call on one latent (SD-1.5: 4×64×64, 77 text states): forward, or train
    (LoRA of rank `lora_rank` added with the study's own `add_lora`, base frozen)."""
    def f():
        import torch
        from diffusers import UNet2DConditionModel

        cfg = unet_config(unet)
        with quiet(), torch.device("meta"):
            u = UNet2DConditionModel(**cfg)
        s = cfg["sample_size"]
        x = torch.zeros(1, cfg.get("in_channels", 4), s, s, device="meta")
        t = torch.zeros(1, dtype=torch.long, device="meta")
        e = torch.zeros(1, text_len, cfg["cross_attention_dim"], device="meta")
        run = lambda: u(x, t, e).sample  # noqa: E731
        if mode == "forward":
            with torch.no_grad():
                return count(run)
        u.requires_grad_(False)
        if lora_rank:
            from ..studies.pairrank.dpo import add_lora

            add_lora(u, lora_rank, lora_rank)
        else:
            u.requires_grad_(True)
        if checkpointing:
            u.enable_gradient_checkpointing()
            u.train()
        return count(lambda: run().float().sum().backward())
    return memo(("unet", unet, mode, lora_rank, checkpointing, text_len), f)


def vae_flops(part: str, size: int = 512, sd_dir=None) -> float:
    """SD-1.5's VAE (or a local pipeline directory's): encode (image → latent) or decode
    (latent → image) of one image of `size` pixels."""
    def f():
        import torch
        from diffusers import AutoencoderKL

        with quiet(), torch.device("meta"):
            vae = AutoencoderKL.from_config(sd_part_config(sd_dir, "vae")) \
                if sd_part_config(sd_dir, "vae") else AutoencoderKL(**published("sd15/vae").kwargs)
        with torch.no_grad():
            if part == "encode":
                x = torch.zeros(1, 3, size, size, device="meta")
                return count(lambda: vae.encode(x))
            f8 = 2 ** (len(vae.config.block_out_channels) - 1)
            z = torch.zeros(1, vae.config.latent_channels, size // f8, size // f8, device="meta")
            return count(lambda: vae.decode(z))
    return memo(("vae", part, size, str(sd_dir)), f)


def sd_text_flops(sd_dir=None) -> float:
    def f():
        import torch
        from transformers import CLIPTextModel

        local = local_config(Path(str(sd_dir)) / "text_encoder") if sd_dir else None
        with quiet(), torch.device("meta"):
            m = CLIPTextModel(local or _tf_config(published("sd15/text_encoder")))
        n = min(77, m.config.max_position_embeddings)
        ids = torch.zeros(1, n, dtype=torch.long, device="meta")
        with torch.no_grad():
            return count(lambda: m(input_ids=ids))
    return memo(("sd_text", str(sd_dir)), f)


def hf_clip_flops(path) -> float:
    """A transformers CLIP directory (PickScore's): one image + one 77-token prompt."""
    def f():
        import torch
        from transformers import CLIPModel

        with quiet(), torch.device("meta"):
            m = CLIPModel(local_config(path))
        v, t = m.config.vision_config, m.config.text_config
        x = torch.zeros(1, 3, v.image_size, v.image_size, device="meta")
        ids = torch.zeros(1, min(77, t.max_position_embeddings), dtype=torch.long, device="meta")
        with torch.no_grad():
            return count(lambda: m.get_image_features(pixel_values=x)) + \
                count(lambda: m.get_text_features(input_ids=ids))
    return memo(("hf_clip", str(path)), f)


def image_reward_flops() -> float:
    """ImageReward on one (image, prompt): BLIP's ViT-L/16 + the cross-attending BERT-base."""
    def f():
        import torch
        import transformers as tf

        p = published("THUDM/ImageReward").kwargs
        with quiet(), torch.device("meta"):
            vis = tf.BlipVisionModel(tf.BlipVisionConfig(**p["vision"]))
            txt = tf.BlipTextModel(tf.BlipTextConfig(**p["text"]), add_pooling_layer=False)
        n = (p["vision"]["image_size"] // p["vision"]["patch_size"]) ** 2 + 1
        x = torch.zeros(1, 3, p["vision"]["image_size"], p["vision"]["image_size"], device="meta")
        ids = torch.zeros(1, p["text_len"], dtype=torch.long, device="meta")
        enc = torch.zeros(1, n, p["vision"]["hidden_size"], device="meta")
        with torch.no_grad():
            return count(lambda: vis(pixel_values=x)) + \
                count(lambda: txt(input_ids=ids, encoder_hidden_states=enc))
    return memo(("image_reward",), f)


def linear_stack_flops(widths, batch: int = 1, train: bool = False) -> float:
    """A stack of nn.Linear layers (widths[0] → … → widths[-1]) on the meta device: the
    closed-form check of the counter (2·B·Σ in·out forward; backward twice that, the first
    layer's input gradient excepted)."""
    import torch

    with torch.device("meta"):
        net = torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:])])
    x = torch.zeros(batch, widths[0], device="meta")
    if not train:
        with torch.no_grad():
            return count(lambda: net(x))
    return count(lambda: net(x).sum().backward())


if os.environ.get("MMABLATE_COST_NO_MEMO"):  # pragma: no cover - debugging aid
    memo = lambda key, fn: fn()  # noqa: E731
