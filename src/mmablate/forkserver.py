"""A fork server for the local executor: the heavy libraries are imported once, each job forks.

Every model job of the workflow is a fresh ``python -m mmablate <command>`` process, and on the
tiny scale most of a job's CPU time is interpreter start and imports (torch, torchvision,
open_clip, transformers, diffusers, peft, accelerate: 4–10 s of CPU per job, ~200 jobs;
benchmarks/README.md). With ``snakemake`` on one machine the workflow starts one server
(``onstart``, workflow/rules/forkserver.smk) that imports those libraries once and listens on a
Unix socket; ``python -m mmablate`` sees ``MMABLATE_FORKSERVER`` in its environment and, instead of
importing anything, hands its arguments, working directory, environment and its stdin/stdout/
stderr file descriptors to the server, which forks a worker that runs the command exactly as
``python -m mmablate`` would (`mmablate.cli.main`), writing to the job's own log. The client
waits for the worker's exit status and exits with it; SIGTERM/SIGINT/SIGHUP to the client are
forwarded to the worker's process group, and a worker whose client dies (SIGKILL) kills itself.

What a worker shares with a fresh process and what it does not:

* The third-party libraries are the server's imports; mmablate's own modules are dropped from
  ``sys.modules`` in every worker and imported afresh, so an edit of ``src/mmablate`` during a run
  reaches the next job as it would without the server.
* The environment, working directory, ``sys.argv``, standard streams (re-created as a fresh
  interpreter creates them) and signal handlers are the job's; Python's, NumPy's and torch's
  global random generators are reset to a fresh interpreter's state (torch to its default seed,
  the others from the OS). Jobs seed their own generators anyway; the tiny tables are identical
  with and without the server (benchmarks/README.md).
* Settings a library reads from the environment *when it is imported* are the server's:
  notably ``OMP_NUM_THREADS``. Every model command sets torch's threads itself (``--threads``).
* The server never runs a torch operation, so no OpenMP thread pool exists at fork; each worker
  starts its own. Nor does it touch CUDA (which does not survive a fork): it checks that the
  driver library is not loaded before serving, and each worker initialises CUDA for its own
  claimed device.
* Snakemake's ``benchmark:`` files measure the job's process tree: with the server, their CPU time
  and memory columns are the client's (the wall time is the job's). Measure memory with the
  server off (``--config forkserver=false``).

The client falls back to running the command in-process when the socket is missing or the
server answers for another interpreter or another source tree, so a job never depends on it; and
it reruns the command in-process when the worker crashed (SIGSEGV, SIGBUS, SIGILL, SIGFPE,
SIGABRT not forwarded by the client; `faulthandler` prints the worker's Python stack to the job's
log first). Seen once in a tiny run (an ``mmalign-dpo`` worker, SIGSEGV 1.8 s into the job, before
the stack was recorded), not reproduced.
Not used under SLURM or any non-local executor, nor with ``--sdm conda`` (the jobs' Python
differs from the server's). The ranks of an ``mmablate launch`` job run through the server too:
torchrun starts each rank's ``python -m mmablate`` as always, and that process is a client whose
worker (environment: the rank's ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``…) trains as a fresh rank
would (the same weights, bit for bit: tests/test_launch.py); a 2-rank training job then costs
no import (measured on a rehearsal RankCLIP job: 10 s of CPU instead of 39 s, the rank imports
being ~14 s each).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

ENV = "MMABLATE_FORKSERVER"
# the server a worker came from: `mmablate launch` run by a worker forks its ranks from it too
LAUNCH_ENV = "MMABLATE_FORKSERVER_LAUNCH"
# imported once by the server; any that is not installed is skipped
PRELOAD = (
    "numpy", "PIL.Image", "torch", "torch.nn.functional", "torchvision", "open_clip",
    "transformers", "accelerate", "peft", "diffusers", "trl", "pandas", "pyarrow",
    "matplotlib", "matplotlib.pyplot", "tqdm", "yaml", "jsonschema",
)
# names the lazy packages resolve only on first use (their real import is the expensive part)
PRELOAD_ATTRS = {
    "transformers": ("PreTrainedModel", "CLIPModel", "LlavaForConditionalGeneration",
                     "AutoTokenizer", "T5ForConditionalGeneration", "GPT2LMHeadModel",
                     "BertForMaskedLM", "Trainer"),
    "diffusers": ("UNet2DConditionModel", "AutoencoderKL", "DDPMScheduler", "DDIMScheduler"),
    "trl": ("DPOTrainer", "DPOConfig", "SFTTrainer"),
    "peft": ("LoraConfig", "get_peft_model"),
}
_HDR = struct.Struct("!I")
# a worker killed by one of these (and not by a signal its client forwarded) is rerun in-process
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


def _identity() -> dict:
    """What a server must share with a client for a worker to be the job's own process."""
    return {"executable": os.path.realpath(sys.executable), "prefix": os.path.realpath(sys.prefix),
            "src": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}


