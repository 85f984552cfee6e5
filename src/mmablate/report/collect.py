"""Gathers per-(variant, seed) evaluation records into the tidy metrics table.

Columns: study, ablation, variant, is_baseline, seed, metric, value, chance, scale, config_hash
— one row per (study, ablation, variant, seed, metric).
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError
from ..util import read_json

COLUMNS = ["study", "ablation", "variant", "is_baseline", "seed", "metric", "value", "chance",
           "scale", "config_hash"]


def collect(ablation_cfg_path, out_csv) -> int:
    ab = read_json(ablation_cfg_path)
    rows = []
    for r in ab["rows"]:
        for seed, path in r["evals"].items():
            rec = read_json(path)
            for m in ab["metrics"]:
                mid = m["id"]
                if mid not in rec["metrics"]:
                    raise DataError(f"{path}: no metric {mid!r} (has {sorted(rec['metrics'])})")
                chance = rec.get("chance", {}).get(mid)
                rows.append({"study": ab["study"], "ablation": ab["ablation"],
                             "variant": r["label"], "is_baseline": r["is_baseline"],
                             "seed": int(seed), "metric": mid, "value": rec["metrics"][mid],
                             "chance": "" if chance is None else chance, "scale": ab["scale"],
                             "config_hash": r["config_hash"]})
    write_rows(out_csv, rows)
    return len(rows)


def write_rows(path, rows) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)


def concat(inputs, out_csv) -> int:
    import pandas as pd

    frames = [pd.read_csv(p, dtype={"chance": "object", "variant": str}) for p in inputs]
    df = pd.concat(frames, ignore_index=True)[COLUMNS] if frames else pd.DataFrame(columns=COLUMNS)
    df.to_csv(out_csv, index=False)
    return len(df)
