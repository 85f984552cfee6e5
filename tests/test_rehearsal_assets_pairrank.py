"""The pair-ranking study's rehearsal: its assets in the published formats load with the paper
scale's own loaders, rehearsal.yaml keeps the paper's code path, and each bad input is an error
naming the file and the config key before any job runs (preflight) or at job time (a corrupt
shard), losing nothing already computed."""
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmablate.errors import CheckpointError, ConfigError, DataError
from mmablate.rehearsal import pairrank as RP

from .conftest import REPO

WHERE = "paper.yaml + rehearsal.yaml"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    out = tmp_path_factory.mktemp("rehearsal") / "assets"
    RP.write_assets(out)
    return out


def rehearsal_block(assets: Path) -> dict:
    """The pairrank block of paper.yaml + rehearsal.yaml, its rehearsal/assets paths moved to
    `assets`."""
    from mmablate.config import load

    cfg = load([REPO / "config/config.yaml", REPO / "config/scales/paper.yaml",
                REPO / "config/scales/rehearsal.yaml"])
    text = json.dumps(cfg["studies"]["pairrank"]).replace('"rehearsal/assets/', f'"{assets}/')
    return json.loads(text)


@pytest.fixture
def block(assets):
    return rehearsal_block(assets)


# ---- the assets --------------------------------------------------------------------------
def test_pickapic_shards_have_the_hub_schema_and_stream(tmp_path):
    import pyarrow.parquet as pq

    from mmablate.data.pickapic import load_pairs, stream_pairs

    files = RP.write_pickapic(tmp_path / "data", n_shards=2, rows=12, row_group_size=5)
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    for f in files:
        pf = pq.ParquetFile(f)
        assert pf.schema_arrow.equals(RP.pickapic_schema())
        assert pf.metadata.num_row_groups == 3  # 12 rows in groups of 5: the streaming units
    df = pq.read_table(files[0]).to_pandas()
    tie = df.label_0 == 0.5
    assert (df.best_image_uid[~tie] == np.where(df.label_0[~tie] > 0.5, df.image_0_uid[~tie],
                                                 df.image_1_uid[~tie])).all()
    assert (df.best_image_uid[tie] == "").all() and ((df.label_0 + df.label_1) == 1).all()
    pairs = load_pairs(tmp_path / "data")
    assert len(pairs) + pairs.n_ties == 24
    units = [u for u in stream_pairs(tmp_path / "data", size=20) if u["caption"]]
    assert sum(len(u["caption"]) for u in units) == len(pairs)
    assert all(u["winner"].shape[1:] == (20, 20, 3) for u in units)  # mixed sizes resized
    again = RP.write_pickapic(tmp_path / "again", n_shards=2, rows=12, row_group_size=5)
    assert [f.read_bytes() for f in again] == [f.read_bytes() for f in files]  # deterministic


def test_clip_tokenizer_is_clips_vocabulary():
    import open_clip

    tok = RP.clip_tokenizer()
    assert len(tok) == 49408
    text = "a photo of a red cat on the left"
    ids = tok(text).input_ids
    ref = open_clip.get_tokenizer("ViT-B-32")([text])[0]
    assert ids == ref[:len(ids)].tolist()  # the same ids as CLIP's own BPE


def test_every_asset_loads_with_the_paper_loaders(assets, block):
    """Preflight accepts the rehearsal block; each model loads through the paper-scale code
    (load_t2i, load_scorer) and computes."""
    from mmablate.studies.pairrank.diffusion import load_t2i
    from mmablate.studies.pairrank.preflight import check_inputs
    from mmablate.studies.pairrank.rewards import load_scorer

    check_inputs(block, WHERE)
    t2i = load_t2i({"kind": "sd", "pretrained": block["model"]["pretrained"]})
    assert t2i.image_size == 32 and t2i.vae is not None
    prompts = json.loads(Path(block["data"]["prompts"]).read_text())["eval"][:2]
    images = t2i.sample(prompts, seed=0, steps=2, guidance=7.5)
    assert images.shape == (2, 32, 32, 3)
    for kind, rcfg in block["rewards"]["paper"].items():
        sc = load_scorer({"source": "paper", "kind": kind, **rcfg})
        s = sc(images, prompts)
        assert s.shape == (2,) and np.isfinite(s).all(), kind
    parts = RP.write_assets(assets)  # idempotent: everything is there already
    assert Path(parts["sd15"]) == Path(block["model"]["pretrained"])


