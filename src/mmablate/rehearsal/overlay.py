"""What ``config/scales/rehearsal.yaml`` may change in the paper configuration: the allow-list.

The rehearsal is worth something only if every job runs the paper's code path (streamed data, no
cache, per-benchmark evaluation jobs, per-shard scoring, accumulation, checkpointing, the SD-1.5
recipe's schedule, LoRA of the paper's targets). So its overlay may override only

* **paths** — where data, models and outputs are (a hub id replaced by a local folder counts as a
  path; so does the judge's endpoint URL);
* **model sizes** — which architecture config (``arch``, a model ``cfg``), the LoRA rank/alpha;
* **budgets** — steps, epochs, sample/image/pair/prompt counts, generated tokens, sampling
  steps, and the step intervals tied to them (warm-up, checkpoint and log intervals);
* **batch sizes** — micro-batch, effective batch, shuffle buffer;
* **worker counts** — DataLoader workers, torch threads per job, ranks per training job
  (``gpus``);

plus two top-level keys of its own: ``results`` (a path: the rehearsal's outputs never overwrite
another scale's) and ``rehearsal: true`` (read by the report only: the tables' caption).

Never a data ``source``, ``cache``, ``jobs`` mode, ``seed``/``seeds``, schedule kind, LoRA
``target_modules``, ``enabled``, ``plan``, ``ablations``, ``scale``, a loss, ``precision``… —
nothing in that list is on the allow-list, and `overrides` refuses whatever is not on it.

An *override* is a leaf of the overlay (a dotted key) whose value differs from the paper
configuration it is laid on (config/config.yaml + config/scales/paper.yaml, merged as Snakemake
merges them); a leaf equal to the paper's value changes nothing and is not one. Where the overlay
puts a mapping in place of a scalar (a model ``cfg: null`` given a miniature's config), each
of its leaves is an override, and the first allowed pattern matching a prefix covers it.
"""
from __future__ import annotations

import re

# (category, dotted key patterns): `*` is one key, `**` any number of keys (also none).
ALLOWED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("path", (
        "results",
        "**.root", "**.eval_root", "**.classify_root", "**.train_shards", "**.train_csv",
        "**.file", "**.files.*", "**.images", "**.questions", "**.answers", "**.context",
        "**.captions_json", "**.image_dir", "**.eval_csv", "**.classnames",
        "studies.pairrank.data.pairs", "studies.mmalign.data.pairs.file", "**.prompts",
        "**.checkpoint", "**.head_weights", "**.med_config", "**.image_reward.tokenizer",
        "**.processor",
        "**.pretrained", "**.clip_pretrained", "**.clip_config", "**.model",
        "studies.mmalign.model.base",
        "**.embedder", "**.endpoint", "**.cache_dir",
        "studies.pcclip.eval.benchmarks.roots.*",
    )),
    ("model size", (
        "**.arch", "**.clip_arch", "**.model.cfg", "**.model.cfg.**",
        "**.lora.r", "**.lora.alpha", "**.lora_rank", "**.lora_alpha",
    )),
    ("budget", (
        "**.steps", "**.epochs", "**.num_samples", "**.n_images", "**.n_train", "**.n_pairs",
        "**.n_eval", "**.limit", "**.limit_per_class", "**.max_new_tokens",
        "**.max_new_tokens_short", "**.per_prompt", "**.val_per_prompt", "**.slots",
        "**.warmup", "**.ckpt_every", "**.log_every",
    )),
    ("batch size", (
        "**.batch_size", "**.effective_batch", "**.batch", "**.shuffle_buffer",
    )),
    ("worker count", (
        "gpus", "threads", "**.num_workers",
    )),
    ("report", (
        "rehearsal",  # the tables' caption and scale column; no stage config holds it
    )),
)


def _regex(pattern: str) -> re.Pattern:
    parts = pattern.split(".")
    rx = ""
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if p == "**":
            rx += r"(?:[^.]+\.)*" if not last else r"(?:\.[^.]+)*"
            continue
        seg = r"[^.]+" if p == "*" else re.escape(p)
        rx += seg if (i == 0 or parts[i - 1] == "**") else r"\." + seg
    return re.compile(rx + r"\Z")


_COMPILED = [(cat, pat, _regex(pat)) for cat, pats in ALLOWED for pat in pats]


def category(key: str) -> str | None:
    """The allow-list category of dotted `key` ("path", "budget", …), None if not allowed."""
    for cat, _pat, rx in _COMPILED:
        if rx.match(key):
            return cat
    return None


def _leaves(d, prefix=""):
    if isinstance(d, dict) and d:
        for k, v in d.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, d


def _get(d, key):
    cur = d
    for k in key.split("."):
        if not isinstance(cur, dict) or k not in cur:
            return KeyError
        cur = cur[k]
    return cur


def overrides(overlay: dict, base: dict) -> list[tuple[str, str | None]]:
    """(dotted key, category or None) of each leaf of `overlay` that changes `base`."""
    out = []
    for key, value in _leaves(overlay):
        if not key or _get(base, key) == value:
            continue
        if value == {} and isinstance(_get(base, key), dict):  # an empty section merges to nothing
            continue
        cat = category(key)
        if cat is None:  # a mapping where the base has a scalar: allowed if a prefix is
            parts = key.split(".")
            for n in range(len(parts) - 1, 0, -1):
                prefix = ".".join(parts[:n])
                if not isinstance(_get(base, prefix), dict) and category(prefix):
                    cat = category(prefix)
                    break
        out.append((key, cat))
    return out


def check(overlay: dict, base: dict, where: str = "config/scales/rehearsal.yaml") -> None:
    """Raises ConfigError naming every override of `overlay` (on `base`) not on the allow-list."""
    from ..errors import ConfigError

    bad = [k for k, cat in overrides(overlay, base) if cat is None]
    if bad:
        raise ConfigError(
            f"{where}: the rehearsal may override only paths, model sizes, budgets, batch sizes "
            f"and worker counts (mmablate.rehearsal.overlay.ALLOWED), so that every job runs the "
            f"paper's code path; not: " + ", ".join(bad))


def check_files(overlay_path="config/scales/rehearsal.yaml",
                base=("config/config.yaml", "config/scales/paper.yaml")) -> list:
    """`check` of an overlay file on the merged paper configuration; returns its overrides."""
    import yaml

    from ..config import load

    overlay = yaml.safe_load(open(overlay_path)) or {}
    base_cfg = load(list(base))
    check(overlay, base_cfg, str(overlay_path))
    return overrides(overlay, base_cfg)


def paths_only(overlay: dict, base: dict) -> dict:
    """The part of `overlay` that only moves paths (its "path" overrides): laid on the paper
    configuration it plans the paper's own DAG on the rehearsal's data, budgets and sizes as
    paper.yaml has them, so its jobs per rule are the paper DAG's (the rehearsal must match)."""
    out: dict = {}
    for key, cat in overrides(overlay, base):
        if cat != "path":
            continue
        value = _get(overlay, key)
        cur = out
        parts = key.split(".")
        for k in parts[:-1]:
            cur = cur.setdefault(k, {})
        cur[parts[-1]] = value
    return out
