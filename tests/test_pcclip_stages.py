"""PC-CLIP: pairs, captioners, losses, metrics, loaders on local stand-ins, bad input."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmablate.errors import CheckpointError, ConfigError, DataError
from mmablate.studies.pcclip import captioners as C
from mmablate.studies.pcclip import data as D
from mmablate.studies.pcclip.evaluate import arithmetic, clipscore, diff_accuracy, diff_scores
from .conftest import only_study, with_ablations
from mmablate.studies.pcclip.losses import Combine, PairLoss, hinge_loss
from mmablate.world.pairs import ATTRIBUTES, difference, sample_pair
from mmablate.world.scenes import WorldSampler

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]


# ---- world pairs --------------------------------------------------------------------------------
@pytest.mark.parametrize("attr", ATTRIBUTES)
def test_pairs_differ_in_exactly_the_named_attribute(attr):
    rng = np.random.default_rng(0)
    s = WorldSampler(COLOURS, SHAPES)
    for _ in range(30):
        a, b = sample_pair(s, rng, attr)
        oa, ob = a.main, b.main
        changed = {k for k in ("colour", "shape", "size") if getattr(oa, k) != getattr(ob, k)}
        if attr in ("colour", "shape", "size"):
            assert changed == {attr} and len(a.objects) == len(b.objects) == 1
        elif attr == "count":
            assert not changed and abs(len(a.objects) - len(b.objects)) == 1
        else:
            assert not changed and oa.position != ob.position
        fwd, rev = difference(a, b, attr), difference(b, a, attr)
        assert fwd != rev


def test_difference_texts():
    rng = np.random.default_rng(1)
    s = WorldSampler(COLOURS, SHAPES)
    a, b = sample_pair(s, rng, "colour")
    assert difference(a, b, "colour") == \
        f"a {a.main.colour} {a.main.shape} instead of a {b.main.colour} {b.main.shape}"
    a, b = sample_pair(s, rng, "size")
    word = "larger" if a.main.size == "large" else "smaller"
    assert difference(a, b, "size") == f"a {word} {a.main.colour} {a.main.shape}"
    with pytest.raises(ValueError, match="unknown attribute 'texture'"):
        difference(a, b, "texture")


def test_world_pairs_written_and_read(tmp_path):
    cfg = {"seed": 3, "colours": COLOURS, "shapes": SHAPES, "image_size": 16,
           "attributes": list(ATTRIBUTES), "n_lm": 10, "n_train": 10, "n_eval": 5}
    summary = D.write_world_pairs(cfg, tmp_path, progress=False)
    assert summary == {"lm": 10, "train": 10, "eval": 5}
    train = D.read_pairs(tmp_path / "pairs.csv", "train")
    assert len(train) == 10 and all((tmp_path / "images").exists() for _ in train)
    assert {r["attribute"] for r in train} == set(ATTRIBUTES)
    lm = D.read_pairs(tmp_path / "pairs.csv", "lm", need_images=False)
    assert all(r["image_a"] == "" and r["difference"] for r in lm)
    ev = D.read_pairs(tmp_path / "pairs.csv", "eval")
    colour = [r for r in ev if r["attribute"] in ("colour", "shape")]
    assert colour and all(r["phrase_a"] and r["phrase_b"] for r in colour)


# ---- paper-scale loader on a COCO stand-in ------------------------------------------------------
def _coco_standin(tmp_path, n=6):
    from PIL import Image

    img_dir = tmp_path / "train2017"
    img_dir.mkdir()
    images, anns = [], []
    for i in range(n):
        name = f"{i:012d}.jpg"
        Image.new("RGB", (40, 30), (20 * i, 10, 10)).save(img_dir / name)
        images.append({"id": 100 + i, "file_name": name, "height": 30, "width": 40})
        anns += [{"id": 2 * i, "image_id": 100 + i, "caption": f"A photo number {i}. "},
                 {"id": 2 * i + 1, "image_id": 100 + i, "caption": f"Another caption {i}"}]
    cj = tmp_path / "captions_train2017.json"
    cj.write_text(json.dumps({"info": {}, "images": images, "annotations": anns}))
    ev = tmp_path / "eval_pairs.csv"
    D.write_pairs(ev, [{"split": "eval", "image_a": str(img_dir / images[0]["file_name"]),
                        "image_b": str(img_dir / images[1]["file_name"]), "caption_a": "x",
                        "caption_b": "y", "difference": "d", "reverse": "r"}])
    return cj, img_dir, ev


def test_coco_pairs_from_annotations(tmp_path):
    cj, img_dir, ev = _coco_standin(tmp_path)
    out = tmp_path / "out"
    s = D.coco_pairs({"captions_json": str(cj), "image_dir": str(img_dir), "n_images": 4,
                      "n_train": 7, "seed": 0, "eval_csv": str(ev)}, out)
    assert s == {"train": 7, "eval": 1, "images": 4}
    rows = D.read_pairs(out / "pairs.csv", "train")
    assert len(rows) == 7 and len({r["image_a"] for r in rows} | {r["image_b"] for r in rows}) <= 4
    assert all(r["caption_a"].startswith("A photo number") for r in rows)
    assert all(r["image_a"] != r["image_b"] for r in rows)
    assert len(D.read_pairs(out / "pairs.csv", "eval")) == 1


def test_coco_bad_input(tmp_path):
    cj, img_dir, ev = _coco_standin(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    cfg = {"captions_json": str(bad), "image_dir": str(img_dir), "n_images": 4, "n_train": 2,
           "seed": 0, "eval_csv": str(ev)}
    with pytest.raises(DataError, match="no 'annotations' key"):
        D.coco_pairs(cfg, tmp_path / "o")
    with pytest.raises(DataError, match="not found"):
        D.coco_pairs({**cfg, "captions_json": str(tmp_path / "nope.json")}, tmp_path / "o")


def test_pairs_and_captions_bad_input(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("split,image_a,caption_a\ntrain,a.png,x\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['image_b', 'caption_b'\]"):
        D.read_pairs(p)
    D.write_pairs(p, [{"split": "train", "image_a": "a", "image_b": "b", "caption_a": "x",
                       "caption_b": ""}])
    with pytest.raises(DataError, match="line 2: empty caption_b"):
        D.read_pairs(p)
    c = tmp_path / "captions.csv"
    D.write_captions(c, [{"pair": 0, "text": "", "kept": 0, "reason": "empty"}])
    with pytest.raises(DataError, match="empty caption file"):
        D.read_captions(c, 1)
    c.write_text("pair,text,kept,reason\n")
    with pytest.raises(DataError, match="empty caption file"):
        D.read_captions(c, 1)
    D.write_captions(c, [{"pair": 5, "text": "a", "kept": 1, "reason": ""}])
    with pytest.raises(DataError, match="pair 5 is not one of the 2"):
        D.read_captions(c, 2)


# ---- captioners ---------------------------------------------------------------------------------
def _corpus(n=60, seed=0):
    from mmablate.world.pairs import pair_record

    rng = np.random.default_rng(seed)
    s = WorldSampler(COLOURS, SHAPES)
    return [pair_record(*sample_pair(s, rng, ATTRIBUTES[i % 5]), ATTRIBUTES[i % 5])
            for i in range(n)]


SPEC = {"prompt": "first : {a} . second : {b} . difference :",
        "size": {"hidden": 16, "layers": 1, "heads": 2},
        "train": {"steps": 2, "batch_size": 8, "lr": 0.001, "warmup": 1}}


@pytest.mark.parametrize("arch,cls", [("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel"),
                                      ("bert", "BertForMaskedLM"),
                                      ("t5", "T5ForConditionalGeneration")])
def test_each_family_trains_saves_loads_and_captions(tmp_path, arch, cls):
    rows = _corpus()
    spec = {**SPEC, "family": C.ARCHS[arch], "arch": arch, "slots": 5}
    summary = C.train_captioner(spec, rows, tmp_path / "model", progress=False)
    assert summary["family"] == C.ARCHS[arch] and summary["steps"] == 2
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cls in cfg["architectures"]  # a save_pretrained directory, loadable by id
    cap = C.make_captioner(arch, spec, str(tmp_path / "model"), batch_size=8, max_new_tokens=5)
    out = cap.caption(rows[:6])
    assert len(out) == 6 and all(isinstance(t, str) for t in out)
    if arch == "bert":  # fills at most `slots` template positions
        assert all(len(t.split()) <= 5 for t in out)


def test_template_captioner_and_unknown_family():
    rows = _corpus(5)
    assert C.make_captioner("template", {"family": "template"}, None).caption(rows) == \
        [r["difference"] for r in rows]
    with pytest.raises(DataError, match="ground-truth attributes"):
        C.make_captioner("template", {"family": "template"}, None).caption(
            [{"caption_a": "a", "caption_b": "b", "difference": ""}])
    with pytest.raises(ConfigError, match="unknown family 'rnn'"):
        C.make_captioner("x", {"family": "rnn"}, None)


def test_missing_captioner_model_is_a_clear_error(tmp_path):
    cap = C.make_captioner("gpt", {**SPEC, "family": "causal"}, str(tmp_path / "absent"))
    with pytest.raises(DataError, match="cannot be loaded"):
        cap.caption(_corpus(2))


def test_degenerate_filter():
    pair = {"caption_a": "a large red circle", "caption_b": "a small red circle"}
    f = {"min_words": 3, "max_words": 8, "max_repeat": 2}
    assert C.is_degenerate("a larger red circle", pair, f) is None
    assert C.is_degenerate("", pair, f) == "empty"
    assert C.is_degenerate("a red", pair, f) == "too short"
    assert C.is_degenerate("red red red circle", pair, f) == "repetition"
    assert C.is_degenerate("A large red circle.", pair, f) == "copies a description"
    assert C.is_degenerate("a red circle instead of a red circle", pair, f) == "states no difference"
    f12 = {**f, "max_words": 12}
    assert C.is_degenerate("the red circle on the left instead of the left", pair, f12) == \
        "states no difference"
    assert C.is_degenerate("the red circle on the left instead of the top", pair, f12) is None
    assert C.is_degenerate("a red circle instead of a blue circle", pair, f) is None
    assert C.is_degenerate("a larger red blob", pair, f, vocab={"a", "larger", "red"}) == \
        "out of vocabulary"
    assert C.is_degenerate(" ".join(["a", "b"] * 5), pair, f) == "too long"


# ---- combine and losses -------------------------------------------------------------------------
def test_combine_ops():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    assert torch.equal(Combine("subtract", 8)(a, b), a - b)
    assert torch.equal(Combine("multiply", 8)(a, b), a * b)
    c = Combine("concat", 8)
    assert c.proj.weight.shape == (8, 16)
    assert torch.allclose(c(a, b), torch.cat([a, b], 1) @ c.proj.weight.T)
    with pytest.raises(ValueError, match="cannot be combined into dimension 8"):
        Combine("subtract", 8)(torch.randn(4, 6), torch.randn(4, 6))
    with pytest.raises(ValueError, match="unknown combine 'add'"):
        Combine("add", 8)


def _authors_clip_loss(image_embed, text_embed, temperature=0.1):
    """dsam99/pc_clip finetune.py `clip_loss`, transcribed (the NaN guard left out)."""
    image_embed = image_embed / image_embed.norm(dim=-1, keepdim=True)
    text_embed = text_embed / text_embed.norm(dim=-1, keepdim=True)
    labels = torch.arange(image_embed.shape[0])
    logits = image_embed @ text_embed.t() / temperature
    loss_i = F.cross_entropy(logits, labels, reduction="none").mean()
    loss_t = F.cross_entropy(logits.t(), labels, reduction="none").mean()
    return (loss_i + loss_t) / 2


def _authors_inputs(seed, n=6, d=8):
    """As their loop: unit image embeddings prefix1, prefix2 and a unit caption embedding."""
    g = torch.Generator().manual_seed(seed)
    p1, p2, txt = (torch.randn(n, d, generator=g) for _ in range(3))
    p1, p2 = p1 / p1.norm(dim=-1, keepdim=True), p2 / p2.norm(dim=-1, keepdim=True)
    return p1, p2, txt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrastive_is_the_authors_clip_loss_at_temperature_1(seed):
    p1, p2, txt = _authors_inputs(seed)
    comp = txt / txt.norm(dim=-1, keepdim=True)
    theirs = _authors_clip_loss(comp, p1 - p2, temperature=1)
    ours = PairLoss("contrastive")(Combine("subtract", 8)(p1, p2), txt)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    # the named option: the pretrained model's logit scale (temperature 1 / scale)
    scale = torch.tensor(100.0)
    theirs_t = _authors_clip_loss(comp, p1 - p2, temperature=1 / 100.0)
    ours_t = PairLoss("contrastive", temperature="pretrained")(p1 - p2, txt, scale)
    assert float(ours_t) == pytest.approx(float(theirs_t), rel=1e-5)
    assert float(PairLoss("contrastive", temperature=0.5)(p1 - p2, txt)) == pytest.approx(
        float(_authors_clip_loss(comp, p1 - p2, temperature=0.5)), rel=1e-6)
    assert abs(float(ours_t) - float(ours)) > 1e-3  # the two temperatures are different losses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squared_is_the_authors_mse_on_the_raw_difference(seed):
    p1, p2, txt = _authors_inputs(seed)
    comp = txt / txt.norm(dim=-1, keepdim=True)
    theirs = torch.nn.MSELoss()(comp, p1 - p2)
    ours = PairLoss("squared")(Combine("subtract", 8)(p1, p2), txt)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    # not the normalised difference (the loss before): a different loss, not a constant factor
    vn = F.normalize(p1 - p2, dim=1)
    assert abs(float(ours) - float(((vn - comp) ** 2).mean())) > 1e-4
    # gradients reach the text side as theirs
    t = txt.clone().requires_grad_(True)
    PairLoss("squared")(p1 - p2, t).backward()
    t2 = txt.clone().requires_grad_(True)
    torch.nn.MSELoss()(t2 / t2.norm(dim=-1, keepdim=True), p1 - p2).backward()
    assert torch.allclose(t.grad, t2.grad, atol=1e-7)


def test_hinge_against_direct_computation_and_finite_at_batch_1():
    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    vn, tn = F.normalize(v, dim=1), F.normalize(t, dim=1)
    s, m, terms_t, terms_i = vn @ tn.T, 0.3, [], []
    for i in range(5):
        for j in range(5):
            if i != j:
                terms_t.append(max(0.0, m - float(s[i, i]) + float(s[i, j])))
                terms_i.append(max(0.0, m - float(s[j, j]) + float(s[i, j])))
    direct = 0.5 * (sum(terms_t) / 20 + sum(terms_i) / 20)
    assert float(PairLoss("hinge", m)(v, t)) == pytest.approx(direct, rel=1e-5)
    assert float(hinge_loss(tn, tn, 0.0)) == 0.0  # positives at cos 1 beat every negative
    one = v[:1].clone().requires_grad_(True)
    loss = PairLoss("hinge", m)(one, t[:1])
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    loss.backward()  # the graph is kept: a batch of one is a no-op step, not an error
    assert torch.equal(one.grad, torch.zeros_like(one))
    for kind in ("contrastive", "squared"):  # finite at batch size 1 too
        assert torch.isfinite(PairLoss(kind)(v[:1], t[:1]))


def test_loss_errors():
    v = torch.randn(5, 8)
    with pytest.raises(ValueError, match="dimension 8 but the text embedding 6"):
        PairLoss("squared")(v, torch.randn(5, 6))
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        PairLoss("l1")
    with pytest.raises(ValueError, match="needs the model's logit scale"):
        PairLoss("contrastive", temperature="pretrained")(v, v)
    from mmablate.studies.pcclip.losses import check_temperature
    with pytest.raises(ConfigError, match="x.temperature: 0 must be a number > 0"):
        check_temperature(0, "x.temperature")
    check_temperature("pretrained", "x")
    check_temperature(1, "x")


# ---- metrics ------------------------------------------------------------------------------------
def test_diff_accuracy_and_symmetric_combines():
    g = torch.Generator().manual_seed(2)
    fa = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    fb = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    t = F.normalize(fa - fb, dim=1)  # a perfect text encoder for subtraction
    s_ab, s_ba = diff_scores(Combine("subtract", 8), fa, fb, t)
    assert diff_accuracy(s_ab, s_ba) == 100.0
    assert diff_accuracy(-s_ab, -s_ba) == 0.0
    # multiplication cannot tell the order: exactly one of the two orders is right
    t = F.normalize(fa * fb, dim=1)
    s_ab, s_ba = diff_scores(Combine("multiply", 8), fa, fb, t)
    assert torch.equal(s_ab, s_ba) and diff_accuracy(s_ab, s_ba) == 50.0


def test_clipscore_formula():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    assert clipscore(img, txt) == pytest.approx((60.0 + 0.0) / 2)


def test_arithmetic_retrieval():
    class Fake:  # text encoder: phrase -> a fixed one-hot direction
        def __init__(self):
            self.words = {}

        def encode_text(self, toks, normalize=True):
            return toks

    d = 6
    basis = torch.eye(d)
    vec = {"red": basis[0], "blue": basis[1]}
    fa = F.normalize(torch.stack([basis[0] + basis[2], basis[0] + basis[3]]), dim=1)
    fb = F.normalize(torch.stack([basis[1] + basis[2], basis[1] + basis[3]]), dim=1)
    tok = lambda ts: torch.stack([vec[t] for t in ts])  # noqa: E731
    acc = arithmetic(Fake(), tok, fa, fb, ["red", "red"], ["blue", "blue"])
    assert acc == 100.0
    assert arithmetic(Fake(), tok, fa, fb, ["red", "red"], ["red", "red"]) == 0.0  # stays at A


# ---- config -------------------------------------------------------------------------------------
def test_config_errors(smoke_config):
    from mmablate.pipeline import Pipeline

    cfg = copy.deepcopy(smoke_config)
    cfg["studies"]["pcclip"]["ablations"][2]["values"] = ["gpt", "palm"]
    with pytest.raises(ConfigError, match=r"ablations\[2\]\.values\[1\]: unknown captioner 'palm'"):
        Pipeline(cfg, ["c.yaml"], write=False)
    cfg = copy.deepcopy(smoke_config)
    del cfg["studies"]["pcclip"]["captions"]["captioners"]["t5"]
    with pytest.raises(ConfigError, match="no definition of captioner 't5'"):
        Pipeline(cfg, ["c.yaml"], write=False)
    cfg = copy.deepcopy(smoke_config)
    cfg["studies"]["pcclip"]["captions"]["captioners"]["bert"]["arch"] = "gpt2"
    with pytest.raises(ConfigError, match="captioners.bert.arch: 'gpt2' cannot be trained as a "
                                          "masked captioner"):
        Pipeline(cfg, ["c.yaml"], write=False)
    cfg = copy.deepcopy(smoke_config)
    cfg["studies"]["pcclip"]["finetune"]["combine"] = "add"
    with pytest.raises(ConfigError, match="finetune.combine: unknown combine 'add'"):
        Pipeline(cfg, ["c.yaml"], write=False)


def test_shared_work_in_the_dag(smoke_config):
    """Captions once per captioner, image embeddings once per base seed for all text-only
    variants, the base CLIP = RankCLIP's λ = 0 job."""
    from mmablate.pipeline import Pipeline
    from mmablate.studies.shared import world_clip

    cfg = copy.deepcopy(smoke_config)
    P = Pipeline(cfg, ["c.yaml"], write=False)
    st = P.stages
    assert len(st["pcclip_captioner"]) == 4 and len(st["pcclip_captions"]) == 4
    assert len(st["pcclip_embed"]) == 1 and len(st["pcclip_pairs"]) == 1
    ft = st["pcclip_finetune"]
    assert len(ft) == 9  # 1 baseline + 1 + 2 + 3 + 2 replacements
    assert sum(c["embed"] is not None for c in ft.values()) == 8
    assert len(st["pcclip_eval"]) == 10  # + the base model
    th = world_clip(P)[0].hash
    assert next(iter(st["pcclip_embed"].values()))["base"]["hash"] == th
    assert th in {r.config_hash for a in P.ablations if a.id == "rank_weight" for r in a.rows}
    pc = [a for a in P.ablations if a.study == "pcclip"]
    assert [a.id for a in pc] == ["encoders", "combine", "captioner", "loss"]
    assert all(a.rows[-1].kind == "reference" for a in pc)


