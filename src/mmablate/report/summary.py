"""Mean and std over seeds of each (row, metric) of an ablation, from the tidy metrics."""
from __future__ import annotations


def summarise(ab: dict, df):
    """One record per row of the ablation: {label, is_baseline, kind, n, <metric>: (mean, std)}."""
    out = []
    for r in ab["rows"]:
        sub = df[df["variant"].astype(str) == str(r["label"])]
        rec = {"label": r["label"], "is_baseline": r["is_baseline"], "kind": r.get("kind", "variant"),
               "n": int(sub["seed"].nunique())}
        for m in ab["metrics"]:
            v = sub[sub["metric"] == m["id"]]["value"].astype(float)
            rec[m["id"]] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan"))
        out.append(rec)
    return out
