"""Rehearsal assets of the pair-ranking study (plan 000): every file paper.yaml's ``pairrank``
block reads, small, in its publisher's layout; every model a random miniature of its class.

Written under ``<out>`` (paper.yaml's ``/datasets/...`` and ``/models/...`` mirrored):

* ``pickapic_v2/data/train-0000k-of-0000N.parquet`` — Pick-a-Pic v2 shards with the hub's
  columns and Arrow types (`PICKAPIC_SCHEMA`: caption, JPEG bytes jpg_0/jpg_1, label_0/label_1
  with ties 0.5/0.5, best_image_uid, image_*_uid/url, model_*, ranking_id, user_id, …), images
  of varied sizes (the loaders resize them in their DataLoader workers), several row groups per
  shard (the streaming units); ``pickapic_v2/prompts.json`` — ``{"val": [...], "eval": [...]}``;
* ``models/runwayml/stable-diffusion-v1-5`` — a `StableDiffusionPipeline` saved with
  ``save_pretrained``: UNet2DConditionModel (cross-attention only at the lower resolution,
  group norms dividing every width), AutoencoderKL (SD's scaling factor), CLIPTextModel +
  CLIPTokenizer, SD-1.5's PNDM scheduler config;
* ``models/yuvalkirstain/PickScore_v1`` — a transformers CLIPModel + CLIPProcessor;
  ``models/laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` — the processor paper.yaml loads apart;
* ``models/open_clip/ViT-H-14.json`` + ``ViT-H-14-laion2b_s32b_b79k.bin`` and
  ``models/hpsv2/HPS_v2.1_compressed.pt`` (``{"state_dict": ...}``, as xswu/HPSv2 saves it);
* ``models/open_clip/ViT-L-14.json`` + ``ViT-L-14-openai.bin`` and
  ``models/laion-aesthetic/sac+logos+ava1-l14-linearMSE.pth`` (the improved aesthetic
  predictor's ``layers.{0,2,4,6,7}`` state dict on 768-d embeddings);
* ``models/ImageReward/ImageReward.pt`` (THUDM's key layout: ``blip.visual_encoder.*``,
  ``blip.text_encoder.*``, ``mlp.layers.*``), ``med_config.json``, and
  ``models/bert-base-uncased`` (a BertTokenizer folder).

Tokenizers are built offline: the CLIP tokenizers from the BPE file open_clip ships (the real
CLIP vocabulary, 49,408 ids), BERT's from a word list. The builders here are also the tests'
stand-ins (tests/test_pairrank_paper_path.py, test_pairrank_stages.py,
test_rehearsal_assets_pairrank.py).
"""
from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path

import numpy as np

from ..util import write_atomic

SEED = 20261202
N_SHARDS, ROWS_PER_SHARD, ROW_GROUP = 3, 40, 16
IMAGE_SIZES = [(48, 48), (64, 48), (40, 56)]  # (w, h): Pick-a-Pic mixes sizes and aspect ratios
WORDS = ["a", "photo", "of", "the", "red", "green", "blue", "yellow", "cat", "dog", "house",
         "tree", "car", "boat", "on", "left", "right", "big", "small", "painting", "circle",
         "square", "in", "sky", "at", "night"]

# yuvalkirstain/pickapic_v2's parquet schema (the hub's data/train-*.parquet), column for column
PICKAPIC_COLUMNS = [
    ("are_different", "bool"), ("best_image_uid", "string"), ("caption", "string"),
    ("created_at", "timestamp[ns]"), ("has_label", "bool"), ("image_0_uid", "string"),
    ("image_0_url", "string"), ("image_1_uid", "string"), ("image_1_url", "string"),
    ("jpg_0", "binary"), ("jpg_1", "binary"), ("label_0", "double"), ("label_1", "double"),
    ("model_0", "string"), ("model_1", "string"), ("ranking_id", "int64"), ("user_id", "int64"),
    ("num_example_per_prompt", "int64"), ("__index_level_0__", "int64")]


def pickapic_schema():
    import pyarrow as pa

    types = {"bool": pa.bool_(), "string": pa.string(), "timestamp[ns]": pa.timestamp("ns"),
             "binary": pa.binary(), "double": pa.float64(), "int64": pa.int64()}
    return pa.schema([(n, types[t]) for n, t in PICKAPIC_COLUMNS])


