import numpy as np

from mmablate.models.clip import world_tokenizer
from mmablate.world.datasets import write_world
from mmablate.world.scenes import WorldSampler, caption, render, vocabulary


def test_render_is_deterministic():
    s = WorldSampler().scene(np.random.default_rng(3))
    a = np.asarray(render(s, 32, np.random.default_rng(1)))
    b = np.asarray(render(s, 32, np.random.default_rng(1)))
    assert a.shape == (32, 32, 3) and (a == b).all()


def test_main_object_colour_dominates_its_pixels():
    s = WorldSampler(colours=("red", "blue"), shapes=("square", "circle")).scene(
        np.random.default_rng(0), n_objects=1, colour="red", shape="square", size="large")
    img = np.asarray(render(s, 32, None, noise=0)).astype(int)
    cx, cy = int(s.main.x * 32), int(s.main.y * 32)
    r, g, b = img[cy, cx]
    assert r > 180 and g < 80 and b < 80


def test_captions_use_the_vocabulary_and_tokenize_with_end_token():
    tok = world_tokenizer(24)
    rng = np.random.default_rng(0)
    sampler = WorldSampler()
    vocab = set(vocabulary())
    for _ in range(50):
        c = caption(sampler.scene(rng))
        assert set(c.split()) <= vocab
        ids = tok(c)[0]
        assert ids[0] == 1 and tok.eot_id in ids.tolist() and tok.stoi["<unk>"] not in ids.tolist()
        assert tok.decode(ids[1:]) == c


def test_write_world_formats(tmp_path):
    cfg = {"seed": 1, "image_size": 16, "n_train": 12, "n_classify_per_class": 2,
           "colours": ["red", "blue"], "shapes": ["circle", "square"], "max_objects": 2}
    write_world(dict(cfg, shard_size=5), tmp_path, progress=False)
    from mmablate.data.shards import expand_shards, read_all, shard_counts

    shards = expand_shards(tmp_path / "cc3m")  # img2dataset's layout: 00000.tar + _stats.json
    assert [s.rsplit("/", 1)[1] for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert shard_counts(shards) == [5, 5, 2]
    import torch

    tok = world_tokenizer(24)
    images, ids, skipped = read_all(shards, lambda im: torch.from_numpy(np.asarray(im).copy()),
                                    tok, progress=False)
    assert len(ids) == 12 and skipped == 0 and images.shape == (12, 16, 16, 3)
    assert tok.stoi["<unk>"] not in ids.tolist()
    names = (tmp_path / "imagenet/classnames.txt").read_text().split("\n")[:-1]
    folders = sorted(p.name for p in (tmp_path / "imagenet/val").iterdir())
    assert [n.replace(" ", "_") for n in names] == folders  # classnames in folder order
