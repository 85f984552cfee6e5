"""What a table must say beside its numbers: variants whose answers collapsed, and variants whose
outputs are identical (two rows that agree to every digit are one result, not two).

Both are detected from the results, not declared:

* **collapse** (`collapse_reasons`): a model's descriptions much shorter than its base model's,
  or naming no object far more often, or DPO's chosen reward strongly negative (the chosen
  answers' likelihood fell: over-optimisation). Such a model can score "no hallucination" by
  saying nothing (issue 21: the tiny mmalign DPO model answered every description request
  with "there is a"); its hallucination numbers are then not a gain. The DPO job writes the
  reasons into its training summary (``train.collapse``); the table checks each row's means
  against the reference row and lists the reasons of every job in its caption.
* **identical outputs** (`identical_rows`): variant rows whose evaluation records agree in every
  metric and every detail (timings aside) on every seed — e.g. two captioners that learnt the
  caption grammar perfectly and wrote byte-identical captions, so everything downstream is
  equal.

Beside these, the ablation's own ``notes`` (declared by the study when it builds the ablation,
``ablation_notes``: e.g. RankCLIP's λ rows under ``loss.scale: authors_code``, equal by
construction) come first in the caption: they hold whatever the numbers show.
"""
from __future__ import annotations

import json
import re

# The thresholds of a collapse (issue 21's done-criterion): descriptions shorter than half the
# base's on average, more than 10 % of descriptions naming no object (and more than the base),
# or a final chosen reward β·log(π/π_ref)(y⁺) below −0.5 (at β = 0.1: the chosen answers lost
# 5 nats of log-likelihood; the collapsed tiny runs logged −1.07 to −1.69).
MIN_LENGTH_RATIO = 0.5
MAX_EMPTY_SHARE = 10.0
MIN_CHOSEN_REWARD = -0.5


def collapse_reasons(metrics: dict, base: dict | None = None,
                     chosen_reward: float | None = None) -> list[str]:
    """Why a model's answers count as collapsed ([] if they do not). `metrics` and `base`:
    metric dicts with ``desc_words`` / ``desc_empty`` (where measured); `base`: the base
    model's (the SFT model DPO started from), None if unknown (then only the absolute tests)."""
    out = []
    w, e = metrics.get("desc_words"), metrics.get("desc_empty")
    bw = (base or {}).get("desc_words")
    be = (base or {}).get("desc_empty")
    if w is not None and bw and w < MIN_LENGTH_RATIO * bw:
        out.append(f"descriptions {w:.1f} words vs the base's {bw:.1f} (< {MIN_LENGTH_RATIO:g}×)")
    if e is not None and e > MAX_EMPTY_SHARE and (be is None or e > be):
        out.append(f"{e:.0f}% of descriptions name no object"
                   + (f" (base {be:.0f}%)" if be is not None else ""))
    if chosen_reward is not None and chosen_reward < MIN_CHOSEN_REWARD:
        out.append(f"chosen reward {chosen_reward:.2f} < {MIN_CHOSEN_REWARD:g} (the preferred "
                   f"answers' likelihood fell)")
    return out


def _read(path):
    with open(path) as f:
        return json.load(f)


_TIMING = re.compile(r"(wall|time|_s$|seconds|judge_requests)")


def _outputs(rec: dict):
    """A record's results without what differs between identical runs (config, timings)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not _TIMING.search(str(k))}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return json.dumps(strip({k: rec.get(k) for k in ("metrics", "detail", "extra")}),
                      sort_keys=True)


def identical_rows(ab: dict, read=_read) -> list[list[str]]:
    """Groups (≥ 2 labels) of the ablation's variant rows whose evaluation records are equal on
    every seed (`_outputs`); rows sharing one job are one row already and are not listed."""
    sig = {}
    for r in ab["rows"]:
        if r.get("kind", "variant") != "variant" or not r.get("evals"):
            continue
        try:
            key = tuple((s, _outputs(read(p))) for s, p in sorted(r["evals"].items()))
        except (OSError, ValueError):
            continue
        paths = tuple(sorted(r["evals"].values()))
        sig.setdefault(key, {}).setdefault(paths, r["label"])
    return [list(v.values()) for v in sig.values() if len(v) > 1]


def row_collapses(ab: dict, recs: list[dict], read=_read) -> dict:
    """variant label → collapse reasons: the row's means against the reference row's (the
    first reference with the informativeness metrics), and each seed's job summary."""
    ids = {m["id"] for m in ab["metrics"]}
    if not {"desc_words", "desc_empty"} & ids:
        base = None
    else:
        ref = next((r for r in recs if r["kind"] != "variant"), None)
        base = {k: ref[k][0] for k in ("desc_words", "desc_empty") if ref and k in ref}
    rows = {r["label"]: r for r in ab["rows"]}
    out = {}
    for rec in recs:
        if rec["kind"] != "variant":
            continue
        means = {k: rec[k][0] for k in ("desc_words", "desc_empty") if k in rec}
        reasons = collapse_reasons(means, base) if base is not None else []
        by_means = bool(reasons)
        for s, p in sorted(rows[rec["label"]].get("evals", {}).items()):
            try:
                job = (read(p).get("train") or {}).get("collapse") or []
            except (OSError, ValueError):
                job = []
            for why in job:
                # the chosen reward is per job only; a seed's own collapse where the means hide it
                if "chosen reward" in why or not by_means:
                    reasons.append(f"seed {s}: {why}")
        if reasons:
            out[rec["label"]] = reasons
    return out


def caption_notes(ab: dict, recs: list[dict], read=_read) -> str:
    """The caption's warnings (empty when there is nothing to say)."""
    notes = list(ab.get("notes") or [])
    col = row_collapses(ab, recs, read)
    if col:
        notes.append("COLLAPSE: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in col.items())
                     + ". Their hallucination figures reflect answers that say less, not fewer "
                       "hallucinations.")
    for g in identical_rows(ab, read):
        notes.append("IDENTICAL OUTPUTS: rows " + ", ".join(g) + " produced identical "
                     "evaluation results on every seed (every metric and answer equal): they are "
                     "one result, not a tie between methods.")
    return " ".join(notes)