# ---- data ------------------------------------------------------------------------------------
def _jpeg(rng, w: int, h: int) -> bytes:
    """A small picture (a coloured background with a disc), JPEG-encoded."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    r = int(rng.integers(min(w, h) // 6, min(w, h) // 3))
    cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    a = np.clip(np.asarray(im, np.float32) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=90)
    return b.getvalue()


def _caption(rng) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(3, 7))))


def write_pickapic(out_dir, n_shards: int = N_SHARDS, rows: int = ROWS_PER_SHARD,
                   row_group_size: int = ROW_GROUP, seed: int = SEED, tie_prob: float = 0.1,
                   sizes=IMAGE_SIZES) -> list[Path]:
    """Pick-a-Pic v2 shards ``train-<k>-of-<n>.parquet`` in the hub's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    models = ["SD 1.5", "SD 2.1", "SDXL beta", "Dreamlike Photoreal 2.0"]
    t0 = np.datetime64("2023-03-01T00:00:00", "ns")
    for k in range(n_shards):
        cols = {n: [] for n, _ in PICKAPIC_COLUMNS}
        for r in range(rows):
            g = k * rows + r
            w, h = sizes[int(rng.integers(len(sizes)))]
            tie = rng.random() < tie_prob
            l0 = 0.5 if tie else float(rng.random() < 0.5)
            u0, u1 = (f"{int(x):032x}" for x in rng.integers(0, 2**62, 2))
            cols["are_different"].append(True)
            cols["best_image_uid"].append("" if tie else (u0 if l0 > 0.5 else u1))
            cols["caption"].append(_caption(rng))
            cols["created_at"].append(t0 + np.timedelta64(g * 37, "s"))
            cols["has_label"].append(True)
            cols["image_0_uid"].append(u0)
            cols["image_0_url"].append(f"https://images.pickapic.io/{u0}.png")
            cols["image_1_uid"].append(u1)
            cols["image_1_url"].append(f"https://images.pickapic.io/{u1}.png")
            cols["jpg_0"].append(_jpeg(rng, w, h))
            cols["jpg_1"].append(_jpeg(rng, w, h))
            cols["label_0"].append(l0)
            cols["label_1"].append(1.0 - l0)
            m0, m1 = rng.choice(models, 2)
            cols["model_0"].append(str(m0))
            cols["model_1"].append(str(m1))
            cols["ranking_id"].append(100_000 + g)
            cols["user_id"].append(int(rng.integers(1, 500)))
            cols["num_example_per_prompt"].append(1)
            cols["__index_level_0__"].append(g)
        table = pa.Table.from_pydict(cols, schema=pickapic_schema())
        f = out_dir / f"train-{k:05d}-of-{n_shards:05d}.parquet"
        with write_atomic(f) as tmp:
            pq.write_table(table, tmp, row_group_size=row_group_size)
        files.append(f)
    return files


def write_prompts(path, n_val: int = 3, n_eval: int = 4, seed: int = SEED + 1) -> Path:
    """``{"val": [...], "eval": [...]}`` (Pick-a-Pic's validation_unique / test_unique captions)."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"val": [_caption(rng) for _ in range(n_val)],
                                "eval": [_caption(rng) for _ in range(n_eval)]}, indent=1))
    return path


# ---- tokenizers (offline) --------------------------------------------------------------------
def clip_bpe_files(out_dir) -> tuple[Path, Path]:
    """CLIP's ``vocab.json`` and ``merges.txt`` (as transformers' CLIPTokenizer reads them) built
    from the BPE merges open_clip ships: the real CLIP vocabulary (49,408 ids), no download."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out_dir / "vocab.json", out_dir / "merges.txt"


