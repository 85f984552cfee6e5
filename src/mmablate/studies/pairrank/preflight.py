"""Cheap checks of the pair-ranking study's paper-scale inputs, before any job runs.

`check_inputs(block, where)` reads only what is cheap: each Pick-a-Pic shard's parquet footer
(its schema: the columns the loaders read and their Arrow types), the prompts file (a small
JSON: ``{"val": [...], "eval": [...]}`` of non-empty strings), and each model folder's config,
weight and tokenizer files (their presence; nothing is loaded). A hub id (``org/name``) that is
not a local folder is left to the job (it downloads). A problem is a `DataError` /
`CheckpointError` naming the file and the dotted config key, e.g.

  ``<where>: studies.pairrank.data.pairs: <shard>: missing column(s) ['jpg_1'] …``

What is not cheap fails at job time naming the file: a shard whose footer reads but whose data
pages are corrupt (`data.pickapic.PairUnits`), a checkpoint whose tensors do not fit.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import CheckpointError, ConfigError, DataError

# Arrow types the loaders need (pickapic.PairUnits: captions as text, JPEG bytes, float labels)
COLUMN_TYPES = {"caption": "string", "jpg_0": "binary", "jpg_1": "binary",
                "label_0": "number", "label_1": "number"}
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors",
           "diffusion_pytorch_model.bin", "model.safetensors.index.json",
           "pytorch_model.bin.index.json", "diffusion_pytorch_model.safetensors.index.json")
CLIP_TOKENIZER = (("vocab.json", "merges.txt"), ("tokenizer.json",))
BERT_TOKENIZER = (("vocab.txt",), ("tokenizer.json",))


def _is_local(ref: str) -> bool:
    """Whether `ref` names a local path rather than a hub id or tag (``name``, ``org/name``)."""
    s = str(ref)
    return (s.startswith(("/", "./", "../", "~")) or s.count("/") > 1 or Path(s).exists()
            or s.endswith((".pt", ".pth", ".bin", ".safetensors", ".json")))


def _type_ok(t, want: str) -> bool:
    import pyarrow as pa

    if want == "string":
        return pa.types.is_string(t) or pa.types.is_large_string(t)
    if want == "binary":
        return (pa.types.is_binary(t) or pa.types.is_large_binary(t)
                or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0))  # datasets' Image
    return pa.types.is_floating(t) or pa.types.is_integer(t)


def check_pairs(path, key: str) -> int:
    """The shards at `path`: present, each footer readable, the columns and types the loaders
    read. Returns the number of rows (from the footers)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise DataError(f"{key}: {p}: not found (a folder of Pick-a-Pic v2 parquet shards)")
    files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    if not files:
        raise DataError(f"{key}: {p}: no .parquet files in this folder")
    rows = 0
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:
            raise DataError(f"{key}: {f}: not a readable parquet file ({type(e).__name__}: "
                            f"{e})") from None
        schema = pf.schema_arrow
        missing = [c for c in COLUMN_TYPES if c not in schema.names]
        if missing:
            raise DataError(f"{key}: {f}: missing column(s) {missing} of the Pick-a-Pic v2 schema "
                            f"(found {schema.names})")
        for c, want in COLUMN_TYPES.items():
            t = schema.field(c).type
            if not _type_ok(t, want):
                raise DataError(f"{key}: {f}: column {c!r} is {t}; Pick-a-Pic v2 has {want} there")
        rows += pf.metadata.num_rows
    if rows == 0:
        raise DataError(f"{key}: {p}: the shards hold no rows")
    return rows