def _send(sock, obj) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(_HDR.pack(len(data)) + data)


def _recv_exact(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return buf


def _recv(sock):
    (n,) = _HDR.unpack(_recv_exact(sock, _HDR.size))
    return json.loads(_recv_exact(sock, n))


# ---- client -------------------------------------------------------------------------------------
def run_client(argv) -> int | None:
    """Run ``python -m mmablate <argv>`` through the server named by $MMABLATE_FORKSERVER; the
    exit status, or None when no compatible server answers (then run it in-process)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    if not _wait_until_listening(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        hello = _recv(sock)
        if hello.get("identity") != _identity():
            sock.close()
            return None
        socket.send_fds(sock, [b"R"], [0, 1, 2])
        env = dict(os.environ)
        env.pop(ENV, None)  # a worker's own `python -m mmablate` subprocesses run in-process
        env[LAUNCH_ENV] = path  # ... except the ranks of `mmablate launch` (mmablate.launch)
        _send(sock, {"argv": list(argv), "cwd": os.getcwd(), "env": env})
        pid = _recv(sock)["pid"]
    except (OSError, ConnectionError, ValueError, KeyError):
        sock.close()
        return None

    forwarded = []

    def forward(signum, _frame):
        forwarded.append(signum)
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    while True:
        try:
            rc = int(_recv(sock)["rc"])
        except InterruptedError:
            continue
        except (ConnectionError, OSError, ValueError, KeyError):
            print("error: mmablate fork server: lost the worker's exit status", file=sys.stderr)
            return 1
        break
    sig = rc - 128
    if sig in CRASH_SIGNALS and not forwarded:
        # a crash of the forked worker (once in ~200 jobs of a tiny run: SIGSEGV early in a job):
        # the job is rerun as the fresh process it would have been without the server
        print(f"mmablate fork server: worker {pid} died of {signal.Signals(sig).name} (its Python "
              f"stack, if any, is above); rerunning the command in a fresh process",
              file=sys.stderr, flush=True)
        return None
    return rc


def _wait_until_listening(path: str, timeout: float = 600.0) -> bool:
    """Whether the server at `path` listens; while its process is still importing (its `pid`
    file exists, the socket not yet), wait for it rather than import everything a second time."""
    pidfile = os.path.join(os.path.dirname(path), "pid")
    t0 = time.time()
    while not os.path.exists(path):
        try:
            with open(pidfile) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            return False
        if not _alive(pid) or time.time() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


# ---- server -------------------------------------------------------------------------------------
def preload(modules=PRELOAD, attrs=PRELOAD_ATTRS) -> list:
    """Import the heavy libraries (never running a tensor operation); the names imported."""
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    done = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception:  # not installed or broken here: a worker imports it itself (and fails)
            continue
        for attr in attrs.get(name, ()):
            try:
                getattr(mod, attr)
            except Exception:
                pass
        done.append(name)
    return done


def cuda_driver_loaded() -> bool:
    """Whether this process has loaded the CUDA driver library (after which a fork's CUDA fails)."""
    try:
        with open("/proc/self/maps") as f:
            return any("libcuda.so" in line for line in f)
    except OSError:
        return False


def serve(path: str, watch_pid: int | None = None, modules=PRELOAD) -> None:
    """Listen on `path` until SIGTERM or until process `watch_pid` (the snakemake run) is gone."""
    import select

    # CUDA does not survive fork: the server must never initialise it. torch.cuda.is_available()
    # then asks NVML instead of the CUDA runtime; a library that still loaded the driver makes
    # the server refuse to serve (its clients run their jobs in-process).
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    preload(modules)
    if cuda_driver_loaded():
        print("mmablate fork server: a preloaded library initialised CUDA (libcuda is loaded); "
              "not serving: jobs run in-process", file=sys.stderr, flush=True)
        return
    if os.path.exists(path):
        os.unlink(path)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(128)
    children: dict[int, socket.socket] = {}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    hello = {"identity": _identity()}
    print(f"mmablate fork server {os.getpid()}: listening on {path}", file=sys.stderr, flush=True)
    try:
        while not stop:
            try:
                ready, _, _ = select.select([lsock], [], [], 0.2)
            except InterruptedError:
                ready = []
            if ready:
                conn, _ = lsock.accept()
                try:
                    pid = _start(conn, lsock, children, hello)
                except (OSError, ConnectionError, ValueError, KeyError) as e:
                    print(f"mmablate fork server: a request failed ({e})", file=sys.stderr)
                    conn.close()
                else:
                    children[pid] = (conn, time.time())
            _reap(children)
            if watch_pid and not _alive(watch_pid):
                break
    finally:
        lsock.close()
        if os.path.exists(path):
            os.unlink(path)
        for pid in list(children):  # jobs still running when the run ends: the client waits
            try:
                _, status, usage = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            _report(pid, *children.pop(pid), status, usage)


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _report(pid, conn, t0, status: int, usage) -> None:
    """Send a worker's exit status to its client; log what it used (snakemake's benchmark files
    see only the client): wall, CPU (user + system) and peak resident memory."""
    rc = os.waitstatus_to_exitcode(status)
    rc = rc if rc >= 0 else 128 - rc  # killed by signal N: 128 + N, as a shell reports it
    print(f"worker {pid} exit {rc}: {time.time() - t0:.2f} s wall, "
          f"{usage.ru_utime + usage.ru_stime:.2f} s CPU, max RSS {usage.ru_maxrss / 1024:.0f} MB",
          file=sys.stderr, flush=True)
    try:
        _send(conn, {"rc": rc})
    except OSError:
        pass  # the client is gone
    finally:
        conn.close()


def _reap(children) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            _report(pid, *children.pop(pid), status, usage)


def _start(conn, lsock, children, hello) -> int:
    conn.settimeout(30)
    _send(conn, hello)
    _msg, fds, _flags, _addr = socket.recv_fds(conn, 1, 3)
    if len(fds) != 3:
        raise ConnectionError("expected the client's stdin, stdout and stderr")
    req = _recv(conn)
    conn.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            lsock.close()
            for c, _t0 in children.values():
                c.close()
            rc = _worker(conn, fds, req)
        except BaseException:  # noqa: BLE001 — nothing may return into the server's loop
            import traceback

            traceback.print_exc()
            rc = 1
        os._exit(rc)
    for fd in fds:
        os.close(fd)
    _send(conn, {"pid": pid})
    print(f"worker {pid}: {' '.join(req['argv'])[:300]}", file=sys.stderr, flush=True)
    return pid


def _worker(conn, fds, req) -> int:
    """In the forked process: become the job's process, run its command, return its status."""
    import io
    import threading

    import faulthandler

    os.setsid()  # its own process group: the client's forwarded signals reach its children too
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    faulthandler.enable(file=2, all_threads=True)  # a crash prints its Python stack to the job's log
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    # standard streams as a fresh interpreter makes them (line-buffered on a terminal)
    sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False, buffering=-1))
    sys.stdout = io.TextIOWrapper(io.open(1, "wb", closefd=False, buffering=-1),
                                  line_buffering=os.isatty(1), write_through=False)
    sys.stderr = io.TextIOWrapper(io.open(2, "wb", closefd=False, buffering=-1),
                                  line_buffering=True, errors="backslashreplace")
    sys.argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py"),
                *req["argv"]]
    _fresh_rngs()
    for name in [m for m in sys.modules if m == "mmablate" or m.startswith("mmablate.")]:
        del sys.modules[name]

    def watchdog():  # the client died (SIGKILL): take the job down with it
        try:
            while conn.recv(64):
                pass
        except OSError:
            pass
        try:
            os.killpg(0, signal.SIGTERM)
        except OSError:
            os._exit(1)

    threading.Thread(target=watchdog, daemon=True, name="mmablate-client-watch").start()
    try:
        from mmablate.cli import main

        rc = main(req["argv"])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:
        rc = 130
    except BaseException:  # noqa: BLE001 — as the interpreter would: traceback, status 1
        import traceback

        traceback.print_exc()
        rc = 1
    import atexit

    atexit._run_exitfuncs()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except OSError:
            pass
    return int(rc or 0)