# ---- rehearsal.yaml keeps the paper's code path ---------------------------------------------
def test_rehearsal_overlay_keeps_the_paper_path():
    from mmablate.config import load
    from mmablate.training.harness import check

    files = [REPO / "config/config.yaml", REPO / "config/scales/paper.yaml"]
    paper = load(files)["studies"]["pairrank"]
    reh = load(files + [REPO / "config/scales/rehearsal.yaml"])["studies"]["pairrank"]
    d = reh["dpo"]
    assert check(d, "dpo", world_size=2)["accum"] > 1  # accumulation to the effective batch
    assert 0 < d["warmup"] < d["steps"] and d["lr_schedule"] == paper["dpo"]["lr_schedule"]
    assert d["ckpt_every"] < d["steps"]  # a checkpoint is written mid-run
    assert reh["selection"]["adaptive"]["steps"] != d["steps"]  # candidates are their own jobs
    for k in ("source", "psi", "precision"):
        assert reh["rewards"][k] == paper["rewards"][k]
    assert reh["data"]["source"] == "files" and reh["model"]["kind"] == "sd"
    for k in ("lora_rank", "lora_alpha", "beta", "lr", "bf16", "grad_checkpointing"):
        assert d[k] == paper["dpo"][k]
    assert reh["rewards"]["num_workers"] >= 1 and d["num_workers"] >= 1  # DataLoader workers
    assert reh["rewards"]["paper"]["hpsv2"]["clip_arch"] == "ViT-H-14"
    assert reh["rewards"]["paper"]["aesthetic"]["clip_arch"] == "ViT-L-14"


# ---- bad inputs: preflight ------------------------------------------------------------------
def _shards(tmp_path, **kw):
    d = tmp_path / "data"
    RP.write_pickapic(d, n_shards=2, rows=6, row_group_size=3, **kw)
    return d


def test_parquet_without_a_required_column(tmp_path, block):
    import pyarrow.parquet as pq

    from mmablate.studies.pairrank.preflight import check_inputs

    d = _shards(tmp_path)
    f = d / "train-00001-of-00002.parquet"
    pq.write_table(pq.read_table(f).drop_columns(["jpg_1"]), f)
    block["data"]["pairs"] = str(d)
    with pytest.raises(DataError) as e:
        check_inputs(block, WHERE)
    msg = str(e.value)
    assert msg.startswith(f"{WHERE}: studies.pairrank.data.pairs: {f}: missing column(s) ['jpg_1']")


def test_parquet_with_a_column_of_the_wrong_type(tmp_path, block):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmablate.studies.pairrank.preflight import check_inputs

    d = _shards(tmp_path)
    f = d / "train-00000-of-00002.parquet"
    t = pq.read_table(f)
    t = t.set_column(t.schema.get_field_index("label_0"), "label_0",
                     pa.array([str(x) for x in t.column("label_0").to_pylist()]))
    pq.write_table(t, f)
    block["data"]["pairs"] = str(d)
    with pytest.raises(DataError, match=r"studies.pairrank.data.pairs: .*train-00000-of-00002"
                                        r".parquet: column 'label_0' is string"):
        check_inputs(block, WHERE)


def test_corrupt_parquet_footer(tmp_path, block):
    from mmablate.studies.pairrank.preflight import check_inputs

    d = _shards(tmp_path)
    f = d / "train-00001-of-00002.parquet"
    f.write_bytes(f.read_bytes()[:-100])  # a truncated download
    block["data"]["pairs"] = str(d)
    with pytest.raises(DataError, match=r"studies.pairrank.data.pairs: .*train-00001-of-00002"
                                        r".parquet: not a readable parquet file"):
        check_inputs(block, WHERE)


