"""The shared resumable-training helper (mmablate.training.checkpoint.Resumable)."""
import pytest
import torch

from mmablate.training import checkpoint
from mmablate.training.schedule import make_scheduler

STEPS = 7


def _train(ckpt_dir, stop_after=None, every=2, pair=False, head_name="head"):
    """A toy loop written the way the studies' trainers are: noise from torch's global RNG."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    head = torch.nn.Linear(2, 1, bias=False)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=0.05)
    sched = make_scheduler(opt, 2, STEPS)
    # the head as a module, or as a (get, set) pair the way peft adapters are saved
    parts = {"model": model, "optimizer": opt, "scheduler": sched,
             head_name: (head.state_dict, head.load_state_dict) if pair else head}
    ckpt = checkpoint.Resumable(ckpt_dir, parts, every=every, total=STEPS, stop_after=stop_after)
    start, log_rows = ckpt.resume()
    for step in range(start, STEPS):
        x = torch.randn(8, 4)
        loss = head(model(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        log_rows.append({"step": step, "loss": loss.item()})
        if ckpt.step_done(step + 1, log_rows):
            return {"stopped_at": step + 1}
    return {"start": start, "model": model.state_dict(), "head": head.state_dict(), "log": log_rows}


@pytest.mark.parametrize("stop", [1, 3, 4])
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, stop):
    whole = _train(tmp_path / "a", pair=True)
    assert _train(tmp_path / "b", stop_after=stop, pair=True) == {"stopped_at": stop}
    resumed = _train(tmp_path / "b", pair=True)
    assert resumed["start"] == stop
    for name in ("model", "head"):
        for k, v in whole[name].items():
            assert torch.equal(v, resumed[name][k]), (name, k)
    assert [r["loss"] for r in resumed["log"]] == [r["loss"] for r in whole["log"]]


def test_saves_every_n_and_at_the_end_keeping_two(tmp_path):
    _train(tmp_path, every=3)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["step_0000006.pt", "step_0000007.pt"]  # 3, 6, 7 written; two kept


def test_checkpoint_of_another_trainer_is_refused(tmp_path):
    _train(tmp_path, stop_after=2, head_name="combine")
    with pytest.raises(ValueError, match=r"lacks \['head'\].*delete the folder"):
        _train(tmp_path)


def test_truncated_latest_falls_back_to_the_previous(tmp_path, capsys):
    _train(tmp_path, stop_after=4)  # writes steps 2 and 4
    latest = checkpoint.list_checkpoints(tmp_path)[-1]
    latest.write_bytes(latest.read_bytes()[:100])
    resumed = _train(tmp_path)
    assert resumed["start"] == 2
    assert "unreadable" in capsys.readouterr().err
    whole = _train(tmp_path / "fresh")
    for k, v in whole["model"].items():
        assert torch.equal(v, resumed["model"][k])


def test_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="ckpt_every"):
        checkpoint.Resumable(tmp_path, {}, every=0, total=3)


def test_checkpoints_hold_only_tensors_and_plain_data(tmp_path):
    _train(tmp_path, every=3)
    for p in checkpoint.list_checkpoints(tmp_path):
        state = torch.load(p, weights_only=True)  # what resume uses
        assert state["step"] in (6, 7) and isinstance(state["log"], list)
        assert state["rng"].dtype == torch.uint8


class _Payload:
    """Stands for anything pickled that is not a tensor or a plain container."""


def test_a_pickled_object_is_refused_naming_the_file(tmp_path):
    from mmablate.errors import CheckpointError

    _train(tmp_path, stop_after=2)
    bad = tmp_path / "step_0000004.pt"
    torch.save({"step": 4, "model": {}, "extra": _Payload()}, bad)
    with pytest.raises(CheckpointError, match=rf"{bad}: refused: .*pickled objects"):
        _train(tmp_path)
