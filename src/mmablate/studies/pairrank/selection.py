"""Quality-aware pair ranking and selection (numpy only: a light stage).

ψ is normalised to [0, 1] by min–max over every scored image of the pair set (as the paper
normalises the reward before forming Q). For a pair with winner w and loser l:

* ``product``    Q = ψ_w · (1 − ψ_l)          (the paper's)
* ``difference`` Q = ψ_w − ψ_l
* ``ratio``      Q = ψ_w / (ψ_l + ε)

Thresholds:

* ``fixed``    — the top ``top_fraction`` of pairs by Q (the paper's 5.33%);
* ``dynamic``  — Otsu's split of the Q distribution: the cut that maximises the between-class
  variance w₀w₁(µ₀ − µ₁)² of the two sides (the 2-means / two-mode split of the scores); the upper
  class is kept. It needs no tuning and follows the shape of each metric's distribution;
* ``adaptive`` — by validation performance: short Diffusion-DPO runs on the top fraction of each
  candidate in ``adaptive.fractions`` are scored by ψ on held-out validation prompts (each is
  its own pipeline job); the fraction with the best mean validation reward is kept.
"""
from __future__ import annotations

import json

import numpy as np

from ...errors import DataError

QUALITIES = {"product": "ψw·(1−ψl)", "difference": "ψw−ψl", "ratio": "ψw/(ψl+ε)"}
THRESHOLDS = {"fixed": "fixed top 5.33%", "dynamic": "dynamic (Otsu split)",
              "adaptive": "adaptive (validation)"}


def normalise(w: np.ndarray, l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = min(w.min(), l.min())
    hi = max(w.max(), l.max())
    span = hi - lo if hi > lo else 1.0
    return (w - lo) / span, (l - lo) / span


def quality(w, l, metric: str, eps: float = 0.01) -> np.ndarray:
    w, l = normalise(np.asarray(w, float), np.asarray(l, float))
    if metric == "product":
        return w * (1 - l)
    if metric == "difference":
        return w - l
    if metric == "ratio":
        return w / (l + eps)
    raise ValueError(f"unknown quality metric {metric!r}; known: {sorted(QUALITIES)}")


def top_k(q: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the top `fraction` of pairs by q (at least one), best first; stable on ties."""
    k = max(1, int(round(fraction * len(q))))
    return np.argsort(-q, kind="stable")[:k]


def otsu_cut(q: np.ndarray) -> float:
    """The threshold maximising the between-class variance of q (exact, over sorted values)."""
    s = np.sort(np.asarray(q, float))
    n = len(s)
    if n < 2 or s[0] == s[-1]:
        return float(s[0]) if n else 0.0
    c = np.cumsum(s)
    k = np.arange(1, n)  # lower class = s[:k]
    m0 = c[:-1] / k
    m1 = (c[-1] - c[:-1]) / (n - k)
    between = (k / n) * ((n - k) / n) * (m0 - m1) ** 2
    between[s[1:] == s[:-1]] = -1  # cut only between distinct values
    j = int(np.argmax(between))
    return float((s[j] + s[j + 1]) / 2)


def select(w, l, metric: str, threshold: str, top_fraction: float, eps: float = 0.01,
           fraction: float | None = None) -> dict:
    """Selected pair indices and the threshold used. For `adaptive`, `fraction` is the chosen one."""
    q = quality(w, l, metric, eps)
    if len(q) == 0:
        raise DataError("no scored pairs to select from")
    if threshold == "fixed":
        idx = top_k(q, top_fraction)
        cut = float(q[idx[-1]])
    elif threshold == "dynamic":
        cut = otsu_cut(q)
        idx = np.argsort(-q, kind="stable")
        idx = idx[q[idx] > cut]
    elif threshold == "adaptive":
        if fraction is None:
            raise ValueError("adaptive threshold needs the fraction chosen on validation")
        idx = top_k(q, fraction)
        cut = float(q[idx[-1]])
    else:
        raise ValueError(f"unknown threshold {threshold!r}; known: {sorted(THRESHOLDS)}")
    if len(idx) == 0:
        raise DataError(f"the {threshold} threshold ({cut:.4g}) keeps zero of {len(q)} pairs")
    return {"indices": [int(i) for i in idx], "cut": cut, "fraction": len(idx) / len(q),
            "n_kept": int(len(idx)), "n_pairs": int(len(q))}


def choose_fraction(results: dict) -> tuple[float, dict]:
    """The candidate fraction with the best validation reward ({fraction: score})."""
    if not results:
        raise DataError("adaptive threshold: no validation results")
    best = max(sorted(results), key=lambda f: results[f])
    return best, results


def selection_truth(pairs_path, indices) -> dict | None:
    """World only: what the kept pairs really are, from the renderers' ground truth (the parquet's
    `truth_0/1` columns; None for real data, which has none). Indices are those of the loaded
    pairs (ties dropped, file order), as a selection stores them.

    clean    — the winner shows the prompt's colour and the loser does not;
    reversed — the loser shows it and the winner does not (the label contradicts the truth).
    """
    import pyarrow.parquet as pq

    from ...data.pickapic import read_table, shard_files, winner_first

    # real data has no ground truth: said from the shards' schemas, without reading their rows
    if not all({"truth_0", "truth_1"} <= set(pq.read_schema(f).names) for f in shard_files(pairs_path)):
        return None
    df = read_table(pairs_path, required=("label_0", "label_1"), columns=["truth_0", "truth_1"])
    keep, win_t, lose_t = winner_first(df, pairs_path, "truth")
    win = np.array([json.loads(t)["colour_ok"] for t in win_t], bool)
    lose = np.array([json.loads(t)["colour_ok"] for t in lose_t], bool)

    def rates(idx):
        w, l = win[idx], lose[idx]
        return {"n": int(len(idx)), "winner_colour_ok": float(w.mean()),
                "loser_colour_ok": float(l.mean()), "clean": float((w & ~l).mean()),
                "reversed": float((~w & l).mean())}

    return {"kept": rates(list(indices)), "all": rates(list(range(len(keep))))}