def test_missing_or_empty_pairs_folder(tmp_path, block):
    from mmablate.studies.pairrank.preflight import check_inputs

    block["data"]["pairs"] = str(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"data.pairs: .*nowhere: not found"):
        check_inputs(block, WHERE)
    (tmp_path / "empty").mkdir()
    block["data"]["pairs"] = str(tmp_path / "empty")
    with pytest.raises(DataError, match=r"data.pairs: .*empty: no .parquet files"):
        check_inputs(block, WHERE)


@pytest.mark.parametrize("content,want", [
    (None, r"prompts.json: not found"),
    ('["a cat", "a dog"]', r"prompts.json: a list at the top level"),
    ('{"val": ["a cat"], "eval": []}', r"prompts.json: split 'eval' is list of length 0"),
    ('{"eval": ["a cat"]}', r"prompts.json: split 'val' is missing"),
    ('{"val": ["a cat"], "eval": ["a dog", ""]}', r"prompts.json: eval\[1\] is ''"),
    ('{"val": ["a cat"], ', r"prompts.json: not valid JSON"),
])
def test_prompts_file_missing_or_of_the_wrong_shape(tmp_path, block, content, want):
    from mmablate.studies.pairrank.preflight import check_inputs

    p = tmp_path / "prompts.json"
    if content is not None:
        p.write_text(content)
    block["data"]["prompts"] = str(p)
    with pytest.raises(DataError, match=r"studies.pairrank.data.prompts: .*" + want):
        check_inputs(block, WHERE)


def test_model_folder_without_its_tokenizer(tmp_path, assets, block):
    from mmablate.studies.pairrank.preflight import check_inputs

    sd = tmp_path / "sd"
    shutil.copytree(block["model"]["pretrained"], sd)
    shutil.rmtree(sd / "tokenizer")
    block["model"]["pretrained"] = str(sd)
    with pytest.raises(CheckpointError, match=r"studies.pairrank.model.pretrained: .*sd: no tokenizer/"):
        check_inputs(block, WHERE)
    (sd / "tokenizer").mkdir()
    with pytest.raises(CheckpointError, match=r"model.pretrained: .*sd/tokenizer: no tokenizer files "
                                              r"\(vocab.json\+merges.txt or tokenizer.json\)"):
        check_inputs(block, WHERE)
    b = rehearsal_block(assets)
    proc = tmp_path / "proc"
    shutil.copytree(b["rewards"]["paper"]["pickscore"]["processor"], proc)
    for f in ("vocab.json", "merges.txt", "tokenizer.json"):
        (proc / f).unlink(missing_ok=True)
    b["rewards"]["paper"]["pickscore"]["processor"] = str(proc)
    with pytest.raises(CheckpointError, match=r"rewards.paper.pickscore.processor: .*proc: no "
                                              r"tokenizer files"):
        check_inputs(b, WHERE)
    b = rehearsal_block(assets)
    b["rewards"]["paper"]["image_reward"]["tokenizer"] = str(tmp_path / "no-bert")
    with pytest.raises(CheckpointError, match=r"rewards.paper.image_reward.tokenizer: .*no-bert: "
                                              r"not found"):
        check_inputs(b, WHERE)


@pytest.mark.parametrize("kind,key", [("hpsv2", "checkpoint"), ("aesthetic", "head_weights"),
                                      ("image_reward", "checkpoint"), ("hpsv2", "clip_pretrained")])
def test_missing_checkpoint(tmp_path, block, kind, key):
    from mmablate.studies.pairrank.preflight import check_inputs

    block["rewards"]["paper"][kind][key] = str(tmp_path / "models" / "gone.pt")
    with pytest.raises(CheckpointError, match=rf"studies.pairrank.rewards.paper.{kind}.{key}: "
                                              rf".*gone.pt: .* not found"):
        check_inputs(block, WHERE)


