"""`loss.scale`: the ``authors_code`` ranking term against a transcription of the authors'
``rankclip/train.py`` (Jam1ezhang/RankCLIP at 7b7ccd3, ``get_loss`` + ``rank_losses.py``
``list_MLE``), the ramp and the constants; the ``paper`` scale unchanged; the pipeline wiring."""
import math

import pytest
import torch

from mmablate.studies.rankclip.losses import RankCLIPLoss, authors_rank_weight


# ---- a transcription of the authors' code, written out in full here ----------------------------
def transcribed_list_mle(y_pred, y_true, eps=1e-10):
    """rank_losses.py list_MLE (no padding in a CLIP batch): sort by y_true, subtract the row
    max, reversed cumulative sum of exp, log(cumsum + eps) − pred, summed over positions,
    averaged over rows. The random shuffle only breaks ties; scores here have none."""
    y_true_sorted, indices = y_true.sort(descending=True, dim=-1)
    preds = torch.gather(y_pred, dim=1, index=indices)
    mx, _ = preds.max(dim=1, keepdim=True)
    p = preds - mx
    cumsums = torch.cumsum(p.exp().flip(dims=[1]), dim=1).flip(dims=[1])
    return torch.mean(torch.sum(torch.log(cumsums + eps) - p, dim=1))


def transcribed_rank_loss(image_embeds, text_embeds, logit_scale_param, epoch, epochs):
    """train.py get_loss, the ranking part with lambda1 > 0 and lambda2 > 0 (no in-modal
    augmentation): `logit_scale_param` is the model's parameter, exponentiated as they do."""
    logits_text_per_image = logit_scale_param.exp() * image_embeds @ text_embeds.t()
    logits_image_per_text = logits_text_per_image.t()
    batch_size = len(logits_text_per_image)
    max_epochs = epochs
    current_epoch = min(epoch, max_epochs)
    rank_weight = (3.0 * (current_epoch - 1)) / (max_epochs - 1)
    rank_weight = min(2.0, max(0.0, rank_weight))
    li = logit_scale_param.exp() * image_embeds @ image_embeds.t()
    lt = logit_scale_param.exp() * text_embeds @ text_embeds.t()
    inmodal = (transcribed_list_mle(li, lt) + transcribed_list_mle(lt, li)) / 32
    crossmodal = (transcribed_list_mle(logits_text_per_image, logits_image_per_text)
                  + transcribed_list_mle(logits_image_per_text, logits_text_per_image)) / 32
    return rank_weight * (crossmodal / batch_size + inmodal / batch_size)


def _embeds(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    return img, txt


@pytest.mark.parametrize("epoch,epochs,ramp", [
    (1, 64, 0.0),            # epoch 1: the term is off
    (2, 64, 3 / 63),         # the ramp's first step
    (22, 64, 1.0),           # 3·21/63
    (30, 64, 3 * 29 / 63),   # a middle epoch
    (43, 64, 2.0),           # 3·42/63 = 2: the clamp's edge
    (64, 64, 2.0),           # 3 → clamped at 2
    (3, 5, 1.5),             # the tiny world's 5 epochs
    (7, 5, 2.0),             # past the last epoch: min(epoch, epochs), as train.py
])
def test_authors_term_equals_the_transcription(epoch, epochs, ramp):
    assert authors_rank_weight(epoch, epochs) == pytest.approx(ramp, abs=1e-12)
    img, txt = _embeds(24, 16, seed=epoch)
    param = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)  # CLIP's initial temperature
    expected = transcribed_rank_loss(img, txt, param, epoch, epochs)
    loss = RankCLIPLoss(0.0625, "constant", "authors_code")
    loss.set_epoch(epoch, epochs)
    out = loss(img, txt, param.exp())  # open_clip passes the exponentiated scale
    got = out["loss"] - out["clip"]
    assert float(got) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)
    assert float(out["rank_ramp"]) == pytest.approx(ramp, abs=1e-12)
    if ramp > 0:  # the constants: 1/32 of the summed directions and 1/B, not folded into λ
        assert float(got) > 0
        unramped = float(expected) / ramp
        assert unramped == pytest.approx(
            2 * float(out["cross"] + out["inmodal"]) / (32 * 24), rel=1e-9)


