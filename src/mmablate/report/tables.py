"""Paper-style ablation tables from the tidy metrics: rows = replacement values, columns = the
plan's metrics as mean ± std over seeds, the baseline marked, the best value in bold, and the
scale, dataset and seed count in the caption. Written as Markdown, LaTeX and CSV."""
from __future__ import annotations

from pathlib import Path

from ..util import read_json
from .flags import caption_notes
from .summary import REHEARSAL_NOTE, paired_deltas, paired_reference, summarise


def _best(ab, recs):
    best = {}
    for m in ab["metrics"]:
        vals = [r[m["id"]][0] for r in recs if r["kind"] == "variant"]
        if vals:
            best[m["id"]] = max(vals) if m.get("higher_is_better", True) else min(vals)
    return best


def _fmt(mean, std, digits=2, signed=False):
    s = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return s if std != std else f"{s} ± {std:.{digits}f}"  # std is NaN with one seed


def _chance_text(ab, df):
    parts = []
    for m in ab["metrics"]:
        c = df[df["metric"] == m["id"]]["chance"].dropna()
        if len(c):
            parts.append(f"{m['label']} {float(c.iloc[0]):.2f}")
    return ("Chance: " + ", ".join(parts) + ".") if parts else ""


def scale_note(scale: str) -> str:
    """What the caption adds to the scale: the world's metrics, or a rehearsal's."""
    if scale in ("tiny", "smoke"):
        return " (synthetic world: world metrics, not the paper's benchmarks)"
    if scale == "rehearsal":
        return f" (the paper configuration's code path on stand-in data; {REHEARSAL_NOTE})"
    return ""


def caption(ab, df, recs=None) -> str:
    n = len(ab["seeds"])
    world = scale_note(ab["scale"])
    part = ab["part"] or ab["key"]
    if part[:1].isupper() and part[1:2].islower():  # a plan's sentence, now mid-sentence
        part = part[0].lower() + part[1:]
    return (f"{ab['title']} — ablation of {part}. Scale: {ab['scale']}{world}; "
            f"evaluated on {ab['dataset']}. Mean ± std over {n} seed{'s' * (n != 1)}; "
            f"† = baseline (the paper's setting); best variant in bold. {_chance_text(ab, df)} "
            f"{caption_notes(ab, recs) if recs is not None else ''}").strip()


def make_tables(ablation_cfg_path, metrics_csv, out_md, out_tex, out_csv) -> None:
    import pandas as pd

    ab = read_json(ablation_cfg_path)
    df = pd.read_csv(metrics_csv, dtype={"variant": str})
    recs = summarise(ab, df)
    best = _best(ab, recs)
    heads = [f"{m['label']} ({m['unit']})" if m.get("unit") else m["label"] for m in ab["metrics"]]
    arrow = ["↑" if m.get("higher_is_better", True) else "↓" for m in ab["metrics"]]
    part = ab["key"].split(".")[-1]

    def cells(r, bold):
        row = []
        for m in ab["metrics"]:
            mean, std = r[m["id"]]
            s = _fmt(mean, std)
            is_best = r["kind"] == "variant" and abs(mean - best.get(m["id"], float("inf"))) < 1e-12
            row.append(bold(s) if is_best else s)
        return row

    def name(r):
        return r["label"] + (" †" if r["is_baseline"] else "")

    # Markdown
    cap = caption(ab, df, recs)
    lines = [f"**Table: {ab['study']} / {ab['ablation']}.** {cap}", "",
             "| " + " | ".join([part] + [f"{h} {a}" for h, a in zip(heads, arrow)]) + " |",
             "|" + "---|" * (len(heads) + 1)]
    for r in recs:
        lines.append("| " + " | ".join([name(r)] + cells(r, lambda s: f"**{s}**")) + " |")
    ref = paired_reference(ab)
    deltas = paired_deltas(ab, df, ref) if ref else {}
    if deltas:
        lines += ["", f"Change against the {ref['label']}, paired by seed (mean ± std over seeds of "
                  "variant − reference on the same seed):", "",
                  "| " + " | ".join([part] + [f"Δ {h} {a}" for h, a in zip(heads, arrow)]) + " |",
                  "|" + "---|" * (len(heads) + 1)]
        for r in recs:
            if r["label"] in deltas:
                d = deltas[r["label"]]
                lines.append("| " + " | ".join([name(r)] + [_fmt(*d[m["id"]], signed=True)
                                                           for m in ab["metrics"]]) + " |")
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text("\n".join(lines) + "\n")

    # LaTeX (booktabs)
    def tex(s):
        return s.replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$").replace("†", r"$^\dagger$")

    t = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex(cap)}}}",
         rf"\label{{tab:{ab['study']}-{ab['ablation']}}}",
         r"\begin{tabular}{l" + "c" * len(heads) + "}", r"\toprule",
         " & ".join([tex(part)] + [tex(f"{h} {a}").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
                                   for h, a in zip(heads, arrow)]) + r" \\", r"\midrule"]
    for r in recs:
        if r["kind"] != "variant":
            t.append(r"\midrule")
        t.append(" & ".join([tex(name(r))] + [tex(c) for c in cells(r, lambda s: rf"\textbf{{{s}}}")])
                 + r" \\")
    t += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    Path(out_tex).write_text("\n".join(t) + "\n")

    # CSV: numbers, not strings
    flat = []
    for r in recs:
        d = {part: r["label"], "is_baseline": r["is_baseline"], "kind": r["kind"], "n_seeds": r["n"],
             "scale": ab["scale"]}
        for m in ab["metrics"]:
            d[f"{m['id']}_mean"], d[f"{m['id']}_std"] = r[m["id"]]
            if deltas:  # paired by seed against the reference row (empty for the reference)
                d[f"{m['id']}_delta_mean"], d[f"{m['id']}_delta_std"] = \
                    deltas.get(r["label"], {}).get(m["id"], (float("nan"), float("nan")))
        flat.append(d)
    pd.DataFrame(flat).to_csv(out_csv, index=False)
