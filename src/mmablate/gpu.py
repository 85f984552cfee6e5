"""One GPU per concurrent job on a multi-GPU workstation.

`snakemake --cores N --resources gpu=K all` runs up to K GPU jobs at once but only *counts* the
`gpu` resource: it never tells a job which device to use (no CUDA_VISIBLE_DEVICES; snakemake issue
#281), so every job would land on cuda:0. `claim()` fixes that for the GPU stages' commands
(`python -m mmablate <study>-train ...`): before torch touches CUDA it takes the first free
device slot and sets ``CUDA_VISIBLE_DEVICES`` to it for the rest of the process.

A slot is an exclusive `fcntl.flock` on ``<lock dir>/gpu<id>.lock``, held by an open file
descriptor for the life of the process. The kernel releases a flock when its holder exits for any
reason (crash, SIGKILL, OOM kill), so a dead job's slot is free at once; no stale-lock cleanup is
needed. The lock file records the holder's pid and command for `gpu-status`.

Nothing is done when

* SLURM (or another scheduler) already assigned devices: ``SLURM_JOB_ID`` is set together with
  ``CUDA_VISIBLE_DEVICES`` (SLURM sets it for ``--gpus`` jobs);
* no GPU is present (the CPU machines the tests run on);
* ``MMABLATE_GPU_ALLOCATE=0``.

Devices are those in ``CUDA_VISIBLE_DEVICES`` if set (so a user can hand the workflow a subset),
else the GPUs the NVIDIA driver lists; ``MMABLATE_GPUS`` (e.g. ``"0,1,2,3"``) overrides both.
The lock directory is machine-wide (``$TMPDIR/mmablate-gpu-locks``, or
``MMABLATE_GPU_LOCK_DIR``), so two workflows on one machine also share the devices fairly.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_held: dict[str, int] = {}  # device id -> open fd (kept open: closing it frees the slot)


def lock_dir() -> Path:
    d = os.environ.get("MMABLATE_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "mmablate-gpu-locks"
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _driver_gpus() -> list[str]:
    """GPU indices the NVIDIA driver lists, without importing torch (or initialising CUDA)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            return [l.strip() for l in out.stdout.splitlines() if l.strip()]
    except (OSError, subprocess.TimeoutExpired):
        pass
    proc = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(proc.iterdir())))] if proc.is_dir() else []


def visible_devices(env=None) -> list[str]:
    env = os.environ if env is None else env
    for key in ("MMABLATE_GPUS", "CUDA_VISIBLE_DEVICES"):
        if env.get(key) is not None:
            return [d.strip() for d in env[key].split(",") if d.strip() and d.strip() != "-1"]
    return _driver_gpus()


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {' '.join(sys.argv)[:200]}\n".encode())
    return fd


def acquire(devices: list[str], directory: Path | None = None, timeout: float | None = None,
            poll: float = 1.0) -> str:
    """Takes the first free device slot; waits (up to `timeout` s, None = forever) if all are held."""
    if not devices:
        raise ValueError("no devices to allocate")
    directory = Path(directory) if directory else lock_dir()
    t0, warned = time.monotonic(), False
    while True:
        for d in devices:
            if d in _held:
                continue
            fd = _try_lock(directory / f"gpu{d}.lock")
            if fd is not None:
                _held[d] = fd
                return d
        if timeout is not None and time.monotonic() - t0 >= timeout:
            raise TimeoutError(f"all GPUs {devices} held by other jobs (locks in {directory}); "
                               f"run snakemake with --resources gpu={len(devices)} or fewer")
        if not warned:
            print(f"waiting for a free GPU among {devices} (locks in {directory})", file=sys.stderr)
            warned = True
        time.sleep(poll)


def release(device: str) -> None:
    fd = _held.pop(device, None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def claim(timeout: float | None = None, count: int = 1) -> str | None:
    """Pins this process to `count` free GPUs (sets CUDA_VISIBLE_DEVICES to their ids, comma
    separated); returns that string, or None when nothing is to be done (see the module doc).

    A multi-GPU job (`mmablate launch --nproc N`) claims its N slots once, in the launcher; its
    ranks (torchrun sets ``TORCHELASTIC_RUN_ID``) inherit them and claim nothing. Slots are taken
    one at a time in device order; while fewer than `count` are free the claimed ones are held
    and the rest waited for (as one-slot claims wait). Asking for more devices than the machine
    shows is an error at once.
    """
    env = os.environ
    if env.get("MMABLATE_GPU_ALLOCATE", "1") == "0":
        return None
    if env.get("TORCHELASTIC_RUN_ID"):
        return None  # a rank of `mmablate launch`: the launcher claimed the job's devices
    if env.get("SLURM_JOB_ID") and env.get("CUDA_VISIBLE_DEVICES") is not None \
            and not env.get("MMABLATE_GPUS"):
        return None  # the scheduler already chose
    devices = visible_devices()
    if not devices:
        return None
    if count < 1:
        raise ValueError(f"claim: count must be ≥ 1, got {count}")
    if count > len(devices):
        raise ValueError(f"claim: {count} GPUs asked for, but only {len(devices)} visible "
                         f"({devices}); lower the rule's gpu resource")
    got = []
    try:
        for _ in range(count):
            got.append(acquire(devices, timeout=timeout))
    except BaseException:
        for d in got:
            release(d)
        raise
    got.sort(key=devices.index)
    ids = ",".join(got)
    env["CUDA_VISIBLE_DEVICES"] = ids
    print(f"GPU slot{'s' if count > 1 else ''}: using device{'s' if count > 1 else ''} {ids} "
          f"of {devices}", file=sys.stderr)
    return ids


def status(directory: Path | None = None) -> list[tuple[str, str]]:
    """(device, holder) for every lock file; holder '' when free."""
    directory = Path(directory) if directory else lock_dir()
    rows = []
    for p in sorted(directory.glob("gpu*.lock")):
        fd = _try_lock_probe(p)
        rows.append((p.stem[3:], "" if fd else p.read_text().strip()))
    return rows


def _try_lock_probe(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
