"""Stand-ins of PC-CLIP's evaluation datasets (`mmablate.studies.pcclip.benchmarks`) in the
formats they are distributed in, small random images, deterministic:

* ``cifar10/cifar-10-batches-py/{test_batch,batches.meta}`` and
  ``cifar100/cifar-100-python/{test,meta}`` — CIFAR's python pickles (``data`` uint8 N × 3072,
  ``labels`` / ``fine_labels``; ``label_names`` / ``fine_label_names``);
* ``eurosat/eurosat/2750/<class>/<class>_<k>.jpg`` — EuroSAT RGB's ten class folders;
* ``sun397/SUN397/ClassName.txt`` and ``SUN397/<letter>/<class>/sun_<id>.jpg``;
* ``flowers102/flowers-102/{jpg/image_<5 digits>.jpg,imagelabels.mat,setid.mat}`` — MATLAB files
  with ``labels`` (1-based) and ``trnid``/``valid``/``tstid``;
* ``CUB_200_2011/{classes,images,train_test_split,image_class_labels}.txt``, ``images/``,
  ``attributes/class_attribute_labels_continuous.txt`` and ``attributes.txt`` beside the folder
  (where the 2011 archive puts it);
* ``Animals_with_Attributes2/{classes,predicates,testclasses,trainclasses}.txt``,
  ``predicate-matrix-binary.txt`` and ``JPEGImages/<class>/<class>_<5 digits>.jpg``.

Every class of each difference task (`benchmarks.CIFAR100_SIZE`, `FLOWERS_COLOR`, the size
predicate) has images, so the rehearsal builds pairs for every task.
"""
from __future__ import annotations

import pickle
from pathlib import Path

SIZE = 16


def _img(rng):
    import numpy as np
    from PIL import Image

    a = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    a[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    a[4:10, 4:12] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(a)


def _save(path: Path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _img(rng).save(path, format="JPEG", quality=85)


def write_cifar(root: Path, hundred: bool, rng) -> int:
    import numpy as np

    from ..studies.pcclip.benchmarks import CIFAR100_SIZE

    n_cls = 100 if hundred else 10
    labels = list(range(n_cls))
    if hundred:  # two more of each size class
        labels += [c for c in CIFAR100_SIZE["large"] + CIFAR100_SIZE["small"] for _ in range(2)]
    else:
        labels += labels
    data = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
    names = [f"class{k:02d}" for k in range(n_cls)]
    d = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    d.mkdir(parents=True, exist_ok=True)
    test = {"data": data, ("fine_labels" if hundred else "labels"): labels,
            "filenames": [f"img_{i}.png" for i in range(len(labels))]}
    meta = {"fine_label_names": names, "coarse_label_names": ["group"]} if hundred else \
        {"label_names": names, "num_cases_per_batch": len(labels), "num_vis": 3072}
    with open(d / ("test" if hundred else "test_batch"), "wb") as f:
        pickle.dump(test, f)
    with open(d / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f)
    return len(labels)


EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
           "PermanentCrop", "Residential", "River", "SeaLake"]


def write_eurosat(root: Path, rng, per_class: int = 2) -> int:
    for c in EUROSAT:
        for k in range(1, per_class + 1):
            _save(root / "eurosat" / "2750" / c / f"{c}_{k}.jpg", rng)
    return len(EUROSAT) * per_class


def write_sun397(root: Path, rng, per_class: int = 3) -> int:
    classes = ["/a/abbey", "/b/beach", "/c/campus", "/d/dam"]
    d = root / "SUN397"
    d.mkdir(parents=True, exist_ok=True)
    (d / "ClassName.txt").write_text("".join(c + "\n" for c in classes))
    n = 0
    for c in classes:
        for k in range(per_class):
            _save(d / c.strip("/") / f"sun_{1000 + n:08d}.jpg", rng)
            n += 1
    return n


def write_flowers(root: Path, rng) -> int:
    import numpy as np
    from scipy.io import savemat

    from ..studies.pcclip.benchmarks import FLOWERS_COLOR

    d = root / "flowers-102"
    test = list(range(102)) + [c for c in FLOWERS_COLOR["large"] + FLOWERS_COLOR["small"]
                               for _ in range(2)]
    labels = [0, 1] + test  # image 1 training, 2 validation, the rest test (0-based classes)
    for i in range(len(labels)):
        _save(d / "jpg" / f"image_{i + 1:05d}.jpg", rng)
    savemat(d / "imagelabels.mat", {"labels": np.array(labels, dtype=np.uint8)[None] + 1})
    savemat(d / "setid.mat", {"trnid": np.array([[1]], dtype=np.uint16),
                              "valid": np.array([[2]], dtype=np.uint16),
                              "tstid": np.arange(3, len(labels) + 1, dtype=np.uint16)[None]})
    return len(labels)


def write_cub(root: Path, rng, n_classes_with_images: int = 8) -> int:
    import numpy as np

    classes = [f"{k:03d}.Bird_{k:03d}" for k in range(1, 201)]
    (root / "attributes").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(classes, 1)))
    imgs, split, lab = [], [], []
    i = 0
    for c in range(n_classes_with_images):
        for train in (1, 0, 0):
            i += 1
            rel = f"{classes[c]}/{classes[c].split('.')[1]}_{i:04d}.jpg"
            _save(root / "images" / rel, rng)
            imgs.append(f"{i} {rel}\n")
            split.append(f"{i} {train}\n")
            lab.append(f"{i} {c + 1}\n")
    (root / "images.txt").write_text("".join(imgs))
    (root / "train_test_split.txt").write_text("".join(split))
    (root / "image_class_labels.txt").write_text("".join(lab))
    parts = ["bill_shape", "wing_color", "upperparts_color", "breast_pattern", "back_color",
             "tail_shape", "size", "primary_color"]
    names = [f"has_{parts[a % len(parts)]}::value_{a}" for a in range(312)]
    (root.parent / "attributes.txt").write_text(
        "".join(f"{k} {n}\n" for k, n in enumerate(names, 1)))
    cont = rng.uniform(0, 100, (200, 312))
    np.savetxt(root / "attributes" / "class_attribute_labels_continuous.txt", cont, fmt="%.6f")
    return i


