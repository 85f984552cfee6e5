"""THUDM's ImageReward (Xu et al., 2023) in transformers' BLIP classes.

ImageReward is BLIP's ViT image encoder (ViT-L/16 at 224 px, THUDM/ImageReward
``ImageReward/models/BLIP``) and its BERT-base text encoder with cross-attention to the image
tokens (``med.py``, "multimodal" mode), then an MLP head (768→1024→128→64→16→1, no activations,
as the authors' ``MLP``) on the text encoder's first token; the reward is standardised with the
published constants, ``(r − 0.16717362) / 1.0333394``. The published ``ImageReward.pt`` is a
state dict of that module (``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``).
The ``image-reward`` package does not import under transformers 5, so the weights are mapped
here into `transformers.BlipVisionModel` and `transformers.BlipTextModel` (`map_keys`; the
inverse is `unmap_keys`):

* vision: ``cls_token`` → ``embeddings.class_embedding``, ``pos_embed`` →
  ``embeddings.position_embedding``, ``patch_embed.proj`` → ``embeddings.patch_embedding``,
  ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` →
  ``encoder.layers.i.{layer_norm1, self_attn.qkv, self_attn.projection, layer_norm2, mlp.fc1,
  mlp.fc2}``, ``norm`` → ``post_layernorm`` (BLIP's ViT has the same qkv layout, LayerNorm eps
  1e-6 and exact GELU);
* text: the same names (BLIP's med.py is transformers' BERT layout), less the
  ``embeddings.position_ids`` buffer;
* unused by the reward and dropped: ``blip.vision_proj``, ``blip.text_proj`` (ITC projections).

The architecture is read from the checkpoint's shapes (widths, depths, patch and image size,
vocabulary); the head counts are width / 64 (BLIP's ViT-B 768/12 and ViT-L 1024/16, BERT-base
768/12), or the text encoder's from ``med_config`` (THUDM's ``med_config.json``) when given.
Tokenizer: ``bert-base-uncased`` with BLIP's added ``[DEC]`` (bos) and ``[ENC]`` tokens
(30,524 ids), prompts padded to 35 tokens as ImageReward's ``score``.

Departure: images are resized with torch's bicubic interpolation on tensors (`rewards.clip_pixels`)
where the authors use PIL's; streamed images arrive at 224 px from PIL already (the DataLoader
workers' bicubic shortest-side resize and centre crop), so only generated samples of another size
take the torch path.
"""
from __future__ import annotations

import json
import re

from ...errors import CheckpointError

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py's published normalisation
VIS, TXT, HEAD = "blip.visual_encoder.", "blip.text_encoder.", "mlp.layers."
DROPPED = ("blip.vision_proj.", "blip.text_proj.", TXT + "embeddings.position_ids")
_VIS_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
              "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_VIS_TOP = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}


def _vision_key(k: str) -> str | None:
    if k in _VIS_TOP:
        return _VIS_TOP[k]
    m = re.fullmatch(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)", k)
    if m:
        return f"encoder.layers.{m[1]}.{_VIS_BLOCK[m[2]]}.{m[3]}"
    return None


def map_keys(state: dict, where: str = "ImageReward.pt") -> tuple[dict, dict, dict]:
    """(vision, text, head) state dicts for BlipVisionModel, BlipTextModel and the MLP head
    (an ``nn.Sequential``) from ImageReward's original keys; a key it does not know is a
    CheckpointError naming it."""
    vis, txt, head, unknown = {}, {}, {}, []
    for k, v in state.items():
        if any(k.startswith(d) for d in DROPPED):
            continue
        if k.startswith(VIS) and _vision_key(k[len(VIS):]):
            vis[_vision_key(k[len(VIS):])] = v
        elif k.startswith(TXT):
            txt[k[len(TXT):]] = v
        elif k.startswith(HEAD):
            head[k[len(HEAD):]] = v
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"{where}: keys outside ImageReward's layout: {unknown[:5]}")
    for name, part in (("blip.visual_encoder", vis), ("blip.text_encoder", txt), ("mlp", head)):
        if not part:
            raise CheckpointError(f"{where}: no {name}.* weights; not an ImageReward checkpoint")
    return vis, txt, head


def unmap_keys(vis: dict, txt: dict, head: dict) -> dict:
    """The inverse of `map_keys` (without the dropped keys)."""
    inv_top = {v: k for k, v in _VIS_TOP.items()}
    inv_block = {v: k for k, v in _VIS_BLOCK.items()}
    out = {}
    for k, v in vis.items():
        if k in inv_top:
            out[VIS + inv_top[k]] = v
        else:
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k)
            out[VIS + f"blocks.{m[1]}.{inv_block[m[2]]}.{m[3]}"] = v
    out.update({TXT + k: v for k, v in txt.items()})
    out.update({HEAD + k: v for k, v in head.items()})
    return out


