"""A fork server for the local executor: the heavy libraries are imported once, each job forks.

Every model job of the workflow is a fresh ``python -m mmablate <command>`` process, and on the
tiny scale most of a job's CPU time is interpreter start and imports (torch, torchvision,
open_clip, transformers, diffusers, peft, accelerate: 4–10 s of CPU per job, ~200 jobs;
benchmarks/README.md). With ``snakemake`` on one machine the workflow starts one server
(the ``onstart`` hook, workflow/rules/hooks.smk) that imports those libraries once and listens on
a Unix socket; ``python -m mmablate`` (src/mmablate/__main__.py) sees ``MMABLATE_FORKSERVER`` in
its environment and, instead of importing anything, hands its arguments, working directory,
environment and its stdin/stdout/stderr file descriptors to the server, which forks a worker that
runs the command exactly as ``python -m mmablate`` would (`mmablate.cli.main`), writing to the
job's own log. The client waits for the worker's exit status and exits with it; SIGTERM/SIGINT/
SIGHUP to the client are forwarded to the worker's process group, and when a client dies
(SIGKILL) the server sends SIGTERM to its worker's process group. docs/forkserver.md is the
user's view (what it buys, how it fails, how to turn it off).

What a worker shares with a fresh process and what it does not:

* The third-party libraries are the server's imports; mmablate's own modules are dropped from
  ``sys.modules`` in every worker and imported afresh, so an edit of ``src/mmablate`` during a run
  reaches the next job as it would without the server.
* The environment, working directory, ``sys.argv``, standard streams (re-created as a fresh
  interpreter creates them) and signal handlers are the job's; Python's, NumPy's and torch's
  global random generators are reset to a fresh interpreter's state (torch to its default seed,
  the others from the OS). Jobs seed their own generators anyway; the tiny tables are identical
  with and without the server (docs/forkserver.md).
* A worker ends as an interpreter ends: it leaves the server's code by ``SystemExit`` (the
  server's clean-up runs only in the server's own process), so its ``atexit`` handlers run, its
  streams are flushed and its non-daemon threads joined before it exits with the job's status.
* Settings a library reads from the environment *when it is imported* are the server's:
  notably ``OMP_NUM_THREADS``. Every model command sets torch's threads itself (``--threads``).
* One thread at fork. ``fork()`` copies only the calling thread: a lock held by any other thread
  (malloc's, a library's) stays locked forever in the child, the usual cause of crashes and hangs
  of forked children. The server therefore runs no thread besides its main one, and refuses to
  fork while it has more (counted both as Python threads and as the kernel's tasks of the
  process, /proc/self/task, so native threads count too): the client is told why and runs the
  command itself, as a fresh process. Of the preloaded libraries only pyarrow (imported by
  ``transformers.Trainer``) and NumPy's OpenBLAS start threads when loaded (jemalloc's
  background purge thread; a BLAS pool of one thread per CPU but one); the server's own
  environment turns them off before it imports (``SERVER_ENV``), and a worker sizes its OpenBLAS
  pools from the job's environment as a fresh process would. torch (OpenMP) and tokenizers start
  their pools on first use, which the server never makes: it never runs a tensor operation, so
  each worker starts its own. A worker starts no thread of its
  own either (the client watch is the server's), so a job's DataLoader workers and the ranks that
  torchrun forks are forked from a process that has only the job's threads.
* Nor does the server touch CUDA (which does not survive a fork): it checks that the driver
  library is not loaded before serving, and each worker initialises CUDA for its own claimed
  device.
* Snakemake's ``benchmark:`` files measure the job's process tree, and a worker is the server's
  child, not the client's: what snakemake records there is the client's CPU and memory (the wall
  time is the job's). So the server reports each worker's resource use (``os.wait4``: wall,
  user + system CPU, peak RSS) to its client, the client appends it to the run's record
  (``$MMABLATE_FORKSERVER_JOBS``, keyed by the job's log), and the run's end (the ``onsuccess``/
  ``onerror`` hooks) writes it into the benchmark files of the served jobs (`rewrite_benchmarks`).

The client falls back to running the command in-process when the socket is missing, the server
answers for another interpreter or another source tree, or it refuses to fork, so a job never
depends on it; and it reruns the command in-process when the worker crashed (SIGSEGV, SIGBUS,
SIGILL, SIGFPE, SIGABRT not forwarded by the client; `faulthandler` prints the worker's Python
stack to the job's log first). A rerun is reported: a line in the job's log, and a summary of all
reruns (each job's command, signal and log) at the end of the snakemake run. One crash was seen
in a tiny run before the one-thread rule (an ``mmalign-dpo`` worker, SIGSEGV 1.8 s into the job,
before the stack was recorded), not reproduced; the server then forked with pyarrow's jemalloc
thread alive and each worker started a client-watch thread before its job ran.
Not used under SLURM or any non-local executor, nor with ``--sdm conda`` (the jobs' Python
differs from the server's). The ranks of an ``mmablate launch`` job run through the server too:
torchrun starts each rank's ``python -m mmablate`` as always, and that process is a client whose
worker (environment: the rank's ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``…) trains as a fresh rank
would (the same weights, bit for bit: tests/test_e2e_launch_torchrun.py); a 2-rank training job
then costs no import (measured on a rehearsal RankCLIP job: 10 s of CPU instead of 39 s, the rank imports
being ~14 s each). A rank's resource use counts towards its launch job's benchmark file.
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
# the run's record of served commands (JSON lines: usage, reruns, refusals; read at the run's end)
JOBS_ENV = "MMABLATE_FORKSERVER_JOBS"
# the job a command belongs to (its log): a launch job's ranks inherit their job's
JOB_ENV = "MMABLATE_FORKSERVER_JOB"
# set in the server's environment before it imports anything, so that no library starts a
# thread at import: NumPy's (and SciPy's) OpenBLAS starts its pool when loaded, one thread per
# CPU but one; pyarrow's bundled jemalloc a background purge thread when libarrow loads (Arrow's
# default memory pool here is mimalloc, so jemalloc's purging is idle anyway). A worker sets the
# OpenBLAS pools back to the size a fresh process reads from the job's environment (`_blas_threads`)
SERVER_ENV = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}
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
        rank = JOB_ENV in os.environ  # run below a served job (a launch job's rank)
        job = os.environ.get(JOB_ENV) or _stderr_file()
        if job:
            env[JOB_ENV] = job
        # from the request on, a signal is the worker's: held until its pid is known, then sent
        forwarded, worker = [], []

        def forward(signum, _frame):
            forwarded.append(signum)
            if worker:
                _signal_group(worker[0], signum)

        saved = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT,
                                                        signal.SIGHUP)}
        _send(sock, {"argv": list(argv), "cwd": os.getcwd(), "env": env})
        answer = _recv(sock)
        if "refused" in answer:  # the server would not fork (more than one thread)
            sock.close()
            _restore(saved, forwarded)
            print(f"mmablate fork server: not forking ({answer['refused']}); running the "
                  f"command in a fresh process", file=sys.stderr, flush=True)
            _record({"job": job, "rank": rank, "argv": list(argv), "refused": answer["refused"]})
            return None
        pid = answer["pid"]
        worker.append(pid)
        for signum in forwarded:  # arrived before the pid
            _signal_group(pid, signum)
    except (OSError, ConnectionError, ValueError, KeyError):
        sock.close()
        if "saved" in locals():
            _restore(saved, forwarded)
        return None

    while True:
        try:
            done = _recv(sock)
            rc = int(done["rc"])
        except InterruptedError:
            continue
        except (ConnectionError, OSError, ValueError, KeyError):
            print("error: mmablate fork server: lost the worker's exit status", file=sys.stderr)
            return 1
        break
    sock.close()
    sig = rc - 128
    entry = {"job": job, "rank": rank, "argv": list(argv), "worker": pid, "rc": rc,
             **{k: done[k] for k in ("wall_s", "cpu_s", "max_rss_mb") if k in done}}
    if sig in CRASH_SIGNALS and not forwarded:
        # a crash of the forked worker: the job is rerun as the fresh process it would have been
        # without the server, and the rerun is reported (here, in the job's log; the run's end
        # lists every rerun from the record)
        name = signal.Signals(sig).name
        print(f"mmablate fork server: worker {pid} died of {name} (its Python stack, if any, is "
              f"above); rerunning the command in a fresh process", file=sys.stderr, flush=True)
        _record(dict(entry, rerun=name))
        return None
    _record(entry)
    return rc


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:  # not yet its own group (it calls setsid first thing), or gone
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _restore(saved: dict, forwarded: list) -> None:
    """No worker after all: the signal handlers back, and a signal held meanwhile is this
    process's own again (it acts as it would have)."""
    for s, h in saved.items():
        signal.signal(s, h)
    for signum in forwarded[:1]:
        os.kill(os.getpid(), signum)


