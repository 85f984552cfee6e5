"""PC-CLIP's paper-scale paths on small stand-ins: streamed image embeddings (DataLoader = the
stacked computation), the embedding cache the evaluation reuses, streamed zero-shot, the
authors' optimiser and budget, the COCO evaluation-pair builder, the captioners' GPU loading."""
import json

import pytest
import torch

from mmablate.errors import ConfigError, DataError
from mmablate.studies.pcclip import data as D

TINY = {"arch": "pcclip-test-clip", "tokenizer": "world", "cfg": {
    "embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8,
                                    "head_width": 8},
    "text_cfg": {"context_length": 20, "width": 16, "heads": 2, "layers": 1}}}


def _model():
    from mmablate.models.clip import build

    torch.manual_seed(0)
    model, preprocess, tok = build(TINY)
    return model.eval(), preprocess, tok


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """World pairs (train 6, eval 6) and an ImageNet-style val/<synset>/ tree of 3 classes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pcclip_world")
    cfg = {"seed": 3, "colours": ["red", "blue", "green"], "shapes": ["circle", "square"],
           "attributes": ["colour", "size", "shape", "count", "position"], "n_lm": 2,
           "n_train": 6, "n_eval": 6, "image_size": 16}
    D.write_world_pairs(cfg, root / "pairs", progress=False)
    val = root / "imagenet" / "val"
    for k, syn in enumerate(["n01440764", "n01443537", "n01484850"]):
        (val / syn).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (20, 20), (80 * k, 40 * j, 100)).save(val / syn / f"{j}.JPEG")
    (root / "imagenet" / "classnames.txt").write_text("red circle\nblue square\ngreen circle\n")
    return root


def _stacked(model, preprocess, paths):
    """The computation before streaming: every image stacked, then encoded."""
    from mmablate.data.imagetext import open_image

    x = torch.stack([preprocess(open_image(p)) for p in paths])
    with torch.no_grad():
        return model.encode_image(x, normalize=True).float()


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_embeddings_equal_the_stacked_ones(world, workers):
    from mmablate.studies.pcclip.finetune import encode_files, encode_pairs

    model, preprocess, _ = _model()
    rows = D.read_pairs(world / "pairs" / "pairs.csv", "eval")
    paths = [r["image_a"] for r in rows] + [r["image_b"] for r in rows]
    got = encode_files(model, preprocess, paths, batch=4, workers=workers, progress=False)
    assert torch.allclose(got, _stacked(model, preprocess, paths), atol=1e-6)
    fa, fb = encode_pairs(model, preprocess, rows, batch=5, workers=workers, progress=False)
    assert torch.allclose(fa, got[:len(rows)], atol=1e-6)
    assert torch.allclose(fb, got[len(rows):], atol=1e-6)


def test_pair_images_dataset_equals_the_stacked_tensors(world):
    from torch.utils.data import default_collate

    from mmablate.data.imagetext import open_image
    from mmablate.studies.pcclip.finetune import PairImages

    _, preprocess, tok = _model()
    rows = D.read_pairs(world / "pairs" / "pairs.csv", "train")
    texts = tok([r["caption_a"] for r in rows])
    a, b, t = default_collate([PairImages(rows, preprocess, texts)[i] for i in range(len(rows))])
    assert torch.equal(a, torch.stack([preprocess(open_image(r["image_a"])) for r in rows]))
    assert torch.equal(b, torch.stack([preprocess(open_image(r["image_b"])) for r in rows]))
    assert torch.equal(t, texts)


def test_streamed_zeroshot_equals_the_stacked_tensor(world):
    from mmablate.data.imagetext import ClassFolder
    from mmablate.metrics.zeroshot import zeroshot_topk
    from mmablate.studies.pcclip.evaluate import LoaderImages, zeroshot

    model, preprocess, tok = _model()
    root = world / "imagenet"
    stacked = ClassFolder(root / "val", preprocess, root / "classnames.txt")
    lazy = ClassFolder(root / "val", preprocess, root / "classnames.txt", preload=False)
    assert lazy.images is None  # nothing held
    templates = ["a {c}", "a large {c}"]
    want = zeroshot_topk(model, tok, stacked.images, torch.tensor(stacked.labels),
                         stacked.classnames, templates, (1,), batch=4)[1]
    assert zeroshot(model, tok, lazy, templates, batch=4, workers=0, progress=False) == want
    from mmablate.studies.pcclip.evaluate import _Transformed

    li = LoaderImages(_Transformed(lazy), 4, progress=False)
    assert len(li) == 9 and torch.equal(li[0:4], stacked.images[0:4])
    with pytest.raises(IndexError, match="in order"):
        li[0:4]


def _eval_cfg(world):
    return {"model": TINY, "pairs": str(world / "pairs" / "pairs.csv"),
            "loader": {"batch_size": 4, "num_workers": 0},
            "eval": {"n_distractors": 2, "classify_dir": "imagenet/val",
                     "classnames": "imagenet/classnames.txt", "templates": ["a {c}"]}}


def test_eval_reuses_the_embedding_cache(world, tmp_path, monkeypatch):
    """The base model's evaluation with the embed stage's file gives the metrics of the one that
    encodes the pair images itself, and encodes only the zero-shot images."""
    import open_clip

    from mmablate.studies.pcclip import evaluate as E
    from mmablate.studies.pcclip.finetune import embed_pairs

    model, _, _ = _model()
    base = tmp_path / "base.pt"
    torch.save(model.state_dict(), base)
    cfg = _eval_cfg(world)
    out = tmp_path / "embed" / "embeddings.pt"
    s = embed_pairs(cfg, str(base), out, progress=False)
    assert s["n"] == 6 and s["n_eval"] == 6 and s["images"] == 24  # each image encoded once
    emb = torch.load(out)
    assert emb["eval_a"].shape == (6, 16) and emb["a"].shape == (6, 16)
    seen = []
    orig = open_clip.CLIP.encode_image

    def counting(self, x, normalize=False):
        seen.append(len(x))
        return orig(self, x, normalize=normalize)

    monkeypatch.setattr(open_clip.CLIP, "encode_image", counting)
    m1, c1, x1 = E.evaluate(cfg, str(base), None, str(world), progress=False)
    n_computed = sum(seen)
    seen.clear()
    m2, c2, x2 = E.evaluate(cfg, str(base), None, str(world), embeddings=str(out),
                            progress=False)
    assert sum(seen) == 9 and n_computed == 9 + 12  # 9 zero-shot images; 12 pair images
    assert x2["eval_image_embeddings"] == "cached" and x1["eval_image_embeddings"] == "computed"
    assert m1.keys() == m2.keys() and c1 == c2
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], abs=1e-6), k


def test_budget_optimizer_and_schedule():
    from mmablate.studies.pcclip.finetune import budget, make_optimizer_for, make_schedule_for, \
        trainable_text

    assert budget({"steps": 150, "epochs": None}, 1000, 64) == (150, 15)
    assert budget({"steps": 150, "epochs": 20}, 20000, 512) == (20 * 39, 39)
    model, _, _ = _model()
    tr = trainable_text(model, "transformer")
    assert {id(p) for p in tr} == {id(p) for p in model.transformer.parameters()}
    text = trainable_text(model, "text")
    names = {n for n, p in model.named_parameters() if id(p) in {id(q) for q in text}}
    assert "token_embedding.weight" in names and not any(n.startswith("visual.") for n in names)
    assert "logit_scale" not in names
    fc = {"optimizer": "adam", "lr": 1e-8, "weight_decay": 0.0, "schedule": "exponential",
          "gamma": 0.9, "warmup": 0}
    opt = make_optimizer_for(fc, model, [], tr)
    assert type(opt) is torch.optim.Adam and opt.defaults["lr"] == 1e-8
    assert opt.defaults["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(tr)
    sched = make_schedule_for(fc, steps=12, per_epoch=4)(opt)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # torch's ExponentialLR stepped once per epoch of 4 steps
    ref_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-8)
    ref = torch.optim.lr_scheduler.ExponentialLR(ref_opt, gamma=0.9)
    want = []
    for e in range(3):
        want += [ref_opt.param_groups[0]["lr"]] * 4
        ref_opt.step()
        ref.step()
    assert lrs == pytest.approx(want, rel=1e-9)
    w = make_optimizer_for({"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1}, model,
                           [], text)
    assert type(w) is torch.optim.AdamW and w.defaults["betas"] == (0.9, 0.98)
    assert sum(len(g["params"]) for g in w.param_groups) == len(text)


def test_finetune_trains_only_the_text_transformer(world, tmp_path):
    """The authors' recipe on a stand-in: Adam over model.transformer, epochs, exponential LR."""
    from mmablate.studies.pcclip.finetune import embed_pairs, finetune

    model, _, _ = _model()
    base = tmp_path / "base.pt"
    torch.save(model.state_dict(), base)
    cfg = _eval_cfg(world)
    emb = tmp_path / "embeddings.pt"
    embed_pairs(cfg, str(base), emb, progress=False)
    rows = D.read_pairs(world / "pairs" / "pairs.csv", "train")
    caps = tmp_path / "captions.csv"
    D.write_captions(caps, [{"pair": i, "text": r["difference"], "kept": 1, "reason": ""}
                            for i, r in enumerate(rows)])
    fc = {"encoders": "text", "combine": "subtract", "loss": "contrastive", "temperature": 1.0,
          "trainable": "transformer", "optimizer": "adam", "schedule": "exponential",
          "gamma": 0.9, "epochs": 2, "steps": 999, "batch_size": 2, "lr": 1e-3,
          "weight_decay": 0.0, "warmup": 0, "ckpt_every": 100, "log_every": 1}
    out = tmp_path / "ft" / "model.pt"
    r = finetune({**cfg, "finetune": fc}, 0, str(base), caps, str(emb), out, progress=False)
    assert r["steps"] == 6 and r["steps_per_epoch"] == 3  # 2 epochs × ⌊6 / 2⌋
    log = (tmp_path / "ft" / "train_log.csv").read_text().splitlines()
    lrs = [float(l.split(",")[1]) for l in log[1:]]
    # logged after each step: the rate of the next one (epoch = ⌊(s + 1) / 3⌋)
    assert lrs == pytest.approx([1e-3 * 0.9 ** ((s + 1) // 3) for s in range(6)])
    after = torch.load(out)["model"]
    before = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("transformer.") for k in changed)


# ---- COCO evaluation pairs ----------------------------------------------------------------------
def _coco_val(tmp_path):
    caps = {1: ["A red bus parked on the street.", "a bus on a road"],
            2: ["A blue bus parked on the street", "two dogs on a couch"],
            3: ["Three dogs on a couch.", "a large dog in the grass"],
            4: ["A big dog in the grass", "a small dog in the grass"],  # big/large: synonyms
            5: ["A grey cat on a car", "a yellow bus parked on the street"],
            6: ["A gray cat on a car", "someone riding a horse"]}  # grey/gray: synonyms
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 8, "width": 8} for i in caps]
    anns = [{"id": 10 * i + j, "image_id": i, "caption": c}
            for i, cs in caps.items() for j, c in enumerate(cs)]
    p = tmp_path / "captions_val2017.json"
    p.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns}))
    return p


