"""`mmablate launch`: 2 CPU processes (torchrun, gloo) train RankCLIP as 1 process does; a
SIGKILLed rank fails the job naming its log, and the rerun resumes to the uninterrupted weights;
`gpu.claim(count=N)`."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from mmablate import gpu
from mmablate.errors import MMAblateError

from .conftest import REPO

STEPS, BATCH = 20, 64


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    from mmablate.config import merge as _merge
    from mmablate.world.datasets import write_world

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    _merge(cfg, yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text()))
    root = tmp_path_factory.mktemp("launch")
    write_world(dict(cfg["world"], n_train=256, n_classify_per_class=1, shard_size=64),
                root / "world", progress=False)  # 4 shards: one per rank at least
    sc = cfg["studies"]["rankclip"]
    data = {k: v for k, v in sc["data"].items() if k != "source"}
    # the map-style path (cached shards): 2 ranks split each batch of 1 process exactly
    st = {"model": sc["model"], "loss": sc["loss"],
          "data": dict(data, root=str(root / "world"), cache=True, train_transform="eval"),
          "train": dict(sc["train"], steps=STEPS, batch_size=BATCH, ckpt_every=5, log_every=1)}
    (root / "stage.json").write_text(json.dumps(st))
    return st, root


def _launch(root, out, nproc=2, env=None, config="stage.json"):
    cmd = [sys.executable, "-m", "mmablate", "launch", "--nproc", str(nproc), "--log-dir",
           str(out / "logs"), "--", "rankclip-train", "--config", str(root / config),
           "--seed", "0", "--out", str(out / "model.pt"), "--threads", "1"]
    e = dict(os.environ, PYTHONPATH=str(REPO / "src"), **(env or {}))  # the ranks run this checkout
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=e)


def _log(path):
    import pandas as pd

    return pd.read_csv(path)


@pytest.fixture(scope="module")
def one_process(stage):
    from mmablate.studies.rankclip.train import train

    st, root = stage
    out = root / "one"
    train(copy.deepcopy(st), 0, st["data"]["root"], out / "model.pt", progress=False)
    return out


@pytest.fixture(scope="module")
def two_processes(stage):
    _, root = stage
    out = root / "two"
    r = _launch(root, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_log_the_losses_of_one(one_process, two_processes):
    a, b = _log(one_process / "train_log.csv"), _log(two_processes / "train_log.csv")
    assert a["step"].tolist() == b["step"].tolist() == list(range(STEPS))
    assert a["lr"].tolist() == b["lr"].tolist()
    for k in ("loss", "clip", "cross", "inmodal"):
        rel = ((a[k] - b[k]).abs() / a[k].abs()).max()
        assert rel <= 1e-4, (k, rel)
    # the first step sees the same weights and the same global batch: equal up to rounding
    assert abs(a["loss"][0] - b["loss"][0]) <= 1e-6 * abs(a["loss"][0])
    s = json.loads((two_processes / "train_summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == STEPS


@pytest.mark.slow
def test_killed_rank_fails_naming_its_log_and_the_rerun_resumes(stage, two_processes):
    _, root = stage
    out = root / "killed"
    r = _launch(root, out, env={"MMABLATE_TEST_SIGKILL": "1:7"})  # rank 1 dies after step 7
    assert r.returncode == 1
    line = next(l for l in r.stderr.splitlines() if l.startswith("launch: rank 1 "))
    assert "killed by signal SIGKILL" in line
    log = line.split("its log: ")[1]
    assert log.endswith("/attempt_0/1/stderr.log") and os.path.isfile(log)
    assert "failed at rank 1" in r.stderr
    assert not (out / "model.pt").exists()
    r = _launch(root, out)  # the rerun: resumes from the step-5 checkpoint
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] == 5
    a, b = torch.load(two_processes / "model.pt"), torch.load(out / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "train_log.csv").read_text() == (two_processes / "train_log.csv").read_text()


@pytest.mark.slow
def test_one_process_launch_runs_in_process(stage, one_process, tmp_path):
    from mmablate.cli import main

    _, root = stage
    rc = main(["launch", "--nproc", "1", "--", "rankclip-train", "--config",
               str(root / "stage.json"), "--seed", "0", "--out", str(tmp_path / "model.pt")])
    assert rc == 0
    a, b = torch.load(one_process / "model.pt"), torch.load(tmp_path / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_launch_needs_a_subcommand():
    from mmablate.launch import subcommand_argv

    class A:
        nproc, log_dir, argv = 2, None, ["--"]

    with pytest.raises(MMAblateError, match="no subcommand given"):
        subcommand_argv(A())
    A.argv = ["--", "launch", "--nproc", "2"]
    with pytest.raises(MMAblateError, match="cannot be `launch` itself"):
        subcommand_argv(A())
    A.argv = ["--", "rankclip-train", "--seed", "0"]
    assert subcommand_argv(A()) == ["rankclip-train", "--seed", "0"]


def test_claim_count_takes_n_slots(tmp_path, monkeypatch):
    monkeypatch.setenv("MMABLATE_GPUS", "0,1,2")
    monkeypatch.setenv("MMABLATE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("MMABLATE_GPU_ALLOCATE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    try:
        assert gpu.claim(count=2) == "0,1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        assert gpu.claim(count=1) == "2"  # the held slots are not handed out twice
        with pytest.raises(ValueError, match="4 GPUs asked for, but only 3 visible"):
            gpu.claim(count=4)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # a rank of `launch`: nothing to claim
        assert gpu.claim() is None
    finally:
        for d in ("0", "1", "2"):
            gpu.release(d)


@pytest.mark.slow
def test_two_processes_with_accumulation_log_the_losses_of_one(stage, one_process):
    """2 ranks × 2 micro-batches of 16 (global micro-batch 32, effective 64) = 1 process at 64."""
    st, root = stage
    st = dict(st, train=dict(st["train"], batch_size=32, effective_batch=64))
    (root / "stage_accum.json").write_text(json.dumps(st))
    out = root / "accum"
    cmd = [sys.executable, "-m", "mmablate", "launch", "--nproc", "2", "--", "rankclip-train",
           "--config", str(root / "stage_accum.json"), "--seed", "0", "--out",
           str(out / "model.pt")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _log(one_process / "train_log.csv"), _log(out / "train_log.csv")
    for k in ("loss", "clip", "cross", "inmodal"):
        rel = ((a[k] - b[k]).abs() / a[k].abs()).max()
        assert rel <= 1e-4, (k, rel)
    assert json.loads((out / "train_summary.json").read_text())["accum"] == 2


def test_standard_step_two_ranks_with_accumulation_equal_one_process(tmp_path):
    """The harness's per-micro-batch path (accelerate accumulate + DDP) on a toy regression:
    2 ranks × 2 micro-batches of 4 train as one process on batches of 16."""
    from .harness_toy import run

    run(tmp_path / "one", 16, 16)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           str(REPO / "tests/harness_toy.py"), str(tmp_path / "two"), "8", "16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(tmp_path / "one/model.pt"), torch.load(tmp_path / "two/model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    la, lb = _log(tmp_path / "one/train_log.csv"), _log(tmp_path / "two/train_log.csv")
    assert la["loss"].tolist() == pytest.approx(lb["loss"].tolist(), rel=1e-5)


@pytest.mark.slow
def test_two_processes_stream_the_shards(stage):
    """The paper path under torchrun: each rank streams its own shards (wds.split_by_node) with
    open_clip's training transform and a DataLoader worker; features are gathered over ranks."""
    st, root = stage
    st = copy.deepcopy(st)
    st["data"].update(cache=False, train_transform="open_clip_train", shuffle_buffer=16)
    st["train"].update(steps=4, num_workers=1, ckpt_every=2)
    (root / "stream.json").write_text(json.dumps(st))
    r = _launch(root, root / "stream", config="stream.json")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((root / "stream/train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["num_samples"] == 256


@pytest.mark.slow  # a 2-rank training job through a fork server
def test_ranks_fork_from_the_fork_server(stage, two_processes, tmp_path):
    """`launch` run by a fork-server worker (a local snakemake run) forks its ranks from the same
    server (no import per rank): the weights are the fresh ranks' bit for bit."""
    import signal
    import time

    _, root = stage
    sock = tmp_path / "fs" / "sock"
    sock.parent.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("MMABLATE_FORKSERVER", None)
    server = subprocess.Popen([sys.executable, "-m", "mmablate.forkserver", str(sock),
                               "--preload", "numpy,torch,open_clip"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while not sock.exists() and time.time() - t0 < 300:
            time.sleep(0.2)
        r = _launch(root, tmp_path / "served", env={"MMABLATE_FORKSERVER": str(sock)})
        assert r.returncode == 0, r.stderr[-3000:]
        assert "launch: the ranks fork from the run's fork server" in r.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        log, _ = server.communicate(timeout=60)
    ranks = [ln for ln in log.splitlines() if ln.startswith("worker ") and ": rankclip-train" in ln]
    assert len(ranks) == 2, log[-2000:]
    assert (tmp_path / "served/model.pt").read_bytes() == (two_processes / "model.pt").read_bytes()