def _fresh_rngs() -> None:
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(torch.initial_seed())  # the seed a fresh interpreter starts from


# ---- the workflow's side ------------------------------------------------------------------------
def start(workdir: str, watch_pid: int, log_path: str, preload_modules=None) -> str:
    """Start a server for this snakemake run, detached; the socket path it will listen on.
    Returns at once: until the server has imported its libraries (10–20 s) the socket does not
    exist and the first jobs' clients wait for it."""
    import subprocess
    import tempfile

    d = tempfile.mkdtemp(prefix="mmablate-fs-")  # mode 0700: only this user can connect
    path = os.path.join(d, "sock")
    env = dict(os.environ)
    env.pop(ENV, None)
    src = _identity()["src"]
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmablate.forkserver", path, str(watch_pid),
             *(["--preload", ",".join(preload_modules)] if preload_modules else [])],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
    with open(os.path.join(d, "pid"), "w") as f:  # clients wait for it while it imports
        f.write(str(proc.pid))
    return path


def stop(path: str | None) -> None:
    """Stop the server listening on `path` (it waits for its running workers first)."""
    if not path:
        return
    try:
        with open(os.path.join(os.path.dirname(path), "pid")) as f:
            os.kill(int(f.read()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


def enabled(workflow, config) -> str | None:
    """Why a snakemake run gets no fork server (None: it gets one)."""
    flag = config.get("forkserver", True)
    if flag is False or str(flag).lower() in ("false", "0", "no", "off"):
        return "off by config (forkserver: false)"
    ex = workflow.executor_plugin.name if workflow.executor_plugin is not None else "local"
    if ex != "local":
        return f"executor {ex}"
    methods = getattr(getattr(workflow, "deployment_settings", None), "deployment_method", ()) or ()
    if any(str(getattr(m, "name", m)).lower() in ("conda", "apptainer") for m in methods):
        return "software deployment (conda/apptainer): the jobs' Python is not this one"
    return None


def workflow_start(workflow, config) -> str | None:
    """The `onstart` hook: start the run's server and point the jobs at it (their environment is
    snakemake's). A server that fails to start is a note; the jobs then run as usual."""
    why = enabled(workflow, config)
    if why is not None:
        return None
    log = os.path.join(".snakemake", "log", f"mmablate-forkserver.{os.getpid()}.log")
    try:
        path = start(os.getcwd(), os.getpid(), log)
    except OSError as e:
        print(f"mmablate: fork server not started ({e}); jobs import their libraries",
              file=sys.stderr)
        return None
    os.environ[ENV] = path
    print(f"mmablate: fork server on {path} (log {log}); `--config forkserver=false` turns it off",
          file=sys.stderr)
    return path


def workflow_stop() -> None:
    """The `onsuccess`/`onerror` hook (the server also ends by itself when snakemake does)."""
    stop(os.environ.pop(ENV, None))


def _main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mmablate.forkserver",
                                description="serve `python -m mmablate` jobs by forking")
    p.add_argument("socket", help="the Unix socket to listen on (its folder gets a `pid` file)")
    p.add_argument("watch_pid", nargs="?", type=int, default=None,
                   help="exit when this process (the snakemake run) is gone")
    p.add_argument("--preload", default=None,
                   help="comma-separated modules to import (default: the heavy libraries)")
    a = p.parse_args(argv)
    with open(os.path.join(os.path.dirname(a.socket), "pid"), "w") as f:
        f.write(str(os.getpid()))
    try:
        serve(a.socket, a.watch_pid, tuple(a.preload.split(",")) if a.preload else PRELOAD)
    finally:
        try:
            os.unlink(os.path.join(os.path.dirname(a.socket), "pid"))
            os.rmdir(os.path.dirname(a.socket))
        except OSError:
            pass


if __name__ == "__main__":
    _main()
