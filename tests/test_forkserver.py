"""The fork server of local runs (mmablate.forkserver): a job run through it is the job run as a
fresh `python -m mmablate` process — same outputs bit for bit, exit status, streams, working
directory, environment — and a client's signals and death reach its worker."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from mmablate import forkserver

from .conftest import REPO

SRC = str(REPO / "src")


def _env(sock=None, **extra):
    env = dict(os.environ, PYTHONPATH=SRC, **extra)
    env.pop(forkserver.ENV, None)
    if sock:
        env[forkserver.ENV] = str(sock)
    return env


def _run(args, sock=None, cwd=REPO, timeout=300, **extra):
    return subprocess.run([sys.executable, "-m", "mmablate", *args], cwd=cwd, env=_env(sock, **extra),
                          capture_output=True, text=True, timeout=timeout)


def _wait_for(cond, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("fs")
    sock = d / "sock"
    proc = subprocess.Popen([sys.executable, "-m", "mmablate.forkserver", str(sock),
                             "--preload", "numpy,torch"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert _wait_for(sock.exists), "the fork server did not start listening"
    yield sock, proc
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert not sock.exists()


def _workers(server_pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server_pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def test_exit_status_streams_and_cwd(server, tmp_path):
    sock, _ = server
    ok = _run(["check-config", "config/config.yaml"], sock)
    direct = _run(["check-config", "config/config.yaml"])
    assert ok.returncode == 0 and ok.stdout == direct.stdout and "ablations" in ok.stdout
    bad = _run(["check-config", "missing.yaml"], sock, cwd=tmp_path)  # relative to the job's cwd
    assert bad.returncode == 2 and "missing.yaml: config file not found" in bad.stderr
    assert bad.stdout == ""
    usage = _run(["no-such-command"], sock)  # argparse's SystemExit(2) and its message
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_concurrent_jobs(server, tmp_path):
    """Jobs overlap in a run (a worker is forked while others still run)."""
    sock, _ = server
    long_client, worker = _long_job(server)
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "mmablate", "check-config",
                                   f"missing{i}.yaml"], cwd=REPO, env=_env(sock),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(3)]
        for i, p in enumerate(procs):
            _, err = p.communicate(timeout=120)
            assert p.returncode == 2 and f"missing{i}.yaml: config file not found" in err
    finally:
        long_client.terminate()
        long_client.wait(60)


def test_the_job_environment_reaches_the_worker(server, tmp_path):
    sock, _ = server
    r = _run(["gpu-status"], sock, MMABLATE_GPU_LOCK_DIR=str(tmp_path / "locks"))
    assert r.returncode == 0 and f"locks in {tmp_path / 'locks'}" in r.stdout


def test_a_training_job_gives_the_same_bytes_as_a_fresh_process(server, tmp_path):
    """A real model command (world data, RankCLIP training with checkpoints) run both ways."""
    import yaml

    from mmablate.config import merge
    from mmablate.world.datasets import write_world

    sock, _ = server
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    merge(cfg, yaml.safe_load((REPO / "config/scales/smoke.yaml").read_text()))
    world = tmp_path / "world"
    write_world(dict(cfg["world"], n_train=64, n_classify_per_class=1, shard_size=16), world,
                progress=False)
    sc = cfg["studies"]["rankclip"]
    data = {k: v for k, v in sc["data"].items() if k != "source"}
    stage = {"model": sc["model"], "loss": sc["loss"],  # the tiny default's data path
             "data": dict(data, root=str(world), cache=True, train_transform="eval"),
             "train": dict(sc["train"], steps=4, ckpt_every=2, batch_size=16)}
    (tmp_path / "stage.json").write_text(json.dumps(stage))
    outs = {}
    for how, s in (("fresh", None), ("forked", sock)):
        out = tmp_path / how / "model.pt"
        r = _run(["rankclip-train", "--config", str(tmp_path / "stage.json"), "--seed", "0",
                  "--out", str(out), "--threads", "1"], s)
        assert r.returncode == 0, r.stderr
        outs[how] = out
    a, b = torch.load(outs["fresh"]), torch.load(outs["forked"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [(outs[h].parent / "train_log.csv").read_text() for h in outs]
    assert log[0] == log[1]


def _long_job(server):
    """A client running a long job through the server, and its worker's pid."""
    sock, proc = server
    before = set(_workers(proc.pid))
    client = subprocess.Popen([sys.executable, "-m", "mmablate", "bench", "--size", "smoke",
                               "--cases", "rankclip", "--steps", "100000"], cwd=REPO,
                              env=_env(sock), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: set(_workers(proc.pid)) - before)
    (worker,) = set(_workers(proc.pid)) - before
    return client, worker


def test_sigterm_to_the_client_stops_its_worker(server):
    client, worker = _long_job(server)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == 128 + signal.SIGTERM  # as a shell reports a killed job
    assert _wait_for(lambda: worker not in _workers(server[1].pid), 30)