def clip_tokenizer(max_length: int = 77):
    """transformers' CLIPTokenizer over CLIP's vocabulary (`clip_bpe_files`)."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as d:
        v, m = clip_bpe_files(d)
        return CLIPTokenizer(str(v), str(m), model_max_length=max_length)


BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def bert_tokenizer(out_dir, words=BERT_WORDS) -> tuple[Path, int]:
    """A BertTokenizer folder (``save_pretrained``) over `words`; returns (folder, the vocabulary
    size BLIP's text encoder needs: the words + BLIP's [DEC] and [ENC])."""
    from transformers import BertTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vf = out_dir / "vocab.txt"
    vf.write_text("\n".join(words) + "\n")
    BertTokenizer(str(vf), do_lower_case=True).save_pretrained(out_dir)
    return out_dir, len(words) + 2


# ---- models ----------------------------------------------------------------------------------
def sd_pipeline(out_dir, text_width: int = 32, max_length: int = 77, seed: int = SEED,
                latent_size: int = 16, unet_widths=(16, 32), vae_widths=(8, 16),
                attention_head_dim: int = 8):
    """A random miniature StableDiffusionPipeline saved with ``save_pretrained``: SD-1.5's
    component classes and scheduler config; images of ``latent_size · 2^(len(vae_widths) − 1)``
    px (32 by default: 16 px latents, 4 channels)."""
    import torch
    from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tok = clip_tokenizer(max_length)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=text_width,
                                      intermediate_size=2 * text_width, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=max_length,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id, projection_dim=text_width))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                        block_out_channels=tuple(vae_widths), layers_per_block=1,
                        sample_size=latent_size * 2 ** (len(vae_widths) - 1),
                        scaling_factor=0.18215)
    # cross-attention only at the lower resolution (attention at full resolution makes a tiny
    # UNet ~6× slower); 8 groups divide every width (norm_num_groups must divide each)
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4,
                                layers_per_block=1, block_out_channels=tuple(unet_widths),
                                cross_attention_dim=text_width,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                norm_num_groups=8, attention_head_dim=attention_head_dim)
    # runwayml/stable-diffusion-v1-5's scheduler/scheduler_config.json
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                          steps_offset=1, trained_betas=None)
    StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(out_dir)
    return out_dir


def clip_processor(out_dir, image_size: int):
    """A CLIPProcessor (CLIPImageProcessor at `image_size` + the CLIP tokenizer) saved."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    out_dir = Path(out_dir)
    tok = clip_tokenizer()
    ip = CLIPImageProcessor(size={"shortest_edge": image_size},
                            crop_size={"height": image_size, "width": image_size})
    proc = CLIPProcessor(image_processor=ip, tokenizer=tok)
    proc.save_pretrained(out_dir)
    return proc


def pickscore_model(out_dir, processor_dir, image_size: int = 28, width: int = 32,
                    seed: int = SEED):
    """PickScore_v1's class (transformers CLIPModel) as a miniature, with its processor; the
    processor is also saved apart (paper.yaml loads it from its own id)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    proc = clip_processor(processor_dir, image_size)
    tok = proc.tokenizer
    cfg = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": width, "intermediate_size": 2 * width,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": width, "intermediate_size": 2 * width,
                       "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": image_size, "patch_size": 14},
        projection_dim=width)
    CLIPModel(cfg).save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return Path(out_dir)


def open_clip_config(embed_dim: int, image_size: int = 28, patch: int = 14, width: int = 32) -> dict:
    """A miniature open_clip model config (ViT vision tower, CLIP text tower with CLIP's BPE)."""
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "layers": 1, "width": width,
                           "head_width": 16, "patch_size": patch},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width,
                         "heads": 2, "layers": 1}}


def write_open_clip(cfg_path, ckpt_path, cfg: dict, seed: int = SEED):
    """The config JSON (its stem the architecture name) and a random checkpoint of it."""
    import open_clip
    import torch

    cfg_path, ckpt_path = Path(cfg_path), Path(ckpt_path)
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(cfg, indent=1))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(cfg_path.stem, pretrained=None)
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt_path)
    return model