def test_coco_eval_pairs_from_caption_annotations(tmp_path):
    cj = _coco_val(tmp_path)
    out = tmp_path / "eval_pairs.csv"
    s = D.coco_eval_pairs(cj, "/coco/val2017", out, n_pairs=10, seed=0)
    rows = D.read_pairs(out, "eval", need_images=False)
    assert s["pairs"] == len(rows) >= 2
    used = [r["image_a"] for r in rows] + [r["image_b"] for r in rows]
    assert len(used) == len(set(used))  # every image at most once
    for r in rows:
        a, b = r["caption_a"].lower(), r["caption_b"].lower()
        assert r["image_a"] != r["image_b"] and r["image_a"].startswith("/coco/val2017/")
        assert r["attribute"] in ("colour", "count", "size")
        pa, _, pb = r["difference"].partition(" instead of ")
        assert r["reverse"] == f"{pb} instead of {pa}"
        assert pa.split()[0] in a and pb.split()[0] in b  # the words the captions differ in
        assert (r["phrase_a"] == pa) == (r["attribute"] == "colour")
    pairs = {frozenset((r["difference"].split()[0], r["reverse"].split()[0])) for r in rows}
    assert not pairs & {frozenset(("big", "large")), frozenset(("grey", "gray"))}
    # the builder's CSV is what the paper config's pairs.eval_csv reads (coco_pairs)
    assert pairs <= {frozenset(x) for x in (("red", "blue"), ("red", "yellow"),
                                            ("blue", "yellow"), ("two", "three"),
                                            ("large", "small"), ("big", "small"))}
    again = tmp_path / "again.csv"
    D.coco_eval_pairs(cj, "/coco/val2017", again, n_pairs=10, seed=0)
    assert again.read_text() == out.read_text()  # seeded
    one = tmp_path / "one.csv"
    assert D.coco_eval_pairs(cj, "/coco/val2017", one, n_pairs=1, seed=0)["pairs"] == 1


