"""PC-CLIP's own benchmarks (mmablate.studies.pcclip.benchmarks): each loader on its stand-in
(mmablate.rehearsal.pcclip_bench), each difference task's construction, the accuracy on a known
case, the table columns and the preflight."""
import copy
from pathlib import Path

import pytest
import torch

from mmablate.errors import ConfigError, DataError
from mmablate.rehearsal.pcclip_bench import write_benchmarks
from mmablate.studies.pcclip import benchmarks as B


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    r = tmp_path_factory.mktemp("bench")
    write_benchmarks(r)
    return {"cifar10": r / "cifar10", "cifar100": r / "cifar100", "eurosat": r / "eurosat",
            "sun397": r / "sun397", "flowers": r / "flowers102",
            "cub": r / "cub" / "CUB_200_2011", "awa2": r / "Animals_with_Attributes2"}


@pytest.mark.parametrize("name,n,n_classes", [
    ("cifar10", 20, 10), ("cifar100", 116, 100), ("eurosat", 2, 10), ("sun397", 2, 4),
    ("flowers", 114, 102), ("cub", 16, 200), ("awa2", 30, 10)])
def test_loader_reads_stand_in(roots, name, n, n_classes):
    ds = B.load(name, roots)
    assert len(ds) == n and len(ds.classes) == n_classes and len(ds.labels) == n
    img, y = ds[0]
    assert img.size == ((32, 32) if name.startswith("cifar") else (16, 16))
    assert y == ds.labels[0] and 0 <= y < n_classes


def test_class_names_as_the_authors_read_them(roots):
    assert B.load("sun397", roots).classes == ["abbey", "beach", "campus", "dam"]
    assert B.load("cub", roots).classes[0] == "Bird_001"  # "001.Bird_001" less its number
    fl = B.load("flowers", roots).classes
    assert fl[0] == "pink primrose" and len(fl) == 102
    assert B.prompts(["cat"]) == ["This is a photo of a cat"]


def test_authors_split_is_their_randperm():
    torch.manual_seed(0)
    perm = torch.randperm(30).tolist()
    train, test = B.authors_split(30)
    assert train == perm[:27] and test == perm[27:]


def test_awa2_reads_test_classes_and_predicate_rows(roots):
    ds = B.load("awa2", roots)
    assert ds.classes == sorted(ds.classes)
    all_classes = [l.split("\t")[1] for l in (roots["awa2"] / "classes.txt").read_text().split("\n") if l]
    rows = (roots["awa2"] / "predicate-matrix-binary.txt").read_text().splitlines()
    k = all_classes.index(ds.classes[3])
    assert ds.class_rows[3].tolist() == [int(x) for x in rows[k].split()]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="test_batch"):
        B.cifar(tmp_path)
    with pytest.raises(ConfigError, match="roots.cub"):
        B.load("cub", {})


def test_group_pairs_known_case():
    # 2 large (15), 2 small (36), 1 other class: 4 cross pairs, text by the first's group
    labels = [15, 36, 7, 15, 36]
    pairs = B.group_pairs(labels, B.CIFAR100_SIZE, seed=0)
    assert len(pairs) == 4
    for a, b, t in pairs:
        assert {labels[a], labels[b]} == {15, 36}
        assert t == B.CIFAR100_SIZE["texts"][0 if labels[a] == 15 else 1]
    # the sampling order is the authors' randperm
    torch.manual_seed(0)
    perm = torch.randperm(4).tolist()
    sub = [0, 1, 3, 4]
    assert (pairs[0][0], pairs[0][1]) in {(sub[perm[0]], sub[perm[j]]) for j in (1, 2, 3)}


