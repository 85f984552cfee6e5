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
    wc = dict(cfg["world"], n_train=64, n_classify_per_class=1, shard_size=16)
    write_world(wc, world, progress=False)
    sc = cfg["studies"]["rankclip"]
    data = {k: v for k, v in sc["data"].items() if k != "source"}
    # the tiny path (cached shards, evaluation transform), as the default config
    stage = {"model": sc["model"], "loss": sc["loss"],
             "data": dict(data, root=str(world), cache=True, train_transform="eval"),
             "train": dict(sc["train"], steps=6, ckpt_every=2, batch_size=16)}
    return stage, world


def _streamed(stage):
    """The paper path: streamed shards (the smoke overlay's data block) with the evaluation
    transform, so the weights are a function of the data order alone."""
    return dict(stage, data=dict(stage["data"], cache=False, train_transform="eval",
                                 shuffle_buffer=8))


def _train(stage, world, out, **kw):
    from mmablate.studies.rankclip.train import train

    return train(copy.deepcopy(stage), 0, world, out, progress=False, **kw)


@pytest.mark.parametrize("streamed", [False, True])
def test_killed_run_resumes_to_the_same_weights(setup, tmp_path, streamed):
    stage, world = setup
    stage = _streamed(stage) if streamed else stage
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
    from mmablate.data.shards import expand_shards, read_all
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
        images, texts, _ = read_all(expand_shards(world / "cc3m"), preprocess, tok,
                                    progress=False)
        images, texts = images[:32], texts[:32]
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


def test_streamed_training_with_the_training_transform_and_epochs(setup, tmp_path):
    """The paper-scale path: shards streamed through two DataLoader workers with open_clip's
    training transform, the budget in epochs over the stats files' sample count."""
    stage, world = setup
    st = _streamed(stage)
    st["data"].update(train_transform="open_clip_train")
    st["train"] = dict(st["train"], steps=None, epochs=1, num_workers=2, ckpt_every=None)
    summary = _train(st, world, tmp_path / "model.pt")
    assert summary["num_samples"] == 64 and summary["steps"] == 4 and summary["epochs"] == 1.0
    assert summary["shards"] == 4


def test_csv_loader_still_trains(setup, tmp_path):
    """Small sets in an open_clip CSV (tab-separated filepath/title)."""
    import io

    from PIL import Image

    from mmablate.data.shards import _raw_samples, SkipCounter, expand_shards

    stage, world = setup
    d = tmp_path / "csvset"
    (d / "img").mkdir(parents=True)
    rows = ["filepath\ttitle"]
    for i, s in enumerate(_raw_samples(expand_shards(world / "cc3m"), SkipCounter())):
        Image.open(io.BytesIO(s["png"])).save(d / f"img/{i}.png")
        rows.append(f"img/{i}.png\t{s['txt'].decode()}")
    (d / "train.csv").write_text("\n".join(rows) + "\n")
    st = dict(stage, data={"root": str(d), "train_csv": "train.csv", "train_shards": None,
                           "train_transform": "eval"})
    st["train"] = dict(st["train"], ckpt_every=None)
    a = _train(st, d, tmp_path / "a/model.pt")
    b = _train(dict(stage, train=st["train"]), world, tmp_path / "b/model.pt")
    assert a["num_samples"] == b["num_samples"] == 64
    wa, wb = torch.load(tmp_path / "a/model.pt"), torch.load(tmp_path / "b/model.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the same pixels, order and captions
