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
    """... and the rerun is reported: a line in the job's log (its stderr), an entry in the run's
    record, and the run's end summary lists it with its signal."""
    t = _fake_server(tmp_path / "s.sock", rc)
    monkeypatch.setenv(forkserver.ENV, str(tmp_path / "s.sock"))
    monkeypatch.setenv(forkserver.JOBS_ENV, str(tmp_path / "jobs.jsonl"))
    got = forkserver.run_client(["check-config", "x.yaml"])
    t.join(10)
    assert got == (None if rerun else rc)
    assert ("rerunning the command in a fresh process" in capsys.readouterr().err) == rerun
    (entry,) = forkserver.read_record(str(tmp_path / "jobs.jsonl"))
    assert entry["rc"] == rc and entry["argv"] == ["check-config", "x.yaml"]
    text = forkserver.summary([entry])
    if rerun:
        name = signal.Signals(rc - 128).name
        assert entry["rerun"] == name
        assert f"{name}  worker {os.getpid()}  check-config x.yaml" in text
    else:
        assert "rerun" not in entry and text is None


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


# ---- one thread at fork, reruns reported, benchmark files measuring the job --------------------
def _script_server(tmp_path, prelude):
    """A fork server (preloading numpy) whose process first runs `prelude`; (socket, process)."""
    d = tmp_path / "fs"
    d.mkdir()
    sock = d / "sock"
    code = (f"{prelude}\nfrom mmablate.forkserver import _main\n"
            f"_main([{str(sock)!r}, '--preload', 'numpy'])")
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert _wait_for(sock.exists), "the fork server did not start listening"
    return sock, proc


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


def test_the_preloaded_libraries_leave_one_thread(server):
    """The server's imports (numpy, torch here; pyarrow's jemalloc thread is off by SERVER_ENV)
    leave the server with its main thread only: its workers are forked."""
    _sock, proc = server
    assert len(os.listdir(f"/proc/{proc.pid}/task")) == 1


def test_fork_refusal_names_the_other_threads():
    release = threading.Event()
    t = threading.Thread(target=release.wait, name="some-library-pool")
    t.start()
    try:
        why = forkserver.fork_refusal()
    finally:
        release.set()
        t.join()
    assert why is not None and "some-library-pool" in why and "threads" in why


def test_a_server_with_an_extra_thread_refuses_to_fork_and_the_job_still_runs(tmp_path):
    sock, proc = _script_server(
        tmp_path, "import threading, time\n"
                  "threading.Thread(target=time.sleep, args=(3600,), daemon=True,"
                  " name='stray-pool').start()")
    record = tmp_path / "jobs.jsonl"
    try:
        r = _run(["check-config", "missing.yaml"], sock, cwd=tmp_path,
                 **{forkserver.JOBS_ENV: str(record)})
    finally:
        log = _stop(proc)
    assert r.returncode == 2 and "missing.yaml: config file not found" in r.stderr  # it ran
    assert "not forking (the fork server runs 2 threads" in r.stderr and "stray-pool" in r.stderr
    assert "not forking for check-config missing.yaml" in log
    (entry,) = forkserver.read_record(str(record))
    assert "stray-pool" in entry["refused"] and entry["argv"] == ["check-config", "missing.yaml"]
    assert "ran in a fresh process because the server would not fork" in forkserver.summary([entry])


def test_a_worker_ends_as_an_interpreter_ends(tmp_path):
    """atexit handlers run in the worker (here one the server registered before its imports, as a
    fresh process that imported the same libraries would have it), with the job's environment."""
    sock, proc = _script_server(
        tmp_path, "import atexit, os\n"
                  "atexit.register(lambda: os.environ.get('FS_ATEXIT') and "
                  "open(os.environ['FS_ATEXIT'], 'a').write(f'{os.getpid()}\\n'))")
    marks = tmp_path / "atexit.txt"
    try:
        r = _run(["check-config", "config/config.yaml"], sock, FS_ATEXIT=str(marks))
    finally:
        _stop(proc)
    assert r.returncode == 0 and "ablations" in r.stdout
    pids = marks.read_text().split()
    assert len(pids) == 1 and int(pids[0]) not in (proc.pid, os.getpid())  # the worker's


def test_a_served_job_records_its_workers_usage_for_its_benchmark_file(server, tmp_path):
    from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

    sock, _ = server
    record, log = tmp_path / "jobs.jsonl", tmp_path / "job.log"
    with open(log, "w") as f:  # as a rule runs it: `python -m mmablate ... > {log} 2>&1`
        rc = subprocess.run([sys.executable, "-m", "mmablate", "check-config",
                             "config/config.yaml"], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            env=_env(sock, **{forkserver.JOBS_ENV: str(record)})).returncode
    assert rc == 0
    (e,) = forkserver.read_record(str(record))
    assert e["job"] == os.path.realpath(log) and e["rc"] == 0 and not e["rank"]
    # the worker is a forked copy of a server that imported torch: its peak RSS is torch's
    assert e["cpu_s"] > 0 and e["max_rss_mb"] > 100 and e["wall_s"] > 0

    def bench(name, mtime=None):  # what snakemake wrote: the thin client's figures
        rec = BenchmarkRecord(running_time=e["wall_s"] + 0.2, max_rss=25.0, max_vms=300.0,
                              max_uss=20.0, max_pss=21.0, io_in=0.1, io_out=0.0, cpu_time=0.05)
        rec.data_collected = True
        path = tmp_path / name
        write_benchmark_records([rec], str(path), False)
        if mtime:
            os.utime(path, (mtime, mtime))
        return str(path)

    fresh, stale = bench("fresh.tsv"), bench("stale.tsv", mtime=e["t"] - 3600)
    other = bench("other.tsv")
    before = {p: open(p).read() for p in (stale, other)}
    jobs = [([str(log)], fresh), ([str(log)], stale), ([str(tmp_path / "other.log")], other)]
    assert forkserver.rewrite_benchmarks(forkserver.read_record(str(record)), jobs) == 1
    header, row = [line.split("\t") for line in open(fresh).read().splitlines()]
    got = dict(zip(header, row))
    assert float(got["cpu_time"]) == pytest.approx(0.05 + e["cpu_s"], abs=0.01)
    assert float(got["max_rss"]) == pytest.approx(e["max_rss_mb"], abs=0.01)
    assert float(got["s"]) == pytest.approx(e["wall_s"] + 0.2, abs=0.01)  # the job's wall time
    assert got["max_vms"] == got["io_in"] == "NA"
    assert {p: open(p).read() for p in (stale, other)} == before  # not this run's / not served


