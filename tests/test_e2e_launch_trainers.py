"""The ported diffusion trainers under `mmablate launch --nproc 2` (torchrun, gloo on the CPU):
2 processes train Diffusion-DPO and the world UNet's pretraining as 1 process does on the same
global batch (each rank takes its slice of every step's samples and of their noise and
timesteps; DDP averages the gradients)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from .conftest import REPO
from .test_pairrank_stages import sd_dir, sd_dpo_stage, world  # noqa: F401 (fixtures)


def _read(path):
    import pandas as pd

    return pd.read_csv(path)


@pytest.mark.slow
def test_two_process_diffusion_dpo_logs_the_losses_of_one(tmp_path, sd_dir, world):  # noqa: F811
    from mmablate.studies.pairrank.dpo import train_dpo

    cfg = sd_dpo_stage(tmp_path, sd_dir, world, steps=4)
    (tmp_path / "stage.json").write_text(json.dumps(cfg))
    one = tmp_path / "one"
    train_dpo(cfg, 0, one, progress=False)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "mmablate", "launch", "--nproc", "2", "--log-dir",
           str(tmp_path / "logs"), "--", "pairrank-dpo", "--config", str(tmp_path / "stage.json"),
           "--seed", "0", "--out", str(two / "lora/adapter.pt"), "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _read(one / "train_log.csv"), _read(two / "train_log.csv")
    assert a["step"].tolist() == b["step"].tolist() == list(range(4))
    assert a["lr"].tolist() == b["lr"].tolist()
    # Step 0 sees the same weights and the same global batch: equal up to rounding. Later steps
    # agree to 1e-3, not closer: Adam's first update is ±lr on every element with a nonzero
    # gradient, so an element whose gradient is rounding noise may move the other way, and
    # β = 5000 magnifies the change in the loss (in one process, k micro-batches reproduce the
    # gradient of one batch to 1e-4: test_pairrank_stages' accumulation test)
    assert abs(a["loss"][0] - b["loss"][0]) <= 1e-6 * abs(a["loss"][0])
    rel = ((a["loss"] - b["loss"]).abs() / a["loss"].abs()).max()
    assert rel <= 1e-3, rel
    assert a["loss"].nunique() > 1  # it trained (the first loss is log 2, the later ones move)
    s = json.loads((two / "summary.json").read_text())
    assert s["world_size"] == 2
    wa, wb = torch.load(one / "lora/adapter.pt"), torch.load(two / "lora/adapter.pt")
    for key in wa:
        err = float((wa[key] - wb[key]).norm() / wa[key].norm().clamp_min(1e-12))
        assert err < 1e-3, (key, err)


@pytest.mark.slow
def test_two_process_unet_pretraining_logs_the_losses_of_one(tmp_path, smoke_config, world):  # noqa: F811
    """Each rank takes its slice of the step's indices, CFG dropout, noise and timesteps (drawn
    for the whole batch on every rank from the same seeds): 2 ranks train as 1 process."""
    import copy

    from mmablate.models import clip as clipm
    from mmablate.pipeline import Pipeline
    from mmablate.studies.pairrank.diffusion import pretrain

    from .conftest import only_study

    P = Pipeline(only_study(copy.deepcopy(smoke_config), "pairrank"), ["smoke.yaml"],
                 results=str(tmp_path / "r"), write=False)
    cfg = copy.deepcopy(next(iter(P.stages["pairrank_base"].values())))
    d, _ = world
    model, _, _ = clipm.build(cfg["text_encoder"]["model"])
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    cfg["text_encoder"]["weights"] = str(tmp_path / "clip.pt")
    cfg["data"] = str(d / "pretrain.parquet")
    cfg["train"].update(steps=4, ckpt_every=2, batch_size=4, log_every=1)
    (tmp_path / "stage.json").write_text(json.dumps(cfg))
    pretrain(cfg, tmp_path / "one", progress=False)
    cmd = [sys.executable, "-m", "mmablate", "launch", "--nproc", "2", "--log-dir",
           str(tmp_path / "logs"), "--", "pairrank-pretrain", "--config", str(tmp_path / "stage.json"),
           "--out", str(tmp_path / "two/t2i.json"), "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _read(tmp_path / "one/train_log.csv"), _read(tmp_path / "two/train_log.csv")
    assert a["step"].tolist() == b["step"].tolist() == list(range(4))
    assert abs(a["loss"][0] - b["loss"][0]) <= 1e-6 * abs(a["loss"][0])
    rel = ((a["loss"] - b["loss"]).abs() / a["loss"].abs()).max()
    assert rel <= 1e-4, rel
    assert json.loads((tmp_path / "two/summary.json").read_text())["world_size"] == 2
