"""mmablate.util.write_atomic: the one atomic write every stage uses for its outputs and caches."""
import numpy as np
import pytest

from mmablate.util import write_atomic, write_if_changed, write_json


def test_the_file_appears_whole_only_when_the_block_ends(tmp_path):
    out = tmp_path / "sub" / "a.json"  # the parent is created
    with write_atomic(out) as tmp:
        tmp.write_text("new")
        assert not out.exists() and tmp.parent == out.parent and tmp.name.startswith("a.json.tmp")
    assert out.read_text() == "new"
    assert [p.name for p in out.parent.iterdir()] == ["a.json"]  # no temporary left


def test_an_error_leaves_the_previous_content_and_no_temporary(tmp_path):
    out = tmp_path / "a.txt"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with write_atomic(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_numpy_writers_through_an_open_file_keep_the_name(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    with write_atomic(tmp_path / "x.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, a)
    with write_atomic(tmp_path / "y.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, a=a, n=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.npz"]
    assert np.array_equal(np.load(tmp_path / "x.npy", mmap_mode="r"), a)
    with np.load(tmp_path / "y.npz") as z:
        assert np.array_equal(z["a"], a) and int(z["n"]) == 3


def test_write_if_changed_and_write_json(tmp_path):
    f = tmp_path / "c.json"
    assert write_if_changed(f, "x") is True
    mtime = f.stat().st_mtime_ns
    assert write_if_changed(f, "x") is False and f.stat().st_mtime_ns == mtime
    write_json(f, {"b": 1, "a": [2]})
    assert f.read_text() == '{\n "a": [\n  2\n ],\n "b": 1\n}\n'
