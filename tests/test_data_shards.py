"""webdataset shards in img2dataset's layout (stand-ins written with webdataset.TarWriter): shard
lists, sample counts, corrupt samples skipped and counted, the rank/worker split, resuming."""
import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from mmablate.data import shards as S
from mmablate.errors import ConfigError, DataError


def _jpeg(i: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_cc3m(d, n_shards=4, per_shard=6, corrupt=(), stats=True):
    """img2dataset's webdataset output: 00000.tar … with <key>.jpg/.txt/.json, and
    <shard>_stats.json; `corrupt`: sample indices whose .jpg bytes are not an image."""
    d.mkdir(parents=True, exist_ok=True)
    i = 0
    for s in range(n_shards):
        with wds.TarWriter(str(d / f"{s:05d}.tar")) as w:
            for j in range(per_shard):
                key = f"{s:05d}{j:04d}"
                w.write({"__key__": key, "jpg": b"not a jpeg" if i in corrupt else _jpeg(i),
                         "txt": f"caption {i}", "json": json.dumps({"key": key, "status": "success"})})
                i += 1
        if stats:
            (d / f"{s:05d}_stats.json").write_text(json.dumps(
                {"count": per_shard + 1, "successes": per_shard, "failed_to_download": 1,
                 "failed_to_resize": 0, "duration": 1.0, "status_dict": {}}))
    return i


def tok_index(captions):
    """A 'tokenizer' that keeps the sample index of "caption <i>" (to identify samples)."""
    return torch.tensor([[int(c.split()[1])] for c in captions])


def to_tensor(im):
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255


def test_shard_lists_and_counts(tmp_path):
    n = write_cc3m(tmp_path / "cc3m")
    by_dir = S.expand_shards("cc3m", tmp_path)
    assert [p.rsplit("/", 1)[1] for p in by_dir] == [f"{s:05d}.tar" for s in range(4)]
    assert S.expand_shards(str(tmp_path / "cc3m/{00000..00003}.tar")) == by_dir
    assert S.shard_counts(by_dir) == [6] * 4 and S.num_samples(by_dir) == n == 24
    assert S.num_samples(by_dir, 10) == 10  # the config wins
    with pytest.raises(DataError, match=r"1 shard\(s\) not found, e.g. .*00004.tar"):
        S.expand_shards(str(tmp_path / "cc3m/{00000..00004}.tar"))
    with pytest.raises(DataError, match="holds no .tar shards"):
        (tmp_path / "empty").mkdir()
        S.expand_shards("empty", tmp_path)


def test_sample_count_from_sizes_json_or_unknown(tmp_path):
    write_cc3m(tmp_path / "a", n_shards=2, stats=False)
    shards = S.expand_shards(tmp_path / "a")
    assert S.shard_counts(shards) is None
    with pytest.raises(DataError, match=r"data.num_samples: the sample count .* is unknown"):
        S.num_samples(shards)
    (tmp_path / "a/sizes.json").write_text(json.dumps({"00000.tar": 6, "00001.tar": 5}))
    assert S.num_samples(shards) == 11


def test_read_all_decodes_and_skips_a_corrupt_member(tmp_path, capsys):
    write_cc3m(tmp_path / "cc3m", n_shards=2, per_shard=5, corrupt=(3, 7))
    images, tokens, skipped = S.read_all(S.expand_shards(tmp_path / "cc3m"), to_tensor,
                                         tok_index, progress=False)
    assert skipped == 2 and images.shape == (8, 3, 16, 16)
    assert tokens[:, 0].tolist() == [0, 1, 2, 4, 5, 6, 8, 9]  # in shard order, 3 and 7 gone
    np.testing.assert_allclose(images[0].permute(1, 2, 0).numpy() * 255,
                               np.asarray(Image.open(io.BytesIO(_jpeg(0)))), atol=1e-3)
    err = capsys.readouterr().err
    assert "skipped a corrupt sample: " in err and "00000.tar:000000003" in err
    assert "2 corrupt sample(s) skipped (first: " in err


def test_read_all_cache_decodes_once_per_data_and_key(tmp_path, capsys, monkeypatch):
    write_cc3m(tmp_path / "cc3m", n_shards=2, per_shard=5, corrupt=(3,))
    shards = S.expand_shards(tmp_path / "cc3m")
    cache = tmp_path / "world/.decoded"
    calls = []
    real = S.decode_pair
    monkeypatch.setattr(S, "decode_pair", lambda *a: calls.append(1) or real(*a))
    ref = S.read_all(shards, to_tensor, tok_index, progress=False)
    n_ref = len(calls)
    first = S.read_all(shards, to_tensor, tok_index, progress=False, cache_dir=cache, key={"m": 1})
    assert len(calls) == 2 * n_ref  # decoded (and written)
    again = S.read_all(shards, to_tensor, tok_index, progress=False, cache_dir=cache, key={"m": 1})
    assert len(calls) == 2 * n_ref  # loaded: nothing decoded
    assert "decoded set loaded from" in capsys.readouterr().err
    for got in (first, again):
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        assert got[0].dtype == ref[0].dtype and got[1].dtype == ref[1].dtype and got[2] == 1
    # another model key, or rewritten shards (new mtime), decode again
    S.read_all(shards, to_tensor, tok_index, progress=False, cache_dir=cache, key={"m": 2})
    assert len(calls) == 3 * n_ref
    import os
    st = os.stat(shards[0])
    os.utime(shards[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    S.read_all(shards, to_tensor, tok_index, progress=False, cache_dir=cache, key={"m": 1})
    assert len(calls) == 4 * n_ref
    # a damaged entry is decoded again, not trusted
    for f in cache.glob("*.images.npy"):
        f.write_bytes(b"garbage")
    got = S.read_all(shards, to_tensor, tok_index, progress=False, cache_dir=cache, key={"m": 1})
    assert len(calls) == 5 * n_ref and torch.equal(got[0], ref[0])
    # a cache folder that cannot be made: decoded in memory, with a note
    (tmp_path / "file").write_text("")
    got = S.read_all(shards, to_tensor, tok_index, progress=False,
                     cache_dir=tmp_path / "file/.decoded", key={"m": 1})
    assert torch.equal(got[0], ref[0]) and "not writable" in capsys.readouterr().err


def test_a_truncated_shard_is_skipped_and_counted(tmp_path, capsys):
    write_cc3m(tmp_path / "cc3m", n_shards=2, per_shard=5)
    bad = tmp_path / "cc3m/00001.tar"
    bad.write_bytes(bad.read_bytes()[:2000])  # cut mid-member
    images, tokens, skipped = S.read_all(S.expand_shards(tmp_path / "cc3m"), to_tensor,
                                         tok_index, progress=False)
    assert skipped >= 1 and 5 <= len(images) < 10
    assert tokens[:5, 0].tolist() == [0, 1, 2, 3, 4]
    assert "00001.tar" in capsys.readouterr().err


def _epoch_keys(stream, monkeypatch, rank, world, worker, workers, epoch=0):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("WORKER", str(worker))
    monkeypatch.setenv("NUM_WORKERS", str(workers))
    return [s["__key__"] for s in stream.epoch_samples(epoch)]


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_rank_and_worker_split_covers_every_sample_once(tmp_path, monkeypatch, world, workers):
    n = write_cc3m(tmp_path / "cc3m", n_shards=7, per_shard=4)
    stream = S.ShardStream(S.expand_shards(tmp_path / "cc3m"), to_tensor, tok_index, seed=3,
                           shuffle_buffer=5)
    for epoch in (0, 1):
        keys = [k for r in range(world) for w in range(workers)
                for k in _epoch_keys(stream, monkeypatch, r, world, w, workers, epoch)]
        assert len(keys) == n and len(set(keys)) == n, (epoch, sorted(keys))
    # epochs differ in order (shards reshuffled, buffer reseeded), not in content
    a = _epoch_keys(stream, monkeypatch, 0, 1, 0, 1, 0)
    b = _epoch_keys(stream, monkeypatch, 0, 1, 0, 1, 1)
    assert sorted(a) == sorted(b) and a != b


def test_stream_through_dataloader_workers_covers_an_epoch(tmp_path):
    n = write_cc3m(tmp_path / "cc3m", n_shards=4, per_shard=6)
    stream = S.ShardStream(S.expand_shards(tmp_path / "cc3m"), to_tensor, tok_index, seed=0,
                           shuffle_buffer=4)
    stream.start_at(0, 3, 2, 1)
    loader = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=2)
    it = iter(loader)
    first = [next(it) for _ in range(n // 3)]
    seen = torch.cat([b[1][:, 0] for b in first]).tolist()
    assert sorted(seen) == list(range(n))  # shards split evenly: one epoch = n samples
    assert first[0][0].shape == (3, 3, 16, 16)


@pytest.mark.parametrize("workers,counts", [(0, True), (2, True), (2, False)])
def test_resumed_stream_continues_the_order(tmp_path, workers, counts):
    """start_at(b): the stream continues where b consumed micro-batches left it, across epochs
    (whole epochs skipped by the shards' counts when known)."""
    write_cc3m(tmp_path / "cc3m", n_shards=4, per_shard=5)
    shards = S.expand_shards(tmp_path / "cc3m")

    def batches(skip, k):
        st = S.ShardStream(shards, to_tensor, tok_index, seed=1, shuffle_buffer=3,
                           counts=S.shard_counts(shards) if counts else None)
        st.start_at(skip, 2, workers, 1)
        it = iter(torch.utils.data.DataLoader(st, batch_size=2, num_workers=workers))
        return [next(it)[1][:, 0].tolist() for _ in range(k)]

    full = batches(0, 30)  # 60 samples: three epochs of 20
    for skip in (3, 10, 23):
        assert batches(skip, 30 - skip) == full[skip:], skip


def test_too_few_shards_for_the_workers_is_a_clear_error(tmp_path):
    write_cc3m(tmp_path / "cc3m", n_shards=2, per_shard=3)
    st = S.ShardStream(S.expand_shards(tmp_path / "cc3m"), to_tensor, tok_index, seed=0)
    with pytest.raises(ConfigError, match=r"2 shard\(s\) cannot feed 1 rank\(s\) × 3"):
        st.start_at(0, 2, 3, 1)


def test_a_stream_of_only_corrupt_samples_stops_with_an_error(tmp_path):
    write_cc3m(tmp_path / "cc3m", n_shards=1, per_shard=3, corrupt=(0, 1, 2))
    st = S.ShardStream(S.expand_shards(tmp_path / "cc3m"), to_tensor, tok_index, seed=0)
    with pytest.raises(DataError, match=r"no decodable sample \(3 corrupt skipped; first: "):
        next(iter(st))
    assert st.skipped.n == 3


def test_shard_writer_layout(tmp_path):
    with S.ShardWriter(tmp_path / "out", maxcount=4, ext="jpg") as w:
        keys = [w.write(_jpeg(i), f"caption {i}") for i in range(10)]
    assert keys[:5] == ["000000000", "000000001", "000000002", "000000003", "000010000"]
    shards = S.expand_shards(tmp_path / "out")
    assert len(shards) == 3 and S.shard_counts(shards) == [4, 4, 2]
    images, tokens, skipped = S.read_all(shards, to_tensor, tok_index, progress=False)
    assert tokens[:, 0].tolist() == list(range(10)) and skipped == 0


class _Counting(torch.utils.data.IterableDataset):
    """0, 1, 2, … forever from `start_at`'s position (the harness's resume hook)."""

    def __init__(self):
        self.calls = []

    def start_at(self, batches, micro_batch, num_workers, world_size):
        self.calls.append((batches, micro_batch, num_workers, world_size))
        self.first = batches * micro_batch

    def __iter__(self):
        i = self.first
        while True:
            yield torch.tensor([float(i)])
            i += 1


def test_harness_streams_an_iterable_dataset_and_resumes_it(tmp_path):
    """fit() on an IterableDataset: micro-batches of batch_size consecutive items, accumulation
    over `effective_batch`, and a resumed run told the micro-batches already consumed."""
    from mmablate.training.harness import Harness

    seen = []

    def run(out, **kw):
        h = Harness({"batch_size": 2, "effective_batch": 4}, seed=0, out_dir=out, progress=False,
                    **kw)
        lin = torch.nn.Linear(1, 1)
        h.setup(lin, lambda m: torch.optim.SGD(m.parameters(), lr=0.0))
        data = _Counting()

        def step(batch):
            seen.append(batch[:, 0].tolist())
            return {"loss": h.model(batch).sum()}

        r = h.fit(step, data, steps=5, ckpt_every=1)
        return r, data.calls

    r, calls = run(tmp_path / "a", stop_after=2)
    assert r == {"stopped_at": 2} and calls == [(0, 2, 0, 1)]
    assert seen == [[0, 1], [2, 3], [4, 5], [6, 7]]
    seen.clear()
    r, calls = run(tmp_path / "a")
    assert r["resumed_from"] == 2 and calls == [(4, 2, 0, 1)]
    assert seen == [[8, 9], [10, 11], [12, 13], [14, 15], [16, 17], [18, 19]]