def test_paper_config_is_valid_with_standins(tmp_path, smoke_config):
    import yaml

    from mmablate.config import merge as _merge
    from mmablate.pipeline import REPO, Pipeline

    cj, img_dir, ev = _coco_standin(tmp_path)
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    paper = yaml.safe_load((REPO / "config/scales/paper.yaml").read_text())
    _merge(cfg, paper)
    only_study(with_ablations(cfg), "pcclip")
    pc = cfg["studies"]["pcclip"]
    assert pc["base"]["model"] == {"arch": "ViT-L-14", "pretrained": "datacomp_xl_s13b_b90k",
                                   "tokenizer": "open_clip"}
    assert pc["captions"]["captioners"]["llama2_chat"]["model"] == "meta-llama/Llama-2-13b-chat-hf"
    with pytest.raises(ConfigError, match="pairs.captions_json"):
        Pipeline(cfg, ["paper.yaml"], write=False)
    pc["pairs"].update(captions_json=str(cj), image_dir=str(img_dir), eval_csv=str(ev))
    pc["eval"]["classify_root"] = str(tmp_path)
    P = Pipeline(cfg, ["paper.yaml"], write=False)
    assert "pcclip_captioner" not in P.stages  # hub models, nothing trained here
    caps = {c["source"] for c in P.stages["pcclip_captions"].values()}
    assert "meta-llama/Llama-2-13b-chat-hf" in caps
    assert all(c["base"] is None for c in P.stages["pcclip_eval"].values())


