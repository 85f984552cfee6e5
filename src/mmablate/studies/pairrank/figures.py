"""The ψ-quality distribution of every quality metric with each threshold's cut drawn on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def distribution_figure(cfg: dict, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...util import read_json
    from ..spec import PAIRRANK
    from .selection import quality

    QUALITY_LABELS = PAIRRANK.labels("selection.quality")
    THRESHOLD_LABELS = PAIRRANK.labels("selection.threshold")

    by_q: dict[str, list] = {}
    for key, path in sorted(cfg["selections"].items()):
        q, t = key.split("|")
        by_q.setdefault(q, []).append((t, read_json(path)))
    fig, axes = plt.subplots(1, len(by_q), figsize=(4.2 * len(by_q), 3.2), squeeze=False)
    colours = {"fixed": "tab:red", "dynamic": "tab:green", "adaptive": "tab:purple"}
    order = list(QUALITY_LABELS)  # the paper's product first
    for ax, (q, sels) in zip(axes[0], sorted(by_q.items(), key=lambda kv: order.index(kv[0]))):
        sc = np.load(sels[0][1]["scores"])
        vals = quality(sc["winner"], sc["loser"], q, sels[0][1]["eps"])
        if q == "ratio":  # a long right tail: log-spaced bins on a log axis
            lo = max(float(vals[vals > 0].min()) if (vals > 0).any() else 1e-3, 1e-3)
            ax.hist(np.clip(vals, lo, None), bins=np.geomspace(lo, max(vals.max(), lo * 10), 60),
                    color="0.6")
            ax.set_xscale("log")
        else:
            ax.hist(vals, bins=60, color="0.6")
        ax.set_yscale("log")
        for t, s in sels:
            truth = s.get("world_truth")  # world only: how many kept pairs are really clean
            clean = f", {100 * truth['kept']['clean']:.0f}% clean" if truth else ""
            ax.axvline(s["cut"], color=colours.get(t, "k"), lw=1.5,
                       label=f"{THRESHOLD_LABELS[t]}: keeps {100 * s['fraction']:.2f}%{clean}")
        truth = sels[0][1].get("world_truth")
        if truth:
            ax.plot([], [], ls="none", label=f"all pairs: {100 * truth['all']['clean']:.0f}% clean "
                                             "(world truth)")
        ax.set_title(f"Q = {QUALITY_LABELS[q]}", fontsize=9)
        ax.set_xlabel("pair quality Q (ψ = reward model, normalised)")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("pairs")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    fig.savefig(Path(out_png).with_suffix(".pdf"))
    plt.close(fig)
