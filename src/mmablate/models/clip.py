"""open_clip models: the tiny world model registered from a JSON config, or a named architecture.

Stage configs carry a ``model`` block:

* ``{"arch": "<name>", "cfg": {embed_dim, vision_cfg, text_cfg}, "tokenizer": "world"}`` — a
  model registered with ``open_clip.add_model_config`` from that config (tiny scale);
* ``{"arch": "ViT-B-32", "tokenizer": "open_clip"}`` — a built-in open_clip architecture with
  its own tokenizer (paper scale), optionally ``"pretrained": "<tag or path>"``.

Models are always created with ``output_dict=True``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .tokenizer import WordTokenizer


def world_tokenizer(context_length: int = 24) -> WordTokenizer:
    from ..world.scenes import vocabulary

    return WordTokenizer(vocabulary(), context_length)


def import_open_clip(model_cfg: dict | None = None):
    """open_clip; for a model built from a config without a Hugging Face text tower (the world's
    tiny CLIPs) imported without `transformers`, which open_clip.hf_model would otherwise load
    (≈ 1.2 s of CPU in each of the tiny scale's ~115 CLIP jobs; `import transformers` works as
    usual afterwards, e.g. for peft or diffusers). Only open_clip's HF text towers need it."""
    import sys

    cfg = (model_cfg or {}).get("cfg")
    if "open_clip" in sys.modules or "transformers" in sys.modules or cfg is None \
            or "hf_model_name" in (cfg.get("text_cfg") or {}):
        import open_clip

        return open_clip
    sys.modules["transformers"] = None  # `import transformers` raises ImportError meanwhile
    try:
        import open_clip
    finally:
        if "transformers" in sys.modules and sys.modules["transformers"] is None:
            del sys.modules["transformers"]
    return open_clip


def build(model_cfg: dict):
    """Returns (model, preprocess, tokenizer) for a stage's model block; ``preprocess`` is
    open_clip's evaluation transform (resize, centre crop, normalise)."""
    model, _, preprocess, tok = build_for_training(model_cfg)
    return model, preprocess, tok


def build_for_training(model_cfg: dict):
    """Returns (model, train_transform, eval_transform, tokenizer): both transforms as
    ``open_clip.create_model_and_transforms`` returns them (training: ``RandomResizedCrop`` at
    scale 0.9–1, open_clip's default augmentation; evaluation: resize + centre crop)."""
    open_clip = import_open_clip(model_cfg)

    arch = model_cfg["arch"]
    if model_cfg.get("cfg") is not None:
        cfg = json.loads(json.dumps(model_cfg["cfg"]))
        if model_cfg.get("tokenizer", "world") == "world":
            tok = world_tokenizer(cfg["text_cfg"].get("context_length", 24))
            cfg["text_cfg"].update(vocab_size=tok.vocab_size, pool_type="eos", eos_id=tok.eot_id)
        else:
            tok = None
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(cfg)
        if missing:
            # open_clip skips such a file silently; say so instead.
            raise ConfigError(f"model.cfg for {arch!r} lacks {sorted(missing)}")
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / f"{arch}.json"
            p.write_text(json.dumps(cfg))
            open_clip.add_model_config(p)
    elif arch not in open_clip.list_models():
        raise ConfigError(f"model.arch {arch!r} is not an open_clip architecture and no "
                          f"model.cfg is given")
    else:
        tok = None
    model, train_pp, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=model_cfg.get("pretrained"), output_dict=True)
    if tok is None:
        tok = open_clip.get_tokenizer(arch)
    return model, train_pp, preprocess, tok


def load_weights(model, path):
    from ..util import load_torch_file

    path = Path(path)
    state = load_torch_file(path, "model weights")
    state = state.get("model", state)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the configured model: {e}") from None
    return model