def _stderr_file() -> str | None:
    """The file this process's stderr writes to (a job's log: `> {log} 2>&1`), or None."""
    try:
        target = os.path.realpath("/proc/self/fd/2")
        return target if os.path.isfile(target) else None
    except OSError:
        return None


def _record(entry: dict) -> None:
    """Append one served command's entry to the run's record ($MMABLATE_FORKSERVER_JOBS), if any
    (one ``write`` of a line opened for appending: concurrent clients do not interleave)."""
    path = os.environ.get(JOBS_ENV)
    if not path:
        return
    entry = dict(entry, t=time.time())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)
    except OSError as e:
        print(f"mmablate fork server: could not record the job in {path} ({e})", file=sys.stderr)


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


def threads() -> tuple[int, int]:
    """This process's threads: (Python's, the kernel's tasks — native threads included)."""
    import threading

    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = 1
    return threading.active_count(), tasks


def fork_refusal() -> str | None:
    """Why this process must not fork a worker now (None: it may): any thread but the caller's."""
    py, tasks = threads()
    if py > 1 or tasks > 1:
        import threading

        names = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        return (f"the fork server runs {max(py, tasks)} threads ({py} Python"
                f"{': ' + ', '.join(names) if names else ''}; {tasks} in /proc/self/task); "
                f"a fork copies only one, and the locks the others hold stay locked in the child")
    return None


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
    for k, v in SERVER_ENV.items():
        os.environ.setdefault(k, v)
    preload(modules)
    why = fork_refusal()
    if why:  # it still listens: each client is told why and runs its command itself
        print(f"mmablate fork server: after the imports {why}; jobs will run in fresh processes",
              file=sys.stderr, flush=True)
    if cuda_driver_loaded():
        print("mmablate fork server: a preloaded library initialised CUDA (libcuda is loaded); "
              "not serving: jobs run in-process", file=sys.stderr, flush=True)
        return
    if os.path.exists(path):
        os.unlink(path)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(128)
    children: dict[int, tuple] = {}  # worker pid -> (its client's connection, start time)
    gone: set[int] = set()  # workers whose client has closed its connection
    me = os.getpid()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    hello = {"identity": _identity()}
    print(f"mmablate fork server {os.getpid()}: listening on {path}", file=sys.stderr, flush=True)
    try:
        while not stop:
            watched = {c.fileno(): pid for pid, (c, _t0) in children.items() if pid not in gone}
            try:
                ready, _, _ = select.select([lsock, *watched], [], [], 0.2)
            except InterruptedError:
                ready = []
            for fd in ready:
                if fd in watched:  # a client sends nothing after its request: this is its end
                    _client_gone(watched[fd], children, gone)
            if lsock in ready:
                conn, _ = lsock.accept()
                try:
                    pid = _start(conn, lsock, children, hello)  # the worker leaves by SystemExit
                except (OSError, ConnectionError, ValueError, KeyError) as e:
                    print(f"mmablate fork server: a request failed ({e})", file=sys.stderr)
                    conn.close()
                else:
                    if pid is not None:
                        children[pid] = (conn, time.time())
            _reap(children, gone)
            if watch_pid and not _alive(watch_pid):
                break
    finally:
        if os.getpid() == me:  # not in a worker leaving the server's code
            lsock.close()
            if os.path.exists(path):
                os.unlink(path)
            for pid in list(children):  # jobs still running when the run ends: the client waits
                try:
                    _, status, usage = os.wait4(pid, 0)
                except ChildProcessError:
                    continue
                _report(pid, *children.pop(pid), status, usage)


