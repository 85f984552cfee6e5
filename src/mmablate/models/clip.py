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


def build(model_cfg: dict):
    """Returns (model, preprocess, tokenizer) for a stage's model block."""
    import open_clip

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
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch, pretrained=model_cfg.get("pretrained"), output_dict=True)
    if tok is None:
        tok = open_clip.get_tokenizer(arch)
    return model, preprocess, tok


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
