"""Mean and std over seeds of each (row, metric) of an ablation, from the tidy metrics."""
from __future__ import annotations

#: what a rehearsal's tables and figures say (config `rehearsal: true`: its ablation configs'
#: scale is "rehearsal"; config/scales/rehearsal.yaml)
REHEARSAL_NOTE = "rehearsal: random miniature models; numbers mean nothing"


def summarise(ab: dict, df):
    """One record per row of the ablation: {label, is_baseline, kind, n, <metric>: (mean, std)}."""
    out = []
    for r in ab["rows"]:
        sub = df[df["variant"].astype(str) == str(r["label"])]
        rec = {"label": r["label"], "is_baseline": r["is_baseline"], "kind": r.get("kind", "variant"),
               "n": int(sub["seed"].nunique())}
        for m in ab["metrics"]:
            rec[m["id"]] = mean_std(sub[sub["metric"] == m["id"]]["value"].astype(float))
        out.append(rec)
    return out


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (NaN std for a single value; NaN mean for none)."""
    import pandas as pd

    v = pd.Series(list(values), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def paired_reference(ab: dict):
    """The reference row whose evaluation differs per seed (e.g. a base model sampled with each
    seed's noise), so that variant − reference can be paired by seed; None if there is none."""
    for r in ab["rows"]:
        if r.get("kind", "variant") != "variant" and len(set(r.get("evals", {}).values())) > 1:
            return r
    return None


def paired_deltas(ab: dict, df, ref: dict) -> dict:
    """variant label → {metric: (mean, std) of the per-seed differences variant − reference}.

    Seeds shared by the variant and the reference only. Where both draw the same per-seed noise
    (samples, evaluation subsets) this removes the spread they share and shows the change itself.
    """
    def per_seed(label, metric):
        sub = df[(df["variant"].astype(str) == str(label)) & (df["metric"] == metric)]
        return dict(zip(sub["seed"].astype(int), sub["value"].astype(float)))

    out = {}
    for r in ab["rows"]:
        if r.get("kind", "variant") != "variant":
            continue
        rec = {}
        for m in ab["metrics"]:
            v, b = per_seed(r["label"], m["id"]), per_seed(ref["label"], m["id"])
            rec[m["id"]] = mean_std(v[s] - b[s] for s in sorted(set(v) & set(b)))
        out[r["label"]] = rec
    return out
