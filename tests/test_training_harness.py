"""The training harness (mmablate.training.harness) at one process: config checks, data order,
accumulation, clipping, gradient checkpointing switch, RNG use, workers, resume."""
import pytest
import torch

from mmablate.errors import ConfigError
from mmablate.training import harness as H


def test_config_errors_name_the_key():
    """What the schema cannot say (its types and ranges of every harness key:
    tests/test_config_schema.py): the accumulation must divide."""
    with pytest.raises(ConfigError,
                       match=r"t\.effective_batch: 12 is not a multiple of t\.batch_size 8"):
        H.check({"batch_size": 8, "effective_batch": 12}, "t")
    assert H.check({"batch_size": 8, "effective_batch": 24, "num_workers": 2}, "t")["accum"] == 3


def test_batch_must_split_over_ranks():
    assert H.check({"batch_size": 8, "effective_batch": 32}, "t", 2) == \
        {"accum": 4, "micro_batch": 4, "effective_batch": 32}
    with pytest.raises(ConfigError, match=r"t\.batch_size: 6 does not split over 4 processes"):
        H.check({"batch_size": 6}, "t", 4)


def test_rank_slices_concatenate_to_the_one_process_micro_batches():
    order = H.epoch_order(40, 16, seed=3)
    one = list(H.StepSampler(order, 0, 5, accum=2, batch_size=8, rank=0, world_size=1))
    r0 = list(H.StepSampler(order, 0, 5, accum=2, batch_size=8, rank=0, world_size=2))
    r1 = list(H.StepSampler(order, 0, 5, accum=2, batch_size=8, rank=1, world_size=2))
    assert len(one) == 10 and all(len(b) == 8 for b in one)
    assert [a + b for a, b in zip(r0, r1)] == one
    # a step's micro-batches are its effective batch; a later start continues the same order
    assert one[0] + one[1] == order(0).tolist()
    assert list(H.StepSampler(order, 3, 5, 2, 8, 0, 1)) == one[6:]
    # the order is RankCLIP's pre-harness order: epoch permutations seeded seed·100003 + epoch
    g = torch.Generator().manual_seed(3 * 100_003 + 1)
    assert order(2).tolist() == torch.randperm(40, generator=g)[:16].tolist()


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return H.Tensors(x, x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g))


def _fit(tmp_path, train, steps=4, stop_after=None, order=None, draw=False, **kw):
    torch.manual_seed(0)
    h = H.Harness(dict(train), seed=1, out_dir=tmp_path, where="t", progress=False,
                  stop_after=stop_after)
    model = _model()
    h.setup(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1))

    def step(batch):
        x, y = batch
        if draw:  # a step that uses torch's global RNG (dropout, noise, ...)
            x = x + 0.01 * torch.randn_like(x)
        return {"loss": torch.nn.functional.mse_loss(h.model(x), y)}

    order = order(h) if order else None
    out = h.fit(step, _data(), steps=steps, ckpt_every=kw.pop("ckpt_every", 2), log_every=1,
                order=order, **kw)
    return out, h, model


def test_accumulation_equals_the_whole_batch(tmp_path):
    _, h1, whole = _fit(tmp_path / "a", {"batch_size": 16})
    _, h4, accum = _fit(tmp_path / "b", {"batch_size": 4, "effective_batch": 16})
    assert (h1.accum, h4.accum) == (1, 4)
    for p, q in zip(whole.parameters(), accum.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    la = [r["loss"] for r in h1.log_rows]
    lb = [r["loss"] for r in h4.log_rows]  # the mean of the micro-batches' losses
    assert la == pytest.approx(lb, rel=1e-5)
    assert (tmp_path / "b/train_log.csv").read_text().splitlines()[0] == "loss,lr,step"


def test_clipping_matches_torch(tmp_path):
    _, _, clipped = _fit(tmp_path / "a", {"batch_size": 16, "max_grad_norm": 0.01}, steps=1)
    torch.manual_seed(0)
    ref = _model()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = _data()[H.epoch_order(32, 16, 1)(0).tolist()]
    torch.nn.functional.mse_loss(ref(x), y).backward()
    assert torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.01) > 0.01  # clipping bites
    opt.step()
    for p, q in zip(ref.parameters(), clipped.parameters()):
        assert torch.equal(p, q)


