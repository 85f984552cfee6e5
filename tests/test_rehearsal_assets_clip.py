"""The rehearsal's RankCLIP and PC-CLIP part: the assets in their publishers' formats, read by
the paper path's own readers; the overlay's model blocks equal the assets' miniatures; the
preflight checks (`studies/{rankclip,pcclip}/preflight.py`) on each bad input; the paper-path
fixes the rehearsal found (ImageNet class names, relative COCO image folders)."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from mmablate.errors import DataError
from mmablate.rehearsal import pcclip as RP
from mmablate.rehearsal import rankclip as RR

REPO = Path(__file__).resolve().parent.parent
WHERE = "paper.yaml + rehearsal.yaml"


def _overlay():
    return yaml.safe_load((REPO / "config/scales/rehearsal.yaml").read_text())["studies"]


def test_overlay_models_are_the_assets_miniatures():
    st = _overlay()
    assert st["rankclip"]["model"]["cfg"] == RR.RN50_MINI
    base = st["pcclip"]["base"]["model"]
    assert base["cfg"] == RP.VITL14_MINI
    assert base["pretrained"] == f"rehearsal/assets/{RP.VITL14_DIR}/open_clip_pytorch_model.bin"
    paper = yaml.safe_load((REPO / "config/scales/paper.yaml").read_text())["studies"]["pcclip"]
    for name, spec in st["pcclip"]["captions"]["captioners"].items():
        # each captioner's folder mirrors its paper hub id, written by the asset module
        assert spec == {"model": f"rehearsal/assets/models/{paper['captions']['captioners'][name]['model']}"}
        assert paper["captions"]["captioners"][name]["model"] in RP.CAPTIONERS


# ---- RankCLIP: CC3M shards ------------------------------------------------------------------
@pytest.fixture
def cc3m(tmp_path):
    RR.write_shards(tmp_path / "cc3m", n_shards=2, per_shard=3, size=16)
    return tmp_path / "cc3m"


def test_shards_are_img2dataset_layout_read_by_the_paper_reader(cc3m):
    import pyarrow.parquet as pq

    from mmablate.data import shards as S

    shards = S.expand_shards("{00000..00001}.tar", cc3m)
    assert S.shard_counts(shards) == [3, 3] and S.num_samples(shards) == 6
    stats = json.loads((cc3m / "00000_stats.json").read_text())
    assert {"count", "successes", "failed_to_download", "failed_to_resize"} <= set(stats)
    assert pq.read_table(cc3m / "00001.parquet").column("key").to_pylist() == [
        "000010000", "000010001", "000010002"]
    samples = list(S._raw_samples(shards, S.SkipCounter()))
    assert [s["__key__"] for s in samples][:2] == ["000000000", "000000001"]
    meta = json.loads(samples[0]["json"])
    assert meta["status"] == "success" and meta["caption"] == samples[0]["txt"].decode()
    before = (cc3m / "00000.tar").read_bytes()
    RR.write_shards(cc3m, n_shards=2, per_shard=3, size=16)  # idempotent
    assert (cc3m / "00000.tar").read_bytes() == before


def _rank_block(cc3m, imagenet, **data):
    return {"data": {"source": "files", "root": str(cc3m), "train_shards": "{00000..00001}.tar",
                     "num_samples": None, "eval_root": str(imagenet), **data},
            "eval": {"class_source": "imagenet1k", "classify_dir": "val"}}


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    from mmablate.rehearsal.imagenet import write_assets

    root = tmp_path_factory.mktemp("in")
    write_assets(root, per_class=1, size=8)
    return root / "imagenet"


def test_rankclip_preflight_accepts_the_assets_and_skips_the_world(cc3m, imagenet):
    from mmablate.studies.rankclip.preflight import check_inputs

    check_inputs(_rank_block(cc3m, imagenet), WHERE)
    check_inputs({"data": {"source": "world"}}, WHERE)  # nothing read


def _raises(block, check, *parts):
    with pytest.raises(DataError) as e:
        check(block, WHERE)
    msg = str(e.value)
    print(msg)  # the verbatim error (the rehearsal note lists them)
    assert msg.startswith(WHERE + ": ")
    for p in parts:
        assert p in msg, msg
    return msg


def test_rankclip_preflight_bad_inputs(cc3m, imagenet, tmp_path):
    from mmablate.studies.rankclip.preflight import check_inputs

    # missing shard folder
    _raises(_rank_block(tmp_path / "nowhere", imagenet), check_inputs,
            "studies.rankclip.data.root", "nowhere", "not a directory")
    # a shard of the pattern missing
    _raises(_rank_block(cc3m, imagenet, train_shards="{00000..00002}.tar"), check_inputs,
            "studies.rankclip.data.train_shards", "00002.tar", "not found")
    # a shard without its _stats.json (the sample count is read from them)
    (cc3m / "00001_stats.json").unlink()
    _raises(_rank_block(cc3m, imagenet), check_inputs, "studies.rankclip.data.train_shards",
            "00001.tar", "00001_stats.json", "studies.rankclip.data.num_samples")
    check_inputs(_rank_block(cc3m, imagenet, num_samples=6), WHERE)  # the count given: fine
    (cc3m / "00001_stats.json").write_text('{"count": 3}')
    _raises(_rank_block(cc3m, imagenet), check_inputs, "00001_stats.json", '"successes"')
    (cc3m / "00001_stats.json").write_text('{"successes": 3}')
    # a corrupt tar
    (cc3m / "00001.tar").write_bytes(b"this is not a tar archive" * 40)
    _raises(_rank_block(cc3m, imagenet), check_inputs, "studies.rankclip.data.train_shards",
            "00001.tar", "not a readable tar archive")
    # a tar whose first sample has no caption
    import webdataset as wds

    with wds.TarWriter(str(cc3m / "00001.tar")) as w:
        w.write({"__key__": "000010000", "jpg": b"x", "json": "{}"})
    _raises(_rank_block(cc3m, imagenet), check_inputs, "00001.tar", "no caption member (.txt)")


def test_rankclip_preflight_imagenet_folders(cc3m, imagenet, tmp_path):
    from mmablate.studies.rankclip.preflight import check_inputs

    _raises(_rank_block(cc3m, tmp_path / "noimagenet"), check_inputs,
            "studies.rankclip.data.eval_root", "noimagenet", "not a directory")
    (tmp_path / "in2").mkdir()
    _raises(_rank_block(cc3m, tmp_path / "in2"), check_inputs,
            "studies.rankclip.eval.classify_dir", "in2/val", "not a directory")
    part = tmp_path / "in3" / "val"
    for syn in sorted(p.name for p in (imagenet / "val").iterdir())[:999]:
        shutil.copytree(imagenet / "val" / syn, part / syn)
    _raises(_rank_block(cc3m, tmp_path / "in3"), check_inputs,
            "studies.rankclip.eval.classify_dir", "999 class folders", "has 1000")


# ---- PC-CLIP ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from mmablate.studies.pcclip.data import coco_eval_pairs

    root = tmp_path_factory.mktemp("pc")
    RP.write_coco(root / "coco", "train2017", 6, 9, seed=1)
    RP.write_coco(root / "coco", "val2017", 12, 139, seed=2)
    coco_eval_pairs(root / "coco/annotations/captions_val2017.json", root / "coco/val2017",
                    root / "pcclip/eval_pairs.csv", 4, 0)
    return root


def test_coco_files_have_cocos_structure(coco):
    from mmablate.studies.pcclip.data import _read_coco, read_pairs

    ann = _read_coco(coco / "coco/annotations/captions_train2017.json")
    assert set(ann) == {"info", "licenses", "images", "annotations"}
    im = ann["images"][0]
    assert set(im) == {"license", "file_name", "coco_url", "height", "width", "date_captured",
                       "flickr_url", "id"}
    assert im["file_name"] == f"{im['id']:012d}.jpg" and (coco / "coco/train2017" / im["file_name"]).is_file()
    assert len(ann["annotations"]) == 5 * len(ann["images"])
    rows = read_pairs(coco / "pcclip/eval_pairs.csv", "eval")
    assert len(rows) == 4 and all(Path(r["image_a"]).is_file() for r in rows)


def test_coco_pair_csvs_resolve_a_relative_image_dir(coco, tmp_path, monkeypatch):
    """A relative image_dir (as in rehearsal.yaml) was written verbatim into the CSVs, which
    `read_pairs` resolves from the CSV's folder: every image path pointed nowhere."""
    from mmablate.studies.pcclip.data import coco_eval_pairs, coco_pairs, read_pairs

    monkeypatch.chdir(coco)
    ev = Path("out/eval/eval_pairs.csv")
    coco_eval_pairs("coco/annotations/captions_val2017.json", "coco/val2017", ev, 3, 0)
    rows = read_pairs(ev, "eval")
    assert rows and all(Path(r[k]).is_file() for r in rows for k in ("image_a", "image_b"))
    cfg = {"captions_json": "coco/annotations/captions_train2017.json",
           "image_dir": "coco/train2017", "n_images": 4, "n_train": 5, "seed": 11,
           "eval_csv": str(ev)}
    coco_pairs(cfg, "out/pairs")
    for split in ("train", "eval"):
        rows = read_pairs("out/pairs/pairs.csv", split)
        assert all(Path(r[k]).is_file() for r in rows for k in ("image_a", "image_b")), split
    # absolute folders stay absolute (paper.yaml's /datasets/…)
    coco_eval_pairs("coco/annotations/captions_val2017.json", coco / "coco/val2017",
                    tmp_path / "abs.csv", 2, 0)
    assert read_pairs(tmp_path / "abs.csv", "eval", need_images=False)[0]["image_a"].startswith(
        str(coco))