def test_difference_tasks_build_on_stand_ins(roots):
    for task in B.DIFFERENCE:
        ds = B.load(B.DIFF_DATASET[task], roots)
        pairs = B.task_pairs(task, ds, 1, {})
        assert pairs and all(ds.labels[a] != ds.labels[b] for a, b, _ in pairs)
    ds = B.load("awa2", roots)
    col = ds.predicates.index("big")
    for a, b, t in B.awa2_size_pairs(ds, "big"):
        big_a = ds.class_rows[ds.labels[a], col]
        assert big_a != ds.class_rows[ds.labels[b], col]
        assert t == B.AWA2_SIZE_TEXTS[0 if big_a else 1]
    assert B.awa2_size_pairs(ds, "big", 0) == B.task_pairs("awa2_size", ds, 4, {})  # seed fixed
    with pytest.raises(DataError, match="enormous"):
        B.awa2_size_pairs(ds, "enormous")


def test_attribute_text_and_cub_names():
    t = B.attribute_text(["red", "big", "fish"], [1, 1, 0], [0, 1, 1])
    assert t == "The first image has attributes of red, while the second image has attributes of fish"
    assert B.attribute_text(["a", "b"], [1, 0], [0, 1], drop=("a",)).endswith("attributes of b")
    assert B.cub_attribute_text("has_bill_shape::curved_(up_or_down)") == \
        "curved (up or down) bill shape"


def test_cub_pairs_texts_from_class_attributes(roots):
    ds = B.load("cub", roots)
    pairs = B.cub_pairs(ds, 0, threshold=50.0)
    a, b, t = pairs[0]
    on = ds.class_attributes >= 50.0
    want = B.attribute_text(ds.attribute_names, on[ds.labels[a]], on[ds.labels[b]])
    assert t == want


def test_difference_accuracy_known_case():
    from mmablate.studies.pcclip.losses import Combine

    sub = Combine("subtract", 2)
    fa = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    fb = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.nn.functional.normalize(torch.tensor([[1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]]), dim=-1)
    # cos(t, a - b): +, +, - → 2 of 3 (the authors' count); both orders agree for subtraction
    assert B.difference_accuracy(sub, fa, fb, t) == pytest.approx(100 * 2 / 3)
    m, se = B.mean_se([50.0, 70.0])
    assert m == 60.0 and se == pytest.approx(10 / 2 ** 0.5)


def test_top1_known_case():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert B.top1(img, txt, [0, 1, 1]) == pytest.approx(100 * 2 / 3)


def test_table_columns_name_their_datasets():
    from mmablate.studies.pcclip import pipeline as P

    scfg = {"eval": {"benchmarks": {"roots": {}}}}
    cols = P.STUDY.table_metrics(scfg, ["diff_acc", "zeroshot_acc", "clipscore"])
    assert cols == ["diff_acc_awa2_size", "diff_acc_cub", "diff_acc_cifar100_size",
                    "diff_acc_flowers_color", "diff_acc", "zeroshot_acc_cifar10",
                    "zeroshot_acc_cifar100", "zeroshot_acc_awa2", "zeroshot_acc_eurosat",
                    "zeroshot_acc_sun397", "zeroshot_acc_cub", "zeroshot_acc_flowers",
                    "zeroshot_acc", "clipscore"]
    assert P.STUDY.METRICS["zeroshot_acc_cifar100"]["label"] == "Zero-shot Top-1 (CIFAR-100)"
    assert P.STUDY.METRICS["diff_acc_awa2_size"]["label"] == "Difference-based Classification (AwA2 size)"
    labels = P.STUDY.metric_labels(scfg, "paper")
    assert labels["diff_acc"].endswith("(COCO pairs)") and labels["zeroshot_acc"].endswith(
        "(ImageNet-1K)")
    # without benchmarks (the world): unchanged
    assert P.STUDY.table_metrics({"eval": {}}, ["diff_acc", "zeroshot_acc"]) == ["diff_acc",
                                                                         "zeroshot_acc"]
    assert P.STUDY.metric_labels({"eval": {}}, "tiny") == {}