def test_a_killed_client_takes_its_worker_down(server):
    client, worker = _long_job(server)
    client.kill()
    client.wait(timeout=30)
    assert _wait_for(lambda: worker not in _workers(server[1].pid), 30)


def test_no_server_or_another_interpreter_runs_in_process(tmp_path, monkeypatch):
    r = _run(["check-config", "missing.yaml"], tmp_path / "no-such-socket")
    assert r.returncode == 2 and "config file not found" in r.stderr

    sock = tmp_path / "other.sock"
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(str(sock))
    ls.listen(1)

    def other_server():  # a server of another environment answers with its identity
        conn, _ = ls.accept()
        forkserver._send(conn, {"identity": dict(forkserver._identity(), prefix="/elsewhere")})
        conn.close()

    t = threading.Thread(target=other_server)
    t.start()
    monkeypatch.setenv(forkserver.ENV, str(sock))
    assert forkserver.run_client(["check-config", "x.yaml"]) is None
    t.join(10)
    ls.close()


def _fake_server(sock, rc):
    """A server of this environment that answers every request with exit status `rc`."""
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(str(sock))
    ls.listen(1)

    def serve():
        conn, _ = ls.accept()
        forkserver._send(conn, {"identity": forkserver._identity()})
        _msg, fds, _f, _a = socket.recv_fds(conn, 1, 3)
        for fd in fds:
            os.close(fd)
        forkserver._recv(conn)
        forkserver._send(conn, {"pid": os.getpid()})
        forkserver._send(conn, {"rc": rc})
        conn.close()
        ls.close()

    t = threading.Thread(target=serve)
    t.start()
    return t


@pytest.mark.parametrize("rc, rerun", [(128 + signal.SIGSEGV, True), (128 + signal.SIGABRT, True),
                                       (128 + signal.SIGTERM, False), (1, False), (0, False)])
def test_a_crashed_worker_is_rerun_in_process(tmp_path, monkeypatch, capsys, rc, rerun):
    t = _fake_server(tmp_path / "s.sock", rc)
    monkeypatch.setenv(forkserver.ENV, str(tmp_path / "s.sock"))
    got = forkserver.run_client(["check-config", "x.yaml"])
    t.join(10)
    assert got == (None if rerun else rc)
    assert ("rerunning the command in a fresh process" in capsys.readouterr().err) == rerun


class _Plugin:
    def __init__(self, name):
        self.name = name


class _Workflow:
    def __init__(self, executor="local", methods=()):
        self.executor_plugin = _Plugin(executor)
        self.deployment_settings = type("D", (), {"deployment_method": set(methods)})()


@pytest.mark.parametrize("wf, cfg, expect", [
    (_Workflow(), {}, None),
    (_Workflow(), {"forkserver": True}, None),
    (_Workflow(), {"forkserver": False}, "off by config"),
    (_Workflow(), {"forkserver": "false"}, "off by config"),  # --config forkserver=false
    (_Workflow("slurm"), {}, "executor slurm"),
    (_Workflow(methods=["CONDA"]), {}, "software deployment"),
])
def test_which_runs_get_a_server(wf, cfg, expect):
    why = forkserver.enabled(wf, cfg)
    assert why == expect if expect is None else expect in why


def test_a_client_waits_for_a_server_still_importing(tmp_path):
    """Jobs started in the server's first seconds wait for it instead of importing themselves;
    a server that dies while importing lets them run in-process."""
    d = tmp_path / "fs"
    d.mkdir()
    sock = d / "sock"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    (d / "pid").write_text(str(proc.pid))
    r = _run(["check-config", "missing.yaml"], sock)  # the 'server' exits without listening
    assert r.returncode == 2 and "config file not found" in r.stderr
    proc.wait()
    path = forkserver.start(str(REPO), os.getpid(), str(tmp_path / "fs.log"), ["numpy", "torch"])
    try:
        r = _run(["check-config", "missing.yaml"], path)  # at once, while it imports torch
        assert r.returncode == 2 and "config file not found" in r.stderr
    finally:
        forkserver.stop(path)
    assert _wait_for(lambda: not os.path.exists(path), 30)
    # it was served, not run beside the import
    assert "check-config missing.yaml" in (tmp_path / "fs.log").read_text()


def test_a_server_whose_imports_touched_cuda_does_not_serve(tmp_path, monkeypatch):
    monkeypatch.setattr(forkserver, "preload", lambda modules: [])
    monkeypatch.setattr(forkserver, "cuda_driver_loaded", lambda: True)
    forkserver.serve(str(tmp_path / "sock"))  # returns at once, never listening
    assert not (tmp_path / "sock").exists()
    monkeypatch.undo()  # the real check reads /proc/self/maps: this test process never used CUDA
    assert forkserver.cuda_driver_loaded() is False
