"""Zero-shot classification: an ImageNet `val/<synset>/` stand-in tree, open_clip's class names
and 80 templates, the DataLoader path against the tensor path and a direct computation."""
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmablate.errors import DataError
from mmablate.metrics import zeroshot as Z

from .conftest import REPO

# the first synsets of ImageNet-1K in the standard (sorted) order: tench, goldfish, great white shark
SYNSETS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture(scope="module")
def world_clip():
    from mmablate.models import clip as clipm

    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())["studies"]["rankclip"]
    torch.manual_seed(0)
    model, preprocess, tok = clipm.build(cfg["model"])
    return model.eval(), preprocess, tok


def _imagenet_val(root, per_class=3, n_classes=1000):
    """val/<synset>/*.JPEG: three real synsets with images, then placeholder synsets sorted
    after them (empty folders) up to 1,000."""
    names = SYNSETS + [f"n9{i:07d}" for i in range(n_classes - len(SYNSETS))]
    rng = np.random.default_rng(0)
    for k, s in enumerate(names):
        (root / "val" / s).mkdir(parents=True)
        if k < len(SYNSETS):
            for j in range(per_class):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
                    root / "val" / s / f"ILSVRC2012_val_{k * 10 + j:08d}.JPEG")
    return names


def test_open_clip_imagenet_metadata(world_clip):  # (open_clip imported without transformers)
    names, templates = Z.imagenet_metadata()
    assert len(names) == 1000 and len(templates) == 80
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert templates[0]("dog") == "a bad photo of a dog."


def test_imagenet_val_layout_maps_synsets_to_the_standard_order(tmp_path, world_clip):
    from mmablate.studies.rankclip.evaluate import class_set

    _imagenet_val(tmp_path)
    ds, names, templates = class_set({"class_source": "imagenet1k", "classify_dir": "val"},
                                     tmp_path)
    assert len(names) == 1000 and len(templates) == 80 and len(ds) == 9
    assert sorted(set(ds.labels)) == [0, 1, 2] and [names[k] for k in (0, 1, 2)] == \
        ["tench", "goldfish", "great white shark"]
    assert all(p.parent.name == SYNSETS[y] for p, y in zip(ds.paths, ds.labels))


def test_imagenet_val_with_the_wrong_class_count_is_a_clear_error(tmp_path, world_clip):
    from mmablate.studies.rankclip.evaluate import class_set

    _imagenet_val(tmp_path, n_classes=5)
    with pytest.raises(DataError, match=r"val: 5 class folders; ImageNet-1K val has 1000"):
        class_set({"class_source": "imagenet1k", "classify_dir": "val"}, tmp_path)


def test_callable_and_format_templates_give_the_same_classifier(world_clip):
    model, _, tok = world_clip
    names = ["red circle", "blue square"]
    a = Z.class_embeddings(model, tok, names, ["a {c}", "a large {c}"])
    b = Z.class_embeddings(model, tok, names, [lambda c: f"a {c}", lambda c: f"a large {c}"])
    torch.testing.assert_close(a, b)
    c = Z.class_embeddings(model, tok, names, ["a {c}", "a large {c}"], batch=1)  # batched prompts
    torch.testing.assert_close(a, c)


def test_loader_path_equals_tensor_path_and_a_direct_computation(world_clip, tmp_path):
    """Top-k through a DataLoader over class folders = the tensor path = argsort of the cosine
    logits computed directly (CLIP's recipe: normalised prompt embeddings averaged, renormalised)."""
    from torch.utils.data import DataLoader

    from mmablate.data.imagetext import ClassFolder

    model, preprocess, tok = world_clip
    classes = ["red_circle", "blue_square", "green_cross", "cyan_diamond", "yellow_triangle"]
    rng = np.random.default_rng(1)
    for c in classes:
        (tmp_path / "val" / c).mkdir(parents=True)
        for j in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "val" / c / f"{j}.png")
    names = [c.replace("_", " ") for c in classes]
    templates = ["a {c}", "a small {c}"]
    ks = (1, 3, 5, 10)
    ds = ClassFolder(tmp_path / "val", preprocess, preload=False)
    via_loader = Z.zeroshot_topk(model, tok, DataLoader(ds, batch_size=3), None, names,
                                 templates, ks)
    pre = ClassFolder(tmp_path / "val", preprocess)
    via_tensor = Z.zeroshot_topk(model, tok, pre.images, torch.tensor(pre.labels), names,
                                 templates, ks, batch=7)
    with torch.no_grad():
        W = []
        for n in names:
            e = model.encode_text(tok([t.format(c=n) for t in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            W.append(e.mean(0) / e.mean(0).norm())
        W = torch.stack(W)
        f = model.encode_image(pre.images)
        f = f / f.norm(dim=-1, keepdim=True)
        rank = (f @ W.T).argsort(dim=1, descending=True)
    y = torch.tensor(pre.labels)
    direct = {k: 100.0 * (rank[:, :k] == y[:, None]).any(1).float().mean().item() for k in ks}
    assert via_loader == pytest.approx(via_tensor) and via_tensor == pytest.approx(direct)
    assert via_loader[10] == 100.0 and via_loader[1] <= via_loader[3] <= via_loader[5]


def test_rankclip_eval_on_an_imagenet_stand_in(world_clip, tmp_path, monkeypatch):
    """The paper-scale evaluation path on stand-ins: val/<synset>/ JPEGs, open_clip's 1,000
    class names (2 of the 80 templates, for time: the 80 are checked above), a DataLoader with a
    worker; top-1/3/5/10 and their chance."""
    from mmablate.studies.rankclip.evaluate import evaluate

    real = Z.imagenet_metadata
    monkeypatch.setattr(Z, "imagenet_metadata", lambda: (real()[0], real()[1][:2]))

    model, _, _ = world_clip
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())["studies"]["rankclip"]
    _imagenet_val(tmp_path, per_class=2)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    ev = {"dataset_name": "ImageNet-1K", "class_source": "imagenet1k", "classify_dir": "val",
          "batch_size": 4, "num_workers": 1}
    metrics, chance = evaluate({"model": cfg["model"], "eval": ev}, tmp_path / "model.pt",
                               tmp_path)
    assert sorted(metrics) == ["zeroshot_top1", "zeroshot_top10", "zeroshot_top3",
                               "zeroshot_top5"]
    assert chance["zeroshot_top1"] == pytest.approx(0.1) and chance["zeroshot_top10"] == 1.0
    assert all(v in {100.0 * i / 6 for i in range(7)} for v in metrics.values())  # 6 images
