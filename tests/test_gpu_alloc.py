"""The GPU slot allocator (mmablate.gpu), tested without a GPU: fake device lists, real locks."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from mmablate import gpu

HOLD = """
import os, sys, time
from mmablate.gpu import claim
d = claim(timeout=float(sys.argv[2]))
open(sys.argv[1], "w").write(f"{d} {os.environ['CUDA_VISIBLE_DEVICES']}")
while not os.path.exists(sys.argv[1] + ".release"):
    time.sleep(0.05)
"""


def _env(tmp_path, devices="0,1,2,3"):
    env = dict(os.environ, MMABLATE_GPUS=devices, MMABLATE_GPU_LOCK_DIR=str(tmp_path / "locks"))
    env.pop("SLURM_JOB_ID", None)
    env["PYTHONPATH"] = str(Path(gpu.__file__).resolve().parents[1])
    return env


def _start(tmp_path, name, timeout=30.0, devices="0,1,2,3"):
    out = tmp_path / name
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(timeout)],
                         env=_env(tmp_path, devices), stderr=subprocess.PIPE, text=True)
    return p, out


def _wait(path, proc, limit=30):
    t0 = time.time()
    while not path.exists() or not path.read_text():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < limit, f"{path} not written"
        time.sleep(0.05)
    return path.read_text().split()


def test_concurrent_processes_get_distinct_devices(tmp_path):
    procs = [_start(tmp_path, f"p{i}") for i in range(4)]
    got = [_wait(out, p) for p, out in procs]
    assert sorted(d for d, _ in got) == ["0", "1", "2", "3"]
    assert all(d == cvd for d, cvd in got)  # each process sees only its own device
    # a fifth process finds every slot held and gives up after its timeout
    p5, out5 = _start(tmp_path, "p5", timeout=0.5)
    assert p5.wait(30) != 0 and "all GPUs" in p5.stderr.read()
    for p, out in procs:
        Path(str(out) + ".release").touch()
        assert p.wait(30) == 0


def test_crashed_holder_slot_is_reclaimed(tmp_path):
    p0, out0 = _start(tmp_path, "a", devices="0,1")
    p1, out1 = _start(tmp_path, "b", devices="0,1")
    d0, d1 = _wait(out0, p0)[0], _wait(out1, p1)[0]
    assert {d0, d1} == {"0", "1"}
    os.kill(p0.pid, signal.SIGKILL)  # the holder of d0 crashes without releasing anything
    p0.wait(30)
    p2, out2 = _start(tmp_path, "c", timeout=10, devices="0,1")
    assert _wait(out2, p2)[0] == d0
    for out, p in ((out1, p1), (out2, p2)):
        Path(str(out) + ".release").touch()
        assert p.wait(30) == 0


def test_waits_for_a_slot_to_free(tmp_path):
    p0, out0 = _start(tmp_path, "a", devices="7")
    assert _wait(out0, p0)[0] == "7"
    p1, out1 = _start(tmp_path, "b", timeout=60, devices="7")
    time.sleep(1.0)
    assert not out1.exists() and p1.poll() is None  # blocked while "7" is held
    Path(str(out0) + ".release").touch()
    assert p0.wait(30) == 0
    assert _wait(out1, p1)[0] == "7"
    Path(str(out1) + ".release").touch()
    assert p1.wait(30) == 0


def test_no_op_without_gpus_or_under_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("MMABLATE_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("MMABLATE_GPUS", "")
    assert gpu.claim() is None  # no devices: the CPU path
    monkeypatch.delenv("MMABLATE_GPUS")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu.claim() is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("MMABLATE_GPU_ALLOCATE", "0")
    assert gpu.claim() is None


def test_visible_devices_respects_cuda_visible_devices():
    assert gpu.visible_devices({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert gpu.visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu.visible_devices({"MMABLATE_GPUS": "1", "CUDA_VISIBLE_DEVICES": "2,5"}) == ["1"]


def test_gpu_commands_claim_a_device(monkeypatch):
    """GPU stages are marked (gpu=True) so that cli.main claims a slot before running them."""
    from mmablate import cli

    called = []
    monkeypatch.setattr(gpu, "claim", lambda timeout=None: called.append(1))
    assert cli.main(["gpu-status"]) == 0 and not called  # not a GPU stage
    a = cli.parser().parse_args(["rankclip-train", "--config", "x", "--seed", "0", "--out", "y"])
    assert a.gpu is True
    a = cli.parser().parse_args(["table", "--ablation", "a", "--metrics", "m", "--md", "1",
                                 "--tex", "2", "--csv", "3"])
    assert not getattr(a, "gpu", False)