def test_imagenet_class_names_are_open_clips(imagenet, tmp_path):
    """paper.yaml's PC-CLIP evaluation read <imagenet>/classnames.txt, a file real ImageNet
    does not have; with class_source imagenet1k the names are open_clip's (as RankCLIP's)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from mmablate.metrics.zeroshot import imagenet_val

    assert not (imagenet / "classnames.txt").exists()
    ds, names = imagenet_val(imagenet / "val")
    assert names == list(IMAGENET_CLASSNAMES) and ds.classnames == names and len(ds) == 1000
    paper = yaml.safe_load((REPO / "config/scales/paper.yaml").read_text())["studies"]["pcclip"]
    assert paper["eval"]["class_source"] == "imagenet1k" and "classnames" not in paper["eval"]
    (tmp_path / "val" / "n0").mkdir(parents=True)
    with pytest.raises(DataError, match="1 class folders; ImageNet-1K val has 1000"):
        imagenet_val(tmp_path / "val")


def test_pcclip_zeroshot_on_imagenet_val_without_classnames_file(imagenet):
    import torch

    from mmablate.models.clip import build
    from mmablate.metrics.zeroshot import imagenet_val
    from mmablate.studies.pcclip.evaluate import zeroshot

    torch.manual_seed(0)
    model, preprocess, tok = build({"arch": "rehearsal-test-vit", "tokenizer": "open_clip",
                                    "cfg": RP.VITL14_MINI})
    ds, _ = imagenet_val(imagenet / "val", preprocess, limit_per_class=1)
    acc = zeroshot(model.eval(), tok, ds, ["a photo of a {c}."], batch=250, workers=0,
                   progress=False)
    assert 0.0 <= acc <= 100.0


def _pc_block(coco, models=None, **pairs):
    caps = {"llama2_chat": {"family": "causal", "chat": True,
                            "model": str(models) if models else "meta-llama/Llama-2-13b-chat-hf",
                            "prompt": "{a} {b}"},
            "t5": {"family": "seq2seq", "model": "google/flan-t5-xl", "prompt": "{a} {b}"}}
    return {"pairs": {"source": "coco", "captions_json": str(coco / "coco/annotations/captions_train2017.json"),
                      "image_dir": str(coco / "coco/train2017"),
                      "eval_csv": str(coco / "pcclip/eval_pairs.csv"), **pairs},
            "captions": {"captioner": "llama2_chat", "captioners": caps},
            "base": {"source": "pretrained", "model": {"arch": "ViT-L-14",
                                                      "pretrained": "datacomp_xl_s13b_b90k"}},
            "eval": {"classify_dir": "val", "class_source": "imagenet1k"}}


def test_pcclip_preflight_accepts_hub_ids_and_skips_the_world(coco):
    from mmablate.studies.pcclip.preflight import check_inputs

    check_inputs(_pc_block(coco), WHERE)  # hub ids and a tag: the job's to fetch
    check_inputs({"pairs": {"source": "world"}}, WHERE)


def test_pcclip_preflight_bad_coco_inputs(coco, tmp_path):
    from mmablate.studies.pcclip.preflight import check_inputs

    key = "studies.pcclip.pairs.captions_json"
    _raises(_pc_block(coco, captions_json=str(tmp_path / "none.json")), check_inputs, key,
            "none.json", "not found")
    bad = tmp_path / "captions_train2017.json"
    for content, want in ((b"[]", "a JSON list"), (b"{\"images\": []", "not valid JSON"),
                          (json.dumps({"info": {}, "images": [], "annotations": []}).encode(),
                           "'images' is an empty list"),
                          (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                       "annotations": []}).encode(),
                           "'annotations' is an empty list"),
                          (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}]}).encode(),
                           "no 'annotations' list"),
                          (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                                       "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1],
                                                        "category_id": 3}]}).encode(),
                           "annotations[0] has no image_id/caption")):
        bad.write_bytes(content)
        _raises(_pc_block(coco, captions_json=str(bad)), check_inputs, key, str(bad), want)
    _raises(_pc_block(coco, image_dir=str(tmp_path / "noimages")), check_inputs,
            "studies.pcclip.pairs.image_dir", "noimages", "not a directory")
    _raises(_pc_block(coco, image_dir=str(coco / "coco/val2017")), check_inputs,
            "studies.pcclip.pairs.image_dir", "has no 000000000009.jpg")
    ev = tmp_path / "eval_pairs.csv"
    _raises(_pc_block(coco, eval_csv=str(ev)), check_inputs, "studies.pcclip.pairs.eval_csv",
            "not found", "pcclip-coco-eval-pairs")
    ev.write_text("split,image_a,image_b,caption_a,caption_b\neval,a.jpg,b.jpg,x,y\n")
    _raises(_pc_block(coco, eval_csv=str(ev)), check_inputs, "missing column(s) "
            "['difference', 'reverse']")
    ev.write_text("split,image_a,image_b,caption_a,caption_b,difference,reverse\n"
                  "eval,a.jpg,b.jpg,x,y,red instead of blue,blue instead of red\n")
    _raises(_pc_block(coco, eval_csv=str(ev)), check_inputs, "line 2: image_a", "a.jpg")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("models") / "meta-llama" / "Llama-2-13b-chat-hf"
    RP.save_captioner(d, "llama", "causal", ["first image has a red bus", "[INST] [/INST]"])
    return d


def test_llama_miniature_has_the_chat_template(llama_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(llama_dir)
    text = tok.apply_chat_template([{"role": "user", "content": "a red bus"}], tokenize=False)
    assert text == f"{tok.bos_token}[INST] a red bus [/INST]"
    assert type(LlamaForCausalLM.from_pretrained(llama_dir)).__name__ == "LlamaForCausalLM"


def test_pcclip_preflight_model_folders(coco, llama_dir, tmp_path):
    from mmablate.studies.pcclip.preflight import check_inputs

    key = "studies.pcclip.captions.captioners.llama2_chat.model"
    check_inputs(_pc_block(coco, llama_dir), WHERE)
    d = tmp_path / "llama"
    shutil.copytree(llama_dir, d)
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    _raises(_pc_block(coco, d), check_inputs, key, "no chat template")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    _raises(_pc_block(coco, d), check_inputs, key, str(d), "no tokenizer")
    (d / "config.json").unlink()
    _raises(_pc_block(coco, d), check_inputs, key, "no config.json")
    _raises(_pc_block(coco, tmp_path / "models/missing/llama"), check_inputs, key,
            "model folder not found")
    block = _pc_block(coco, llama_dir)
    block["base"]["model"]["pretrained"] = str(tmp_path / "vit/open_clip_pytorch_model.bin")
    _raises(block, check_inputs, "studies.pcclip.base.model.pretrained", "checkpoint file not found")
    block = _pc_block(coco, llama_dir)
    block["eval"]["classify_root"] = str(tmp_path / "imagenet")
    _raises(block, check_inputs, "studies.pcclip.eval.classify_dir", "imagenet/val",
            "not a directory")


@pytest.mark.slow
def test_captioner_miniatures_write_captions_the_filter_keeps(tmp_path):
    """Each miniature (its real class, loaded by the paper path's captioner) writes, on pairs of
    the rehearsal's training captions, captions the paper's filter keeps: the finetunes have
    data. Its seed is chosen on other pairs than these."""
    from mmablate.studies.pcclip.captioners import is_degenerate, make_captioner

    paper = yaml.safe_load((REPO / "config/scales/paper.yaml").read_text())["studies"]["pcclip"]
    assert _overlay()["pcclip"]["captions"]["max_new_tokens"] == RP.MAX_NEW_TOKENS
    specs, filt = paper["captions"]["captioners"], paper["captions"]["filter"]
    texts = RP.corpus([s["prompt"] for s in specs.values()])
    caps = [RP.captions_of(k, False)[0] for k in range(RP.N_TRAIN_IMAGES)]
    pairs = [{"caption_a": a, "caption_b": b} for a, b in zip(caps, caps[7:])][:12]
    for name, spec in specs.items():
        d = tmp_path / name
        info = RP.write_captioner(d, name, spec, texts, filt)
        assert info["class"] == RP.CAPTIONERS[spec["model"]][0]
        out = make_captioner(name, spec, str(d), batch_size=8,
                             max_new_tokens=RP.MAX_NEW_TOKENS).caption(pairs)
        kept = [t for t, p in zip(out, pairs) if is_degenerate(t, p, filt) is None]
        assert kept, (name, info, out)

def test_a_small_caption_set_batches_evenly_over_the_ranks():
    """With fewer kept captions than finetune.batch_size the finetune takes them all as one
    batch; over 2 ranks an odd count made a batch the harness refused."""
    from mmablate.studies.pcclip.finetune import whole_set_batch

    assert whole_set_batch(7, 1, "c.csv") == 7
    assert whole_set_batch(7, 2, "c.csv") == 6
    with pytest.raises(DataError, match="c.csv: 1 kept caption"):
        whole_set_batch(1, 2, "c.csv")


def test_preflight_imports_no_torch(cc3m, imagenet, coco):
    """Run at every DAG build: the checks import neither torch nor transformers."""
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from mmablate.studies.rankclip.preflight import check_inputs as rc\n"
            "from mmablate.studies.pcclip.preflight import check_inputs as pc\n"
            "r, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
            "rc(r, 'w'); pc(p, 'w')\n"
            "heavy = {'torch', 'transformers', 'open_clip', 'webdataset'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    args = [json.dumps(_rank_block(cc3m, imagenet)), json.dumps(_pc_block(coco))]
    subprocess.run([sys.executable, "-c", code, *args], check=True,
                   env={"PYTHONPATH": str(REPO / "src"), "PATH": ""})