def test_paper_yaml_benchmarks_and_validation():
    import yaml

    from mmablate.pipeline import REPO
    from mmablate.studies.pcclip import pipeline as P

    paper = yaml.safe_load((REPO / "config/scales/paper.yaml").read_text())
    b = paper["studies"]["pcclip"]["eval"]["benchmarks"]
    assert b["template"] == B.TEMPLATE and b["seeds"] == 5
    assert set(b["zeroshot"]) == set(B.ZEROSHOT) and set(b["difference"]) == set(B.DIFFERENCE)
    assert all(str(v).startswith("/datasets/") for v in b["roots"].values())
    from mmablate.config import load

    merged = load([str(REPO / "config/config.yaml"), str(REPO / "config/scales/paper.yaml")])
    scfg = copy.deepcopy(merged["studies"]["pcclip"])
    del scfg["eval"]["benchmarks"]["roots"]["sun397"]
    with pytest.raises(ConfigError, match="eval.benchmarks.roots.sun397"):
        P.STUDY.validate({**scfg, "ablations": []}, "paper.yaml: studies.pcclip")


def test_preflight_names_missing_root_and_file(roots, tmp_path):
    from mmablate.studies.pcclip.preflight import check_benchmarks

    b = {"roots": {k: str(v) for k, v in roots.items()}}
    check_benchmarks(b, "rehearsal.yaml")  # the stand-ins pass
    bad = copy.deepcopy(b)
    bad["roots"]["eurosat"] = str(tmp_path / "nope")
    with pytest.raises(DataError, match=r"rehearsal.yaml: studies.pcclip.eval.benchmarks.roots."
                                        r"eurosat: .*nope: dataset root is not a directory"):
        check_benchmarks(bad, "rehearsal.yaml")
    empty = tmp_path / "awa2"
    empty.mkdir()
    bad["roots"] = {**b["roots"], "awa2": str(empty)}
    with pytest.raises(DataError, match="roots.awa2: .*has no classes.txt"):
        check_benchmarks(bad, "rehearsal.yaml")


def test_run_on_stand_ins(roots):
    """The whole benchmark pass on a random miniature CLIP: every column, chance, pair counts."""
    import open_clip

    from mmablate.studies.pcclip.losses import Combine

    torch.manual_seed(0)
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16,
                                           "patch_size": 16, "head_width": 8},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2,
                        "layers": 1}}
    model = open_clip.model.CLIP(**cfg).eval()
    pre = open_clip.image_transform(32, is_train=False)
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=32)
    metrics, chance, extra = B.run(model, tok, Combine("subtract", 16), pre,
                                   {"roots": {k: str(v) for k, v in roots.items()}, "seeds": 2},
                                   batch=32, workers=0, progress=False)
    assert set(metrics) == {B.zeroshot_id(n) for n in B.ZEROSHOT} | {B.diff_id(t) for t in
                                                                    B.DIFFERENCE}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    assert chance["zeroshot_acc_cub"] == 0.5 and chance["diff_acc_cub"] == 50.0
    assert extra["diff_pairs"]["flowers_color"] == [72, 72]
    assert extra["benchmark_sizes"]["cifar100"] == 116


def test_cost_counts_the_benchmarks():
    from mmablate.cost.stages import BENCH_CLASSES, _pcclip_bench_work

    mb = {"arch": "ViT-L-14"}
    img, txt = _pcclip_bench_work(mb, {"roots": {}, "zeroshot": ["cifar10", "cub"],
                                       "difference": ["cub"], "seeds": 5})
    assert img.samples == 10_000 + 5_794 + 1 * 5 * 100
    assert txt.samples == 5 * 4_950 + 10 + 200
    assert set(BENCH_CLASSES) == set(B.ZEROSHOT)


def test_datasets_load_in_spawned_workers(roots):
    """The MD5-free torchvision classes unpickle in a fresh process (spawn/forkserver workers)."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    ds = B.load("flowers", roots, T.ToTensor())
    x = next(iter(DataLoader(B._Images(ds, range(4)), batch_size=4, num_workers=1,
                             multiprocessing_context="spawn")))
    assert x.shape == (4, 3, 16, 16)