def test_authors_term_ignores_the_value_of_lambda_and_gradients_match():
    """λ > 0 only switches the authors' term on; the gradient equals the transcription's."""
    img, txt = _embeds(16, 8, seed=3)
    param = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    grads = []
    for lam in (0.01, 0.0625, 4.0):
        x = img.clone().requires_grad_()
        loss = RankCLIPLoss(lam, "constant", "authors_code")
        loss.set_epoch(30, 64)
        out = loss(x, txt, param.exp())
        (out["loss"] - out["clip"]).backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[1], grads[2])
    x = img.clone().requires_grad_()
    transcribed_rank_loss(x, txt, param, 30, 64).backward()
    assert torch.allclose(grads[0], x.grad, rtol=1e-7, atol=1e-12)
    # λ = 0 is plain CLIP under either scale
    out = RankCLIPLoss(0.0, None, "authors_code")(img, txt, param.exp())
    assert float(out["loss"]) == pytest.approx(float(out["clip"]))


def test_paper_scale_is_unchanged():
    """The default is λ·(cross + inmodal), no ramp, no epoch needed, nothing extra logged."""
    img, txt = _embeds(12, 8, seed=5)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    default = RankCLIPLoss(0.0625, "inv_log_k_plus_1")(img, txt, scale)
    paper = RankCLIPLoss(0.0625, "inv_log_k_plus_1", "paper")(img, txt, scale)
    assert set(paper) == {"clip", "cross", "inmodal", "loss"}
    assert float(paper["loss"]) == float(default["loss"])
    assert float(paper["loss"]) == pytest.approx(
        float(paper["clip"] + 0.0625 * (paper["cross"] + paper["inmodal"])), rel=1e-12)


def test_sizes_at_initialisation():
    """The sizes the docstring and paper.yaml state, on random unit embeddings at B = 128 and
    CLIP's initial logit scale: paper term ≈ 18.4 (≈ 3.8× the CLIP loss), the authors' at most
    ≈ 0.97 (ramp 2, constant µ) and 0 in epoch 1."""
    img, txt = _embeds(128, 1024, seed=0)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    p = RankCLIPLoss(0.0625, "inv_log_k_plus_1")(img, txt, scale)
    term = float(p["loss"] - p["clip"])
    assert term == pytest.approx(18.4, abs=0.3)
    assert term / float(p["clip"]) == pytest.approx(3.8, abs=0.15)
    a = RankCLIPLoss(0.0625, "constant", "authors_code")
    for epoch, want in ((1, 0.0), (64, 0.97)):
        a.set_epoch(epoch, 64)
        o = a(img, txt, scale)
        assert float(o["loss"] - o["clip"]) == pytest.approx(want, abs=0.03)