def write_awa2(root: Path, rng, per_class: int = 3) -> int:
    import numpy as np

    classes = [f"animal+{k:02d}" for k in range(1, 51)]
    preds = [f"predicate{k}" for k in range(1, 86)]
    preds[14], preds[15] = "big", "small"  # predicates.txt's 15th and 16th
    test = classes[::5]  # ten
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{k}\t{c}\n" for k, c in enumerate(classes, 1)))
    (root / "predicates.txt").write_text("".join(f"{k}\t{p}\n" for k, p in enumerate(preds, 1)))
    (root / "testclasses.txt").write_text("".join(c + "\n" for c in test))
    (root / "trainclasses.txt").write_text("".join(c + "\n" for c in classes if c not in test))
    m = rng.integers(0, 2, (50, 85))
    m[:, 14] = np.arange(50) % 2  # both sizes among the test classes
    m[:, 15] = 1 - m[:, 14]
    (root / "predicate-matrix-binary.txt").write_text(
        "".join(" ".join(str(int(x)) for x in row) + "\n" for row in m))
    n = 0
    for c in test:
        for k in range(per_class):
            _save(root / "JPEGImages" / c / f"{c}_{10001 + k:05d}.jpg", rng)
            n += 1
    return n


def write_benchmarks(out) -> dict:
    """All stand-ins under `out` (skipped when already written); the image counts."""
    import numpy as np

    out = Path(out)
    done = out / ".complete"
    if done.is_file():
        return {"bench": "present"}
    rng = np.random.default_rng(23)
    summary = {"cifar10": write_cifar(out / "cifar10", False, rng),
               "cifar100": write_cifar(out / "cifar100", True, rng),
               "eurosat": write_eurosat(out / "eurosat", rng),
               "sun397": write_sun397(out / "sun397", rng),
               "flowers102": write_flowers(out / "flowers102", rng),
               "CUB_200_2011": write_cub(out / "cub" / "CUB_200_2011", rng),
               "Animals_with_Attributes2": write_awa2(out / "Animals_with_Attributes2", rng)}
    done.write_text("ok\n")
    return summary
