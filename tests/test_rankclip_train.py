"""RankCLIP training: resumable checkpoints reach the same weights; bad checkpoints are clear."""
import copy

import pytest
import torch
import yaml

from mmablate.errors import CheckpointError
from mmablate.world.datasets import write_world

from .conftest import REPO


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mmablate.config import merge as _merge

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    _merge(cfg, yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text()))
    world = tmp_path_factory.mktemp("world")
    wc = dict(cfg["world"], n_train=64, n_classify_per_class=1)
    write_world(wc, world, progress=False)
    sc = cfg["studies"]["rankclip"]
    stage = {"model": sc["model"], "loss": sc["loss"], "data": {"root": str(world),
             "train_csv": sc["data"]["train_csv"]},
             "train": dict(sc["train"], steps=6, ckpt_every=2, batch_size=16)}
    return stage, world


def _train(stage, world, out, **kw):
    from mmablate.studies.rankclip.train import train

    return train(copy.deepcopy(stage), 0, world, out, progress=False, **kw)


def test_killed_run_resumes_to_the_same_weights(setup, tmp_path):
    stage, world = setup
    _train(stage, world, tmp_path / "a/model.pt")
    assert _train(stage, world, tmp_path / "b/model.pt", stop_after=3) == {"stopped_at": 3}
    assert not (tmp_path / "b/model.pt").exists()
    summary = _train(stage, world, tmp_path / "b/model.pt")
    assert summary["resumed_from"] == 3
    a = torch.load(tmp_path / "a/model.pt")
    b = torch.load(tmp_path / "b/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "b/train_log.csv").read_text().splitlines()
    assert log[0].startswith("clip,cross,inmodal,loss,lr,step") and len(log) == 7


def test_truncated_checkpoint_falls_back_to_the_previous_one(setup, tmp_path, capsys):
    from mmablate.training.checkpoint import list_checkpoints

    stage, world = setup
    _train(stage, world, tmp_path / "a/model.pt")
    _train(stage, world, tmp_path / "b/model.pt", stop_after=4)
    ckpts = list_checkpoints(tmp_path / "b/ckpt")
    assert [p.name for p in ckpts] == ["step_0000002.pt", "step_0000004.pt"]
    ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:100])  # a kill mid-copy, a full disk, ...
    summary = _train(stage, world, tmp_path / "b/model.pt")
    assert summary["resumed_from"] == 2
    assert "step_0000004.pt: unreadable" in capsys.readouterr().err
    a, b = torch.load(tmp_path / "a/model.pt"), torch.load(tmp_path / "b/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_truncated_model_file_is_a_clear_error(setup, tmp_path):
    from mmablate.models import clip as clipm

    stage, _ = setup
    p = tmp_path / "model.pt"
    p.write_bytes(b"not a torch file")
    model, _, _ = clipm.build(stage["model"])
    with pytest.raises(CheckpointError, match=r"model.pt: cannot read model weights"):
        clipm.load_weights(model, p)


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_micro_batches_give_the_whole_batch_gradient(setup, tmp_path, k):
    """k micro-batches of 32/k (open_clip_train's accum_freq) = one batch of 32, CLIP + ranking."""
    from mmablate.data.imagetext import ImageTextCsv
    from mmablate.models import clip as clipm
    from mmablate.studies.rankclip.losses import RankCLIPLoss
    from mmablate.studies.rankclip.train import make_step
    from mmablate.training.harness import Harness

    stage, world = setup
    assert stage["loss"]["rank_weight"] > 0
    grads = []
    for bs in (32, 32 // k):
        h = Harness({"batch_size": bs, "effective_batch": 32}, seed=0, out_dir=tmp_path,
                    progress=False)
        torch.manual_seed(0)
        model, preprocess, tok = clipm.build(stage["model"])
        data = ImageTextCsv(world / stage["data"]["train_csv"], preprocess, limit=32)
        images, texts = data.images, tok(data.captions)
        h.setup(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.0))
        step = make_step(h, RankCLIPLoss(stage["loss"]["rank_weight"], stage["loss"]["decay"]))
        micro = [(images[i:i + bs], texts[i:i + bs]) for i in range(0, 32, bs)]
        losses = step(micro, lambda loss: loss.backward())
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters()},
                      float(losses["loss"].detach())))
    (whole, l1), (accum, l2) = grads
    assert l1 == pytest.approx(l2, rel=1e-6)
    for n, g in whole.items():
        torch.testing.assert_close(accum[n], g, rtol=1e-4, atol=1e-7, msg=n)