def _count(keys, pattern) -> int:
    return len({int(m[1]) for k in keys if (m := re.match(pattern, k))})


def configs(vis: dict, txt: dict, med_config: dict | None = None):
    """(BlipVisionConfig, BlipTextConfig) of the mapped weights (see the module docstring)."""
    from transformers import BlipTextConfig, BlipVisionConfig

    width = vis["embeddings.class_embedding"].shape[-1]
    patch = vis["embeddings.patch_embedding.weight"].shape[-1]
    n_pos = vis["embeddings.position_embedding"].shape[1]
    side = int(round((n_pos - 1) ** 0.5))
    vcfg = BlipVisionConfig(hidden_size=width, intermediate_size=vis["encoder.layers.0.mlp.fc1.weight"].shape[0],
                            num_hidden_layers=_count(vis, r"encoder\.layers\.(\d+)\."),
                            num_attention_heads=max(1, width // 64), image_size=side * patch,
                            patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu",
                            attention_dropout=0.0)
    vocab, hidden = txt["embeddings.word_embeddings.weight"].shape
    med = dict(med_config or {})
    tcfg = BlipTextConfig(
        vocab_size=vocab, hidden_size=hidden,
        encoder_hidden_size=txt["encoder.layer.0.crossattention.self.key.weight"].shape[1],
        intermediate_size=txt["encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_count(txt, r"encoder\.layer\.(\d+)\."),
        num_attention_heads=med.get("num_attention_heads", max(1, hidden // 64)),
        max_position_embeddings=txt["embeddings.position_embeddings.weight"].shape[0],
        layer_norm_eps=med.get("layer_norm_eps", 1e-12), hidden_act=med.get("hidden_act", "gelu"),
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=med.get("pad_token_id", 0),
        is_decoder=True)  # builds the cross-attention layers; the forward runs bidirectionally
    return vcfg, tcfg


def _mlp(width: int):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                         nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                         nn.Linear(16, 1))


def build(state: dict, med_config: dict | None = None, where: str = "ImageReward.pt"):
    """The ImageReward module with `state` (original layout) loaded strictly."""
    import torch
    from transformers import BlipTextModel, BlipVisionModel

    vis, txt, head = map_keys(state, where)
    vcfg, tcfg = configs(vis, txt, med_config)

    class ImageReward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision = BlipVisionModel(vcfg)
            self.text = BlipTextModel(tcfg, add_pooling_layer=False)
            self.mlp = _mlp(tcfg.hidden_size)
            self.image_size = vcfg.image_size

        def forward(self, pixel_values, input_ids, attention_mask):
            img = self.vision(pixel_values=pixel_values).last_hidden_state
            att = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
            out = self.text(input_ids=input_ids, attention_mask=attention_mask,
                            encoder_hidden_states=img, encoder_attention_mask=att,
                            is_decoder=False)
            r = self.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(1)
            return (r - MEAN) / STD

    m = ImageReward()
    for name, mod, sd in (("blip.visual_encoder", m.vision, vis), ("blip.text_encoder", m.text, txt),
                          ("mlp", m.mlp, head)):
        try:
            res = mod.load_state_dict(sd, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{where}: {name} weights do not fit ({str(e)[:300]})") from None
        missing = [k for k in res.missing_keys if not k.endswith("position_ids")]
        if missing or res.unexpected_keys:
            raise CheckpointError(f"{where}: {name}: missing {missing[:3]}, unexpected "
                                  f"{res.unexpected_keys[:3]}")
    return m.eval()


def tokenizer(src: str = "bert-base-uncased"):
    """BLIP's tokenizer: BERT's with ``[DEC]`` as bos and ``[ENC]`` added (blip.init_tokenizer)."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(src)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_image_reward(checkpoint, tokenizer_src: str = "bert-base-uncased", med_config=None):
    """(model, tokenizer) from THUDM's ``ImageReward.pt`` (see the module docstring)."""
    from ...util import load_torch_file

    state = load_torch_file(checkpoint, "ImageReward checkpoint")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    med = None
    if med_config:
        try:
            med = json.loads(open(med_config).read())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{med_config}: cannot read the BLIP med_config ({e})") from None
    model = build(state, med, str(checkpoint))
    tok = tokenizer(tokenizer_src)
    n_vocab = model.text.config.vocab_size
    if len(tok) != n_vocab:
        raise CheckpointError(f"{checkpoint}: the text encoder has {n_vocab} token ids, the "
                              f"tokenizer {tokenizer_src!r} {len(tok)} (BLIP's adds [DEC] and [ENC])")
    return model, tok