def test_a_launch_jobs_ranks_count_towards_its_benchmark(tmp_path):
    bench = tmp_path / "b.tsv"
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\t"
                     "cpu_time\n10.0\t0:00:10\t30\t400\t20\t22\t0\t0\t1.0\tNA\n")
    t = os.path.getmtime(bench)
    rank = {"job": str(tmp_path / "j.log"), "rank": True, "rc": 0, "cpu_s": 6.0,
            "max_rss_mb": 500.0}
    entries = [dict(rank, t=t - 2), dict(rank, t=t - 2, cpu_s=5.0),
               {"job": str(tmp_path / "j.log"), "rank": False, "rc": 0, "cpu_s": 1.0,
                "max_rss_mb": 300.0, "t": t - 1}]
    assert forkserver.rewrite_benchmarks(entries, [([str(tmp_path / "j.log")], str(bench))]) == 1
    got = dict(zip(*[line.split("\t") for line in bench.read_text().splitlines()]))
    assert (got["cpu_time"], got["max_rss"], got["mean_load"]) == ("12.00", "1300.00", "120.00")
    failed = [dict(entries[-1], rc=1)]  # a failed job's file is not this run's: left alone
    before = bench.read_text()
    assert forkserver.rewrite_benchmarks(failed, [([str(tmp_path / "j.log")], str(bench))]) == 0
    assert bench.read_text() == before


class _Job:
    def __init__(self, log, benchmark):
        self.log, self.benchmark = [log], benchmark


def test_the_runs_end_lists_the_reruns_and_rewrites_the_benchmarks(tmp_path, monkeypatch, capsys):
    """workflow/rules/hooks.smk's onsuccess/onerror: `workflow_stop(workflow)`."""
    log, bench = tmp_path / "logs/a.log", tmp_path / "bench/a.tsv"
    for p in (log, bench):
        p.parent.mkdir()
    log.write_text("")
    bench.write_text("s\tmax_rss\tcpu_time\n4.0\t20\t0.1\n")
    record = tmp_path / "jobs.jsonl"
    t = os.path.getmtime(bench) - 0.5
    lines = [{"job": str(log), "rank": False, "argv": ["mmalign-dpo", "--seed", "0"], "worker": 7,
              "rc": 0, "cpu_s": 3.0, "max_rss_mb": 900.0, "t": t},
             {"job": str(tmp_path / "logs/b.log"), "rank": False, "argv": ["pcclip-train"],
              "worker": 8, "rc": 139, "rerun": "SIGSEGV", "t": t}]
    record.write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"cut short')
    monkeypatch.setenv(forkserver.JOBS_ENV, str(record))
    monkeypatch.delenv(forkserver.ENV, raising=False)
    wf = type("W", (), {"dag": type("D", (), {"jobs": [_Job(str(log), str(bench)),
                                                       _Job(str(tmp_path / "c.log"), None)]})()})()
    forkserver.workflow_stop(wf)
    err = capsys.readouterr().err
    assert "1 job(s) rerun in a fresh process" in err
    assert "SIGSEGV  worker 8  pcclip-train  (log " + str(tmp_path / "logs/b.log") in err
    assert "1 benchmark files carry" in err
    assert bench.read_text() == "s\tmax_rss\tcpu_time\n4.0\t900.00\t3.10\n"
    assert forkserver.JOBS_ENV not in os.environ


def test_a_worker_sizes_openblas_from_the_jobs_environment():
    """The server loads OpenBLAS with one thread (SERVER_ENV); a worker resizes it as a fresh
    process with the job's environment would size it."""
    pytest.importorskip("threadpoolctl")
    code = ("import json, os, sys, numpy, threadpoolctl\n"
            "from mmablate import forkserver\n"
            "got = [forkserver._blas_threads(json.loads(a)) for a in sys.argv[1:]]\n"
            "print(json.dumps([got, threadpoolctl.threadpool_info()[0]['num_threads']]))")
    cpus = len(os.sched_getaffinity(0))
    envs = [{"OMP_NUM_THREADS": "1"}, {}, {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "64"},
            {"OMP_NUM_THREADS": "64"}]
    r = subprocess.run([sys.executable, "-c", code, *map(json.dumps, envs)], capture_output=True,
                       text=True, env=dict(_env(), **forkserver.SERVER_ENV), timeout=120)
    assert r.returncode == 0, r.stderr
    got, last = json.loads(r.stdout)
    assert got == [1, cpus, 1, cpus] and last == cpus