def _model():
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


@pytest.mark.parametrize("workers", [0, 2])
def test_the_harness_draws_nothing_from_torchs_rng(tmp_path, workers):
    """Set-up, loader and loop leave torch's global RNG to the study (same draws as before)."""
    _fit(tmp_path, {"batch_size": 8, "num_workers": workers})
    after = torch.get_rng_state()
    torch.manual_seed(0)
    _model()  # what _fit draws itself: the model's initialisation
    assert torch.equal(after, torch.get_rng_state())


def test_workers_give_the_same_run(tmp_path):
    _, h0, m0 = _fit(tmp_path / "a", {"batch_size": 8})
    _, h2, m2 = _fit(tmp_path / "b", {"batch_size": 8, "num_workers": 2})
    assert [r["loss"] for r in h0.log_rows] == [r["loss"] for r in h2.log_rows]
    assert all(torch.equal(p, q) for p, q in zip(m0.parameters(), m2.parameters()))


@pytest.mark.parametrize("kind", ["epoch", "sampled"])
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, kind):
    order = None if kind == "epoch" else \
        (lambda h: h.sampled_order(32, torch.Generator().manual_seed(9)))
    whole, hw, mw = _fit(tmp_path / "a", {"batch_size": 4, "effective_batch": 8}, steps=7,
                         order=order, draw=True)
    assert _fit(tmp_path / "b", {"batch_size": 4, "effective_batch": 8}, steps=7, stop_after=3,
                order=order, draw=True)[0] == {"stopped_at": 3}
    resumed, hr, mr = _fit(tmp_path / "b", {"batch_size": 4, "effective_batch": 8}, steps=7,
                           order=order, draw=True)
    assert resumed["resumed_from"] == 3 and whole["resumed_from"] == 0
    assert all(torch.equal(p, q) for p, q in zip(mw.parameters(), mr.parameters()))
    assert [r["loss"] for r in hw.log_rows] == [r["loss"] for r in hr.log_rows]


def test_sampled_order_is_the_generator_stream():
    g = torch.Generator().manual_seed(4)
    o = H.SampledOrder(10, 3, torch.Generator().manual_seed(4))
    assert [o(s).tolist() for s in range(3)] == \
        [torch.randint(0, 10, (3,), generator=g).tolist() for _ in range(3)]
    with pytest.raises(ValueError, match="out of order"):
        o(7)


def test_grad_checkpointing_switch(tmp_path):
    class WithSwitch(torch.nn.Linear):
        enabled = False

        def gradient_checkpointing_enable(self):
            self.enabled = True

    h = H.Harness({"batch_size": 4, "grad_checkpointing": True}, seed=0, out_dir=tmp_path,
                  where="x.train", progress=False)
    m = WithSwitch(2, 2)
    h.setup(m, lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    assert m.enabled
    h = H.Harness({"batch_size": 4, "grad_checkpointing": True}, seed=0, out_dir=tmp_path,
                  where="x.train", progress=False)
    with pytest.raises(ConfigError, match=r"x\.train\.grad_checkpointing: model \(Linear\) has no"):
        h.setup(torch.nn.Linear(2, 2), lambda m: torch.optim.SGD(m.parameters(), lr=0.1))


def test_open_clip_grad_checkpointing_switch(tmp_path):
    import open_clip

    h = H.Harness({"batch_size": 4, "grad_checkpointing": True}, seed=0, out_dir=tmp_path,
                  progress=False)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16,
                                           "patch_size": 8, "head_width": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 20, "width": 16, "heads": 2,
                        "layers": 1}}
    m = open_clip.model.CLIP(**cfg)
    h.setup(m, lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    assert m.visual.transformer.grad_checkpointing and m.transformer.grad_checkpointing