def test_embedding_dimension_mismatch(tmp_path):
    from mmablate.studies.pcclip.finetune import load_embeddings

    p = tmp_path / "e.pt"
    torch.save({"a": torch.zeros(3, 32), "b": torch.zeros(3, 32)}, p)
    with pytest.raises(DataError, match="mismatched embedding dimensions"):
        load_embeddings(p, 3, 64)
    with pytest.raises(DataError, match="3 embeddings for 4 training pairs"):
        load_embeddings(p, 4, 32)
    with pytest.raises(DataError, match="not found"):
        load_embeddings(tmp_path / "x.pt", 3, 32)


def test_bad_checkpoint(tmp_path):
    from mmablate.models.clip import build
    from mmablate.studies.pcclip.finetune import load_finetuned

    model, _, _ = build({"arch": "world-clip-tiny", "tokenizer": "world", "cfg": {
        "embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16,
                                        "patch_size": 8, "head_width": 8},
        "text_cfg": {"context_length": 20, "width": 16, "heads": 2, "layers": 1}}})
    p = tmp_path / "m.pt"
    torch.save({"model": model.state_dict()}, p)
    with pytest.raises(CheckpointError, match="not a PC-CLIP checkpoint"):
        load_finetuned(model, p)
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_finetuned(model, p)


def test_captioner_rows_say_when_the_lm_was_trained_on_the_world():
    from mmablate.studies.pcclip.pipeline import STUDY

    label = STUDY.label

    scfg = {"captions": {"captioners": {"gpt": {"family": "causal", "arch": "gpt2", "model": None},
                                        "t5": {"family": "seq2seq", "model": "google/flan-t5-xl"},
                                        "template": {"family": "template"}}}}
    assert label("captions.captioner", "gpt", scfg) == "GPT-3 (world gpt2 LM)"
    assert label("captions.captioner", "t5", scfg) == "T5"  # a real model: the paper's name
    assert label("captions.captioner", "template", scfg) == "template (ground truth)"
    assert label("captions.captioner", "gpt") == "GPT-3"