def aesthetic_head_state(in_dim: int = 768, seed: int = SEED) -> dict:
    """The LAION improved aesthetic predictor's state dict layout (``layers.0/2/4/6/7``)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, (a, b) in zip((0, 2, 4, 6, 7), ((in_dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        sd[f"layers.{k}.weight"] = torch.randn(b, a, generator=g) / math.sqrt(a)
        sd[f"layers.{k}.bias"] = torch.randn(b, generator=g) * 0.01
    return sd


# ImageReward miniature: ViT width, depth, patch, image (2×2 patches); BERT width, depth
# (heads: width / 64 = 2, as BLIP's ViT-L 1024/16 and BERT-base 768/12)
IR_VW, IR_VDEPTH, IR_PATCH, IR_IMG = 128, 2, 16, 32
IR_TW, IR_TDEPTH = 128, 2


def image_reward_state(vocab: int, seed: int = 0, vw: int = IR_VW, vdepth: int = IR_VDEPTH,
                       patch: int = IR_PATCH, img: int = IR_IMG, tw: int = IR_TW,
                       tdepth: int = IR_TDEPTH) -> dict:
    """ImageReward.pt's keys (blip.visual_encoder / blip.text_encoder / mlp.layers, plus the ITC
    projections it carries) with random values — LayerNorms too, so a swapped norm shows."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.05):
        return torch.randn(*shape, generator=g) * s

    sd = {}
    v = "blip.visual_encoder."
    sd[v + "cls_token"] = r(1, 1, vw, s=0.5)
    sd[v + "pos_embed"] = r(1, (img // patch) ** 2 + 1, vw, s=0.5)
    sd[v + "patch_embed.proj.weight"] = r(vw, 3, patch, patch)
    sd[v + "patch_embed.proj.bias"] = r(vw)
    for i in range(vdepth):
        b = f"{v}blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[b + n + ".weight"] = 1 + r(vw, s=0.2)
            sd[b + n + ".bias"] = r(vw, s=0.2)
        sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = r(3 * vw, vw, s=0.2), r(3 * vw)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(vw, vw, s=0.1), r(vw)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(4 * vw, vw, s=0.1), r(4 * vw)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(vw, 4 * vw, s=0.1), r(vw)
    sd[v + "norm.weight"], sd[v + "norm.bias"] = 1 + r(vw, s=0.2), r(vw, s=0.2)
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = r(vocab, tw, s=0.5)
    sd[t + "embeddings.position_embeddings.weight"] = r(64, tw, s=0.5)
    sd[t + "embeddings.position_ids"] = torch.arange(64).expand(1, -1)
    sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"] = 1 + r(tw, s=0.2), r(tw)
    for i in range(tdepth):
        b = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", tw), ("crossattention", vw)):
            sd[b + f"{att}.self.query.weight"], sd[b + f"{att}.self.query.bias"] = r(tw, tw, s=0.2), r(tw)
            sd[b + f"{att}.self.key.weight"], sd[b + f"{att}.self.key.bias"] = r(tw, kv, s=0.2), r(tw)
            sd[b + f"{att}.self.value.weight"], sd[b + f"{att}.self.value.bias"] = r(tw, kv, s=0.2), r(tw)
            sd[b + f"{att}.output.dense.weight"], sd[b + f"{att}.output.dense.bias"] = r(tw, tw, s=0.1), r(tw)
            sd[b + f"{att}.output.LayerNorm.weight"] = 1 + r(tw, s=0.2)
            sd[b + f"{att}.output.LayerNorm.bias"] = r(tw, s=0.2)
        sd[b + "intermediate.dense.weight"], sd[b + "intermediate.dense.bias"] = r(4 * tw, tw, s=0.1), r(4 * tw)
        sd[b + "output.dense.weight"], sd[b + "output.dense.bias"] = r(tw, 4 * tw, s=0.1), r(tw)
        sd[b + "output.LayerNorm.weight"], sd[b + "output.LayerNorm.bias"] = 1 + r(tw, s=0.2), r(tw)
    sd["blip.vision_proj.weight"], sd["blip.vision_proj.bias"] = r(256, vw), r(256)
    sd["blip.text_proj.weight"], sd["blip.text_proj.bias"] = r(256, tw), r(256)
    for k, (a, b_) in zip((0, 2, 4, 6, 7), ((tw, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        sd[f"mlp.layers.{k}.weight"], sd[f"mlp.layers.{k}.bias"] = r(b_, a, s=1 / math.sqrt(a)), r(b_)
    return sd


def med_config(vocab: int, tw: int = IR_TW, tdepth: int = IR_TDEPTH, vw: int = IR_VW) -> dict:
    """BLIP's ``med_config.json`` (the BERT config of ImageReward's text encoder), miniature."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": tw,
            "initializer_range": 0.02, "intermediate_size": 4 * tw, "layer_norm_eps": 1e-12,
            "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": tw // 64,
            "num_hidden_layers": tdepth, "pad_token_id": 0, "type_vocab_size": 2,
            "vocab_size": vocab, "encoder_width": vw, "add_cross_attention": True}


# ---- all of it -------------------------------------------------------------------------------
def _done(marker: Path) -> bool:
    return marker.is_file()


def write_assets(out) -> dict:
    """Writes every pairrank asset under `out` (skipping the parts already written: each part
    ends with a marker file written last). Returns {part: path}."""
    import torch

    out = Path(out)
    m = out / "models"
    parts = {}

    def part(name, marker, fn, path=None):
        """Runs `fn` unless `marker` (the part's last file written) exists; a folder's marker
        is ``<folder>/.rehearsal_complete``, written after the folder is complete."""
        marker = Path(marker)
        if marker.is_dir() or marker.suffix == "":
            marker = marker / ".rehearsal_complete"
        if not _done(marker):
            fn()
            if marker.name == ".rehearsal_complete":
                marker.write_text("")
        parts[name] = str(path or marker)

    data = out / "pickapic_v2" / "data"

    part("pickapic_v2", data, lambda: write_pickapic(data), data)
    part("prompts", out / "pickapic_v2" / "prompts.json",
         lambda: write_prompts(out / "pickapic_v2" / "prompts.json"))
    sd = m / "runwayml" / "stable-diffusion-v1-5"
    part("sd15", sd, lambda: sd_pipeline(sd), sd)
    ps = m / "yuvalkirstain" / "PickScore_v1"
    part("pickscore", ps,
         lambda: pickscore_model(ps, m / "laion" / "CLIP-ViT-H-14-laion2B-s32B-b79K"), ps)
    parts["pickscore_processor"] = str(m / "laion" / "CLIP-ViT-H-14-laion2B-s32B-b79K")
    oc = m / "open_clip"

    def hps():
        model = write_open_clip(oc / "ViT-H-14.json", oc / "ViT-H-14-laion2b_s32b_b79k.bin",
                                open_clip_config(embed_dim=32), seed=SEED + 2)
        # HPSv2.1: the whole open_clip model finetuned, saved as {"state_dict": ...}
        torch.manual_seed(SEED + 3)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        (m / "hpsv2").mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict()}, m / "hpsv2" / "HPS_v2.1_compressed.pt")

    part("hpsv2", m / "hpsv2" / "HPS_v2.1_compressed.pt", hps)
    parts["open_clip_vit_h_14"] = str(oc / "ViT-H-14.json")

    def aesthetic():
        write_open_clip(oc / "ViT-L-14.json", oc / "ViT-L-14-openai.bin",
                        open_clip_config(embed_dim=768), seed=SEED + 4)
        (m / "laion-aesthetic").mkdir(parents=True, exist_ok=True)
        torch.save(aesthetic_head_state(768, SEED + 5),
                   m / "laion-aesthetic" / "sac+logos+ava1-l14-linearMSE.pth")

    part("aesthetic", m / "laion-aesthetic" / "sac+logos+ava1-l14-linearMSE.pth", aesthetic)
    parts["open_clip_vit_l_14"] = str(oc / "ViT-L-14.json")
    ir = m / "ImageReward"

    def image_reward():
        tok_dir, vocab = bert_tokenizer(m / "bert-base-uncased")
        ir.mkdir(parents=True, exist_ok=True)
        (ir / "med_config.json").write_text(json.dumps(med_config(vocab), indent=1))
        torch.save(image_reward_state(vocab, seed=SEED + 6), ir / "ImageReward.pt")

    part("image_reward", ir / "ImageReward.pt", image_reward)
    parts["bert_tokenizer"] = str(m / "bert-base-uncased")
    return parts


if __name__ == "__main__":  # python -m mmablate.rehearsal.pairrank OUT
    import sys

    print(json.dumps(write_assets(sys.argv[1] if len(sys.argv) > 1 else "rehearsal/assets"),
                     indent=1))