def test_authors_scale_needs_the_epoch_and_two_epochs():
    img, txt = _embeds(4, 4, seed=0)
    loss = RankCLIPLoss(0.0625, "constant", "authors_code")
    with pytest.raises(RuntimeError, match="set_epoch"):
        loss(img, txt, torch.tensor(10.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 epochs"):
        loss.set_epoch(1, 1)
    with pytest.raises(ValueError, match="unknown loss scale 'authors'"):
        RankCLIPLoss(0.0625, "constant", "authors")


def test_epoch_of_a_step_budget():
    from mmablate.errors import ConfigError
    from mmablate.studies.rankclip.train import authors_epochs

    assert authors_epochs(250, 62) == 5      # the tiny world: 8,000 pairs at 128, 250 steps
    assert authors_epochs(64 * 62, 62) == 64  # an epoch budget: exactly train.epochs
    with pytest.raises(ConfigError, match="at least 2 epochs"):
        authors_epochs(62, 62)


def test_stage_config_and_table_note():
    """`paper` stays out of the stage config (the jobs keep their hashes); `authors_code` goes
    in; λ = 0 drops it; a λ ablation under authors_code carries the by-construction note."""
    from mmablate.pipeline import Row
    from mmablate.report.flags import caption_notes
    from mmablate.studies.rankclip.pipeline import STUDY
    from mmablate.studies.shared import clip_train

    class P:
        config = {"world": {}}

        def __init__(self):
            self.stages = []

        def world(self, cfg):
            class W:
                dir = "/w"

                def ref(self, seed=None):
                    return ("world", seed)
            return W()

        def add_stage(self, stage, cfg, needs=None):
            self.stages.append(cfg)
            return cfg

    base = {"model": {}, "train": {}, "data": {"source": "world"},
            "loss": {"rank_weight": 0.0625, "decay": "inv_log_k_plus_1", "scale": "paper"}}
    assert clip_train(P(), base)["loss"] == {"rank_weight": 0.0625, "decay": "inv_log_k_plus_1"}
    authors = dict(base, loss=dict(base["loss"], scale="authors_code"))
    assert clip_train(P(), authors)["loss"]["scale"] == "authors_code"
    off = dict(authors, loss=dict(authors["loss"], rank_weight=0.0))
    assert clip_train(P(), off)["loss"] == {"rank_weight": 0.0, "decay": None}

    rows = [Row(f"{v:g}", v, v == 0.0625, "h", {}) for v in (0.0, 0.03125, 0.0625, 0.125)]
    assert STUDY.ablation_notes(base, "loss.rank_weight", rows) == []
    assert STUDY.ablation_notes(authors, "loss.decay", rows) == []
    notes = STUDY.ablation_notes(authors, "loss.rank_weight", rows)
    assert len(notes) == 1 and "rows 0.03125, 0.0625, 0.125 train the same objective" in notes[0]
    ab = {"metrics": [{"id": "zeroshot_top1"}], "rows": [], "notes": notes}
    assert caption_notes(ab, []).startswith("BY CONSTRUCTION")


def test_config_check_names_the_key():
    from mmablate.errors import ConfigError
    from mmablate.studies.rankclip.pipeline import STUDY

    scfg = {"loss": {"rank_weight": 0.0625, "decay": "constant", "scale": "authors_code"},
            "train": {"epochs": 1, "steps": None}, "data": {}, "eval": {}}
    with pytest.raises(ConfigError, match=r"x\.loss\.scale: authors_code .* train\.epochs ≥ 2"):
        STUDY.validate(scfg, "x")


@pytest.fixture(scope="module")
def world_stage(tmp_path_factory):
    """A 64-pair world and the tiny stage config with loss.scale authors_code, 16 a batch:
    4 steps an epoch, 10 steps → 3 epochs (ramp 0, 1.5, 2)."""
    import yaml

    from mmablate.config import merge
    from mmablate.world.datasets import write_world

    from .conftest import REPO

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    merge(cfg, yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text()))
    world = tmp_path_factory.mktemp("world")
    write_world(dict(cfg["world"], n_train=64, n_classify_per_class=1, shard_size=16), world,
                progress=False)
    sc = cfg["studies"]["rankclip"]
    data = {k: v for k, v in sc["data"].items() if k != "source"}
    stage = {"model": sc["model"],
             "loss": {"rank_weight": 0.0625, "decay": "constant", "scale": "authors_code"},
             "data": dict(data, root=str(world), cache=True, train_transform="eval"),
             "train": dict(sc["train"], steps=10, ckpt_every=3, batch_size=16, log_every=1)}
    return stage, world


def test_training_ramps_by_epoch_and_resumes_to_the_same_weights(world_stage, tmp_path):
    """The ramp of each logged step follows the step's epoch, and a run stopped and resumed
    mid-epoch (the epoch comes from the step, not from a counter) reaches the same weights."""
    import copy

    from mmablate.studies.rankclip.train import train

    stage, world = world_stage
    train(copy.deepcopy(stage), 0, world, tmp_path / "a/model.pt", progress=False)
    rows = (tmp_path / "a/train_log.csv").read_text().splitlines()
    head = rows[0].split(",")
    ramps = [float(r.split(",")[head.index("rank_ramp")]) for r in rows[1:]]
    assert ramps == [0.0] * 4 + [1.5] * 4 + [2.0] * 2
    assert train(copy.deepcopy(stage), 0, world, tmp_path / "b/model.pt", stop_after=5,
                 progress=False) == {"stopped_at": 5}
    summary = train(copy.deepcopy(stage), 0, world, tmp_path / "b/model.pt", progress=False)
    assert summary["resumed_from"] == 5  # mid-epoch 2 (steps 4–7)
    a, b = torch.load(tmp_path / "a/model.pt"), torch.load(tmp_path / "b/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
