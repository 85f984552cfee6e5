"""One figure per ablation: each metric against the replaced value, mean ± std over seeds.
Numeric values (e.g. λ) are drawn as lines with error bars, named values (e.g. µ) as bars for
rates (unit %) and as points for scores whose zero means nothing (the axis then fits the data)."""
from __future__ import annotations

from ..util import read_json
from .summary import REHEARSAL_NOTE, summarise


def make_figure(ablation_cfg_path, metrics_csv, out_png, out_pdf) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    ab = read_json(ablation_cfg_path)
    df = pd.read_csv(metrics_csv, dtype={"variant": str})
    recs = summarise(ab, df)
    variants = [r for r in recs if r["kind"] == "variant"]
    refs = [r for r in recs if r["kind"] != "variant"]
    rows = {r["label"]: r for r in ab["rows"]}
    numeric = all(isinstance(rows[r["label"]]["value"], (int, float)) and
                  not isinstance(rows[r["label"]]["value"], bool) for r in variants)
    ms = ab["metrics"]
    fig, axes = plt.subplots(1, len(ms), figsize=(3.6 * len(ms), 3.2), squeeze=False)
    for ax, m in zip(axes[0], ms):
        mean = [r[m["id"]][0] for r in variants]
        std = [0 if r[m["id"]][1] != r[m["id"]][1] else r[m["id"]][1] for r in variants]
        if numeric:
            xs = [rows[r["label"]]["value"] for r in variants]
            order = sorted(range(len(xs)), key=lambda i: xs[i])
            ax.errorbar([xs[i] for i in order], [mean[i] for i in order],
                        yerr=[std[i] for i in order], marker="o", capsize=3)
            for i, r in enumerate(variants):
                if r["is_baseline"]:
                    ax.plot(xs[i], mean[i], marker="*", ms=14, color="C3", ls="none",
                            label="baseline")
            ax.set_xlabel(ab["key"].split(".")[-1])
        else:
            colours = ["C3" if r["is_baseline"] else "C0" for r in variants]
            if m.get("unit") == "%":  # a rate: bars from zero
                ax.bar(range(len(variants)), mean, yerr=std, capsize=3, color=colours)
            else:  # a score whose zero means nothing (a reward, a loss): points, axis fit to data
                for i in range(len(variants)):
                    ax.errorbar([i], [mean[i]], yerr=[std[i]], marker="*" if colours[i] == "C3"
                                else "o", ms=10 if colours[i] == "C3" else 6, capsize=3,
                                color=colours[i], ls="none")
                ax.set_xlim(-0.5, len(variants) - 0.5)
            ax.set_xticks(range(len(variants)), [r["label"] for r in variants], rotation=30,
                          ha="right", fontsize=8)
        c = df[df["metric"] == m["id"]]["chance"].dropna()
        if len(c):
            ax.axhline(float(c.iloc[0]), ls=":", color="grey", label="chance")
        for k, r in enumerate(refs):
            ax.axhline(r[m["id"]][0], ls="--", color=f"C{k + 4}", label=r["label"])
        ax.set_title(m["label"], fontsize=9)
        ax.set_ylabel(m.get("unit", ""))
        ax.legend(fontsize=7)
    fig.suptitle(f"{ab['study']} / {ab['ablation']} — scale: {ab['scale']}, "
                 f"{len(ab['seeds'])} seeds, {ab['dataset']}"
                 + (f"\n{REHEARSAL_NOTE}" if ab["scale"] == "rehearsal" else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    fig.savefig(out_pdf)
    plt.close(fig)
