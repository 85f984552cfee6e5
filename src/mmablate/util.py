"""Small shared helpers: canonical JSON, hashing, atomic writes."""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(obj, n: int = 12) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:n]


@contextmanager
def write_atomic(path):
    """Yields a temporary path beside `path` to write the whole file to; when the block ends
    without an error the temporary replaces `path` (`os.replace`: atomic on one file system), so
    a reader, a concurrent job or a kill mid-write never sees a partial file — the previous
    content or the new one. On an error the temporary is removed and `path` is left as it was.

        with write_atomic(out) as tmp:
            torch.save(obj, tmp)

    The temporary, ``<name>.tmp<pid>``, is unique per process and keeps no extension a glob
    would match; a writer that appends one to a path (``np.save``, ``np.savez``) is given an
    open file instead: ``with write_atomic(p) as tmp, open(tmp, "wb") as f: np.save(f, a)``.
    The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_if_changed(path, text: str) -> bool:
    """Writes `text` unless the file already holds it (keeps its mtime, so nothing reruns)."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    with write_atomic(path) as tmp:
        tmp.write_text(text)
    return True


def write_json(path, obj) -> None:
    with write_atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path):
    from .errors import DataError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def get_path(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def set_path(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    cur = d
    for part in parts[:-1]:
        cur = cur[part]
    cur[parts[-1]] = value


def load_torch_file(path, what: str, error=None, weights_only: bool = True):
    """`torch.load` onto the CPU; a missing or unreadable file raises `error` (CheckpointError by
    default) naming the file and what it should hold ("cannot read model weights (…)")."""
    import torch

    from .errors import CheckpointError

    error = error or CheckpointError
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except Exception as e:  # truncated, or not a torch file
        raise error(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from None