def _client_gone(pid, children, gone) -> None:
    """A client closed its connection while its worker runs (it was killed): stop the job."""
    conn = children[pid][0]
    try:
        if conn.recv(64):
            return  # not the end (a client sends nothing more; ignore it)
    except OSError:
        pass
    gone.add(pid)
    print(f"worker {pid} lost its client (killed?): SIGTERM to its process group", file=sys.stderr,
          flush=True)
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:  # not yet its own group leader (it calls setsid first thing)
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


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
    # wait4's usage is the worker's and its reaped descendants' (DataLoader workers, torchrun);
    # ru_maxrss is in KiB on Linux, the largest of those processes' peaks
    done = {"rc": rc, "wall_s": round(time.time() - t0, 4),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 4),
            "max_rss_mb": round(usage.ru_maxrss / 1024, 2)}
    print(f"worker {pid} exit {rc}: {done['wall_s']:.2f} s wall, {done['cpu_s']:.2f} s CPU, "
          f"max RSS {done['max_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    try:
        _send(conn, done)
    except OSError:
        pass  # the client is gone
    finally:
        conn.close()


def _reap(children, gone=()) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            _report(pid, *children.pop(pid), status, usage)
            if pid in gone:
                gone.discard(pid)


def _start(conn, lsock, children, hello) -> int | None:
    """Answer one client: fork its worker (its pid), or tell it why not (None)."""
    conn.settimeout(30)
    _send(conn, hello)
    msg, fds, _flags, _addr = socket.recv_fds(conn, 1, 3)
    if not msg and not fds:  # it read the identity and left: not this server's kind of client
        raise ConnectionError("a client left before its request (another Python or source tree "
                              "than the server's?); it runs its command itself")
    if len(fds) != 3:
        raise ConnectionError("expected the client's stdin, stdout and stderr")
    req = _recv(conn)
    conn.settimeout(None)
    why = fork_refusal()
    if why:
        for fd in fds:
            os.close(fd)
        _send(conn, {"refused": why})
        conn.close()
        print(f"not forking for {' '.join(req['argv'])[:200]}: {why}", file=sys.stderr, flush=True)
        return None
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
        # leave the server's code as an interpreter's main module ends: its `finally` clauses
        # skip their clean-up outside the server's process, then the interpreter runs the job's
        # atexit handlers, flushes its streams, joins its threads and exits with its status
        raise SystemExit(rc)
    for fd in fds:
        os.close(fd)
    _send(conn, {"pid": pid})
    print(f"worker {pid}: {' '.join(req['argv'])[:300]}", file=sys.stderr, flush=True)
    return pid


def _worker(conn, fds, req) -> int:
    """In the forked process: become the job's process, run its command, return its status.
    It starts no thread: a job that forks (DataLoader workers, torchrun) forks a process holding
    only the job's own threads."""
    import io

    import faulthandler

    conn.close()  # the server watches the client's connection (its end stops this job)
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
    _blas_threads(os.environ)
    for name in [m for m in sys.modules if m == "mmablate" or m.startswith("mmablate.")]:
        del sys.modules[name]

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
    return int(rc or 0)


def _blas_threads(env) -> int | None:
    """Size the OpenBLAS pools (the server's are 1 thread: SERVER_ENV) as a fresh process sizes
    them from its environment: $OPENBLAS_NUM_THREADS, $GOTO_NUM_THREADS or $OMP_NUM_THREADS (the
    threads snakemake gives the rule), else one per usable CPU. The pool starts on the next BLAS
    call. None when there is nothing to size (NumPy not loaded, or threadpoolctl missing)."""
    if "numpy" not in sys.modules:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    cpus = len(os.sched_getaffinity(0))
    n = cpus
    for key in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        v = env.get(key, "").strip()
        if v.isdigit() and int(v) > 0:
            n = min(int(v), cpus)
            break
    threadpool_limits(limits=n, user_api="blas")
    return n


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
    os.environ[JOBS_ENV] = os.path.abspath(
        os.path.join(".snakemake", "log", f"mmablate-forkserver.{os.getpid()}.jobs.jsonl"))
    print(f"mmablate: fork server on {path} (log {log}); `--config forkserver=false` turns it off",
          file=sys.stderr)
    return path


def workflow_stop(workflow=None) -> None:
    """The `onsuccess`/`onerror` hook: stop the server (it also ends by itself when snakemake
    does), print what the run's record says went wrong (`summary`) and write the served jobs'
    resource use into their benchmark files (`rewrite_benchmarks`)."""
    stop(os.environ.pop(ENV, None))
    record = os.environ.pop(JOBS_ENV, None)
    if not record:
        return
    entries = read_record(record)
    text = summary(entries)
    if text:
        print(text + f"\n(the run's record: {record})", file=sys.stderr, flush=True)
    if workflow is not None:
        jobs = [([str(p) for p in job.log], str(job.benchmark))
                for job in workflow.dag.jobs if job.benchmark]
        n = rewrite_benchmarks(entries, jobs)
        print(f"mmablate: fork server: {n} benchmark files carry their workers' wall/CPU/RSS",
              file=sys.stderr, flush=True)


def read_record(path: str) -> list:
    """The entries of a run's record (a line cut short by a killed client is skipped)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def summary(entries) -> str | None:
    """The end-of-run report: each command rerun after its worker crashed (its signal and log),
    and the commands the server would not fork for; None when there is none."""
    reruns = [e for e in entries if e.get("rerun")]
    refused = [e for e in entries if e.get("refused")]
    if not reruns and not refused:
        return None
    lines = []
    if reruns:
        lines.append(f"mmablate fork server: {len(reruns)} job(s) rerun in a fresh process after "
                     f"their forked worker crashed (the worker's Python stack is in the log):")
        for e in reruns:
            lines.append(f"  {e['rerun']}  worker {e.get('worker')}  "
                         f"{' '.join(e.get('argv', []))[:200]}  (log {e.get('job') or '?'})")
    if refused:
        lines.append(f"mmablate fork server: {len(refused)} command(s) ran in a fresh process "
                     f"because the server would not fork: {refused[0]['refused']}")
        for e in refused:
            lines.append(f"  {' '.join(e.get('argv', []))[:200]}  (log {e.get('job') or '?'})")
    return "\n".join(lines)


# benchmark columns a worker's usage replaces, and those it cannot measure (psutil's view of a
# process tree: virtual/unique/proportional memory, I/O)
_NOT_MEASURED = ("max_vms", "max_uss", "max_pss", "io_in", "io_out")


def rewrite_benchmarks(entries, jobs) -> int:
    """Write the served jobs' own resource use into their snakemake benchmark files (TSV); the
    number of files rewritten.

    `jobs`: (log paths, benchmark path) of the run's jobs; a job's entries are those whose `job`
    is one of its logs. Snakemake's file holds the client's figures: its wall time ``s`` is the
    job's and stays; ``cpu_time`` becomes the client's plus its worker's (and, for a launch job,
    its ranks' workers'); ``max_rss`` the worker's peak (a launch job: the sum of its and its
    ranks' peaks, the processes running together); ``mean_load`` 100 × cpu_time / s; the columns
    the worker's usage does not give are ``NA``. A job is left as snakemake wrote it when its
    command was rerun or run in a fresh process (then snakemake measured it), when it failed,
    when its benchmark file is older than its record (not written in this run), or when its rows
    (``--benchmark-repeats``) and records do not pair up."""
    by_job: dict[str, list] = {}
    for e in entries:
        if e.get("job"):
            by_job.setdefault(os.path.realpath(e["job"]), []).append(e)
    n = 0
    for logs, bench in jobs:
        mine = [e for log in logs for e in by_job.get(os.path.realpath(log), [])]
        if not mine or not bench.endswith(".tsv") or not os.path.isfile(bench):
            continue
        if any(e.get("rerun") or e.get("refused") or "cpu_s" not in e for e in mine):
            continue
        tops = [e for e in mine if not e.get("rank")]
        if any(e.get("rc") != 0 for e in tops):
            continue
        groups, cur = [], []  # one per repeat: a launch job's ranks end before it does
        for e in sorted(mine, key=lambda e: e["t"]):
            cur.append(e)
            if not e.get("rank"):
                groups.append(cur)
                cur = []
        st = os.stat(bench)
        if st.st_mtime < max(e["t"] for e in mine) - 1.0:
            continue
        with open(bench) as f:
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        header, rows = rows[0], rows[1:]
        if len(rows) != len(groups) or "cpu_time" not in header:
            continue
        col = {name: i for i, name in enumerate(header)}
        for row, group in zip(rows, groups):
            try:
                client_cpu = float(row[col["cpu_time"]])
            except ValueError:  # NA: the client ended before snakemake's first sample
                client_cpu = 0.0
            cpu = client_cpu + sum(e["cpu_s"] for e in group)
            row[col["cpu_time"]] = f"{cpu:.2f}"
            row[col["max_rss"]] = f"{sum(e['max_rss_mb'] for e in group):.2f}"
            wall = float(row[col["s"]])
            if "mean_load" in col:
                row[col["mean_load"]] = f"{100 * cpu / wall:.2f}" if wall > 0 else "NA"
            for name in _NOT_MEASURED:
                if name in col:
                    row[col[name]] = "NA"
        tmp = f"{bench}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write("".join("\t".join(r) + "\n" for r in [header, *rows]))
        os.replace(tmp, bench)
        os.utime(bench, ns=(st.st_atime_ns, st.st_mtime_ns))  # snakemake's bookkeeping unchanged
        n += 1
    return n


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
    me = os.getpid()
    try:
        serve(a.socket, a.watch_pid, tuple(a.preload.split(",")) if a.preload else PRELOAD)
    finally:
        if os.getpid() == me:  # not a worker leaving by SystemExit: the files are the server's
            try:
                os.unlink(os.path.join(os.path.dirname(a.socket), "pid"))
                os.rmdir(os.path.dirname(a.socket))
            except OSError:
                pass


if __name__ == "__main__":
    _main()