def test_open_clip_config_without_its_towers(tmp_path, block):
    from mmablate.studies.pairrank.preflight import check_inputs

    p = tmp_path / "ViT-H-14.json"
    p.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {}}))
    block["rewards"]["paper"]["hpsv2"]["clip_config"] = str(p)
    with pytest.raises(ConfigError, match=r"rewards.paper.hpsv2.clip_config: .*lacks \['text_cfg'\]"):
        check_inputs(block, WHERE)


def test_preflight_is_silent_on_the_world(smoke_config):
    from mmablate.studies.pairrank.preflight import check_inputs

    check_inputs(copy.deepcopy(smoke_config["studies"]["pairrank"]), WHERE)


# ---- bad inputs at job time: a corrupt shard mid-stream ---------------------------------------
def _corrupt_data_pages(f: Path, row_group: int):
    """Overwrites bytes inside row group `row_group`'s column chunk of jpg_0 (the footer stays
    readable, as in a shard damaged in transfer)."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(f).metadata
    rg = md.row_group(row_group)
    col = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema == "jpg_0")
    start = col.data_page_offset
    b = bytearray(f.read_bytes())
    b[start:start + 64] = bytes(64)
    f.write_bytes(bytes(b))


def test_corrupt_shard_fails_at_job_time_naming_it_and_keeps_the_scored_shards(tmp_path, block):
    from mmablate.studies.pairrank import rewards
    from mmablate.studies.pairrank.preflight import check_inputs

    d = tmp_path / "data"
    files = RP.write_pickapic(d, n_shards=3, rows=6, row_group_size=3)
    good = files[2].read_bytes()
    _corrupt_data_pages(files[2], 1)
    block["data"]["pairs"] = str(d)
    check_inputs(block, WHERE)  # the footer reads: preflight cannot see it
    cfg = {"pairs": str(d), "reward": {"source": "paper", "kind": "hpsv2",
                                       **block["rewards"]["paper"]["hpsv2"]}, "batch_size": 4,
           "num_workers": 1}  # decoded in a DataLoader worker, as the paper's job
    out = tmp_path / "score" / "scores.npz"
    with pytest.raises(DataError, match=r"^[^\n]*train-00002-of-00003.parquet: row group 1 "
                                        r"\(rows 3–5\) does not read[^\n]*$"):
        rewards.score_pairs(cfg, out, progress=False)  # one line: the worker's message
    assert sorted(p.name for p in (out.parent / "shards").glob("*.npz")) == [
        "00000-train-00000-of-00003.npz", "00001-train-00001-of-00003.npz"]
    files[2].write_bytes(good)  # the shard downloaded again: the job resumes at it
    s = rewards.score_pairs(cfg, out, progress=False)
    assert s["resumed_shards"] == 2 and s["n_shards"] == 3


def test_rehearsal_plans_the_paper_dags_jobs(assets):
    """paper.yaml + rehearsal.yaml plans the same stages, the same number of jobs of each, and
    the same targets as paper.yaml (its data paths pointed at the stand-ins so it validates)."""
    from mmablate.config import load
    from mmablate.pipeline import Pipeline

    from .conftest import only_study

    files = [REPO / "config/config.yaml", REPO / "config/scales/paper.yaml"]
    paper = only_study(load(files), "pairrank")
    paper["studies"]["pairrank"]["data"].update(
        pairs=str(assets / "pickapic_v2/data"), prompts=str(assets / "pickapic_v2/prompts.json"))
    reh = only_study(load(files + [REPO / "config/scales/rehearsal.yaml"]), "pairrank")
    reh["studies"]["pairrank"] = rehearsal_block(assets)
    reh["studies"]["pairrank"]["enabled"] = True
    Pp, Pr = (Pipeline(c, ["c.yaml"], write=False) for c in (paper, reh))
    assert {s: len(h) for s, h in Pp.stages.items()} == {s: len(h) for s, h in Pr.stages.items()}
    assert len(Pp.stages["pairrank_dpo"]) > 1 and Pp.seeds == Pr.seeds
    assert len(Pp.targets()) == len(Pr.targets())