def test_coco_eval_pairs_bad_input(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                             "annotations": [{"image_id": 1, "caption": "a dog"}]}))
    with pytest.raises(DataError, match="no minimal caption pairs"):
        D.coco_eval_pairs(p, "/x", tmp_path / "o.csv")
    p.write_text(json.dumps({"images": [], "annotations": [{"id": 3}]}))
    with pytest.raises(DataError, match=r"annotations\[0\] has no image_id/caption"):
        D.coco_eval_pairs(p, "/x", tmp_path / "o.csv")


def test_coco_eval_pairs_command(tmp_path):
    import subprocess
    import sys

    from mmablate.pipeline import REPO

    cj = _coco_val(tmp_path)
    out = tmp_path / "eval_pairs.csv"
    r = subprocess.run([sys.executable, "-m", "mmablate", "pcclip-coco-eval-pairs",
                        "--captions-json", str(cj), "--image-dir", "/coco/val2017", "--out",
                        str(out), "--n-pairs", "2"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["pairs"] == 2
    assert len(D.read_pairs(out, "eval", need_images=False)) == 2


# ---- captioners on the GPU ----------------------------------------------------------------------
def test_captioners_load_in_bf16_on_the_gpu():
    from mmablate.studies.pcclip.captioners import load_kwargs

    assert load_kwargs("cuda") == {"dtype": torch.bfloat16, "device_map": "cuda"}
    assert load_kwargs("cpu") == {}


def test_chat_captioner_needs_a_chat_template(tmp_path):
    from mmablate.studies.pcclip import captioners as C

    rows = [{"caption_a": "a red circle", "caption_b": "a blue circle",
             "difference": "a red circle instead of a blue circle"}] * 4
    spec = {"family": "causal", "arch": "llama", "prompt": "first : {a} . second : {b} . "
            "difference :", "size": {"hidden": 16, "layers": 1, "heads": 2},
            "train": {"steps": 1, "batch_size": 2, "lr": 1e-3, "warmup": 0}}
    C.train_captioner(spec, rows, tmp_path / "m", progress=False)
    cap = C.make_captioner("llama2_chat", {**spec, "chat": True}, str(tmp_path / "m"),
                           batch_size=2, max_new_tokens=3)
    with pytest.raises(ConfigError, match="no chat template"):
        cap.caption(rows)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    tok.chat_template = ("{% for m in messages %}[INST] {{ m['content'] }} [/INST]"
                         "{% endfor %}")
    tok.save_pretrained(tmp_path / "m")
    out = cap.caption(rows)  # the template applied, batched generation
    assert len(out) == 4 and all(isinstance(t, str) for t in out)


def test_eval_with_the_authors_benchmarks(world, tmp_path):
    """`evaluate` with eval.benchmarks (stand-ins in the datasets' formats) adds one column per
    dataset beside the pair metrics, and leaves those unchanged."""
    from mmablate.rehearsal.pcclip_bench import write_benchmarks
    from mmablate.studies.pcclip import benchmarks as B
    from mmablate.studies.pcclip import evaluate as E

    model, _, _ = _model()
    base = tmp_path / "base.pt"
    torch.save(model.state_dict(), base)
    r = tmp_path / "bench"
    write_benchmarks(r)
    cfg = _eval_cfg(world)
    m0, _, _ = E.evaluate(cfg, str(base), None, str(world), progress=False)
    cfg["eval"]["benchmarks"] = {"seeds": 2, "zeroshot": ["cifar10", "awa2"],
                                 "difference": ["flowers_color"],
                                 "roots": {"cifar10": str(r / "cifar10"),
                                           "awa2": str(r / "Animals_with_Attributes2"),
                                           "flowers": str(r / "flowers102")}}
    m, c, x = E.evaluate(cfg, str(base), None, str(world), progress=False)
    assert set(m) - set(m0) == {"zeroshot_acc_cifar10", "zeroshot_acc_awa2",
                                "diff_acc_flowers_color"}
    assert all(m[k] == pytest.approx(m0[k], abs=1e-6) for k in m0)
    assert c["zeroshot_acc_cifar10"] == 10.0 and x["diff_pairs"]["flowers_color"] == [72, 72]
    assert x["benchmark_sizes"] == {"cifar10": 20, "awa2": 30}
    assert B.diff_id("flowers_color") in m