def check_prompts(path, key: str, splits=("val", "eval")) -> None:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{key}: {p}: not found (the prompts file: {{\"val\": [...], "
                        f"\"eval\": [...]}})")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{key}: {p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{key}: {p}: a {type(d).__name__} at the top level; an object "
                        f"{{\"val\": [...], \"eval\": [...]}} of prompt lists expected")
    for s in splits:
        v = d.get(s)
        if not isinstance(v, list) or not v:
            got = "missing" if s not in d else f"{type(v).__name__} of length " \
                  f"{len(v)}" if isinstance(v, (list, str)) else type(v).__name__
            raise DataError(f"{key}: {p}: split {s!r} is {got}; a non-empty list of prompts "
                            f"expected")
        bad = [i for i, x in enumerate(v) if not isinstance(x, str) or not x.strip()]
        if bad:
            raise DataError(f"{key}: {p}: {s}[{bad[0]}] is {v[bad[0]]!r}; prompts are non-empty "
                            f"strings")


def _file(path, key: str, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{key}: {p}: {what} not found")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{key}: {p}: an empty file ({what} expected)")
    return p


def _config_json(d: Path, name: str, key: str, what: str) -> dict:
    p = d / name
    if not p.is_file():
        raise CheckpointError(f"{key}: {d}: no {name} ({what})")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{key}: {p}: not valid JSON ({e})") from None


def _weights(d: Path, key: str, what: str) -> None:
    if not any((d / w).is_file() for w in WEIGHTS):
        raise CheckpointError(f"{key}: {d}: no weight file ({what}; one of {list(WEIGHTS[:4])})")


def _tokenizer(d: Path, key: str, sets, what: str) -> None:
    if not any(all((d / f).is_file() for f in fs) for fs in sets):
        want = " or ".join("+".join(fs) for fs in sets)
        raise CheckpointError(f"{key}: {d}: no tokenizer files ({want}) — {what} needs its "
                              f"tokenizer saved with it")


def check_sd(ref, key: str) -> None:
    """A diffusers Stable Diffusion pipeline folder (``save_pretrained``): model_index.json, the
    unet/vae/text_encoder configs and weights, the tokenizer, the scheduler config."""
    if not _is_local(ref):
        return
    d = Path(ref)
    if not d.is_dir():
        raise CheckpointError(f"{key}: {d}: not found (a Stable Diffusion pipeline folder)")
    idx = _config_json(d, "model_index.json", key, "not a diffusers pipeline folder")
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if part not in idx or not (d / part).is_dir():
            raise CheckpointError(f"{key}: {d}: no {part}/ (model_index.json lists "
                                  f"{sorted(k for k in idx if not k.startswith('_'))})")
    for part in ("unet", "vae", "text_encoder"):
        _config_json(d / part, "config.json", key, f"the {part} config")
        _weights(d / part, key, f"the {part} weights")
    _tokenizer(d / "tokenizer", key, CLIP_TOKENIZER, "the pipeline's CLIPTokenizer")
    _config_json(d / "scheduler", "scheduler_config.json", key, "the noise scheduler")


def _open_clip_parts(block: dict, key: str) -> None:
    cfg = block.get("clip_config")
    if cfg:
        c = _config_json(Path(cfg).parent, Path(cfg).name, f"{key}.clip_config",
                         "an open_clip model config")
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(c)
        if missing:
            raise ConfigError(f"{key}.clip_config: {cfg}: lacks {sorted(missing)} (open_clip "
                              f"would skip this model config)")
    pre = block.get("clip_pretrained")
    if pre and _is_local(pre):
        _file(pre, f"{key}.clip_pretrained", "open_clip checkpoint")


def check_rewards(rewards: dict, key: str) -> None:
    if rewards.get("source") != "paper":
        return
    paper = rewards.get("paper") or {}
    k = f"{key}.paper"
    if "aesthetic" in paper:
        b = paper["aesthetic"]
        _open_clip_parts(b, f"{k}.aesthetic")
        _file(b["head_weights"], f"{k}.aesthetic.head_weights", "aesthetic predictor weights")
    if "hpsv2" in paper:
        b = paper["hpsv2"]
        _open_clip_parts(b, f"{k}.hpsv2")
        _file(b["checkpoint"], f"{k}.hpsv2.checkpoint", "HPSv2 checkpoint")
    if "pickscore" in paper:
        b = paper["pickscore"]
        if _is_local(b["model"]):
            d = Path(b["model"])
            if not d.is_dir():
                raise CheckpointError(f"{k}.pickscore.model: {d}: not found (a CLIPModel folder)")
            _config_json(d, "config.json", f"{k}.pickscore.model", "the CLIPModel config")
            _weights(d, f"{k}.pickscore.model", "the PickScore weights")
        if _is_local(b["processor"]):
            d = Path(b["processor"])
            if not d.is_dir():
                raise CheckpointError(f"{k}.pickscore.processor: {d}: not found (a CLIPProcessor "
                                      f"folder)")
            names = ("preprocessor_config.json", "processor_config.json")  # transformers 4 / 5
            if not any((d / n).is_file() for n in names):
                raise CheckpointError(f"{k}.pickscore.processor: {d}: no {' or '.join(names)} "
                                      f"(the CLIP image processor)")
            _tokenizer(d, f"{k}.pickscore.processor", CLIP_TOKENIZER, "the CLIPProcessor")
    if "image_reward" in paper:
        b = paper["image_reward"]
        _file(b["checkpoint"], f"{k}.image_reward.checkpoint", "ImageReward checkpoint")
        if b.get("med_config"):
            med = _config_json(Path(b["med_config"]).parent, Path(b["med_config"]).name,
                               f"{k}.image_reward.med_config", "BLIP's med_config.json")
            if not isinstance(med, dict) or "hidden_size" not in med:
                raise CheckpointError(f"{k}.image_reward.med_config: {b['med_config']}: no "
                                      f"hidden_size; not a BERT (med) config")
        tok = b.get("tokenizer", "bert-base-uncased")
        if _is_local(tok):
            d = Path(tok)
            if not d.is_dir():
                raise CheckpointError(f"{k}.image_reward.tokenizer: {d}: not found (a BERT "
                                      f"tokenizer folder)")
            _tokenizer(d, f"{k}.image_reward.tokenizer", BERT_TOKENIZER, "ImageReward's BERT")


def check_inputs(block: dict, where: str) -> None:
    """Raises on the first bad paper-scale input of the pairrank block (see the module
    docstring); silent where the block reads no files (the world / tiny scale)."""
    pre = f"{where}: studies.pairrank"
    data = block.get("data") or {}
    if data.get("source") == "files":
        check_pairs(data.get("pairs") or "", f"{pre}.data.pairs")
        check_prompts(data.get("prompts") or "", f"{pre}.data.prompts")
    model = block.get("model") or {}
    if model.get("kind") == "sd":
        check_sd(model.get("pretrained") or "", f"{pre}.model.pretrained")
    check_rewards(block.get("rewards") or {}, f"{pre}.rewards")
