"""Bias-Driven Hallucination Sampling (BDHS): non-preferred responses from the reference model
with its image mostly masked out of attention (a data-preparation stage, cached).

For each preferred response y⁺ and each of its sentences: the sentence is cut at a random word
and the reference model, with every image token kept in attention only if its uniform draw is
≥ ρ_th (0.99: ~1% kept), continues it up to the end of the sentence (sampled, so that a retry
differs). A sentence that starts with yes/no has that word flipped with probability 0.5 before
the cut (which then keeps the flipped word). If the new sentence is too similar to the original
(cosine of sentence embeddings ≥ `sim_threshold`) or makes no claim, it is regenerated with a
new cut and a new mask, at most `max_tries` times. A claim: the generated part holds a word (not
only the closing '.'), and — where a `claim` test is given (the world: the sentence names an
object or the letter, `judge.names_object`) — the sentence passes it; counting the kept prefix
words instead let 22 % of the tiny world's BDHS sentences be truncations like "there is a small ."
(issue 21). When no try is accepted, the last try that makes a claim is kept (else the last try),
counted as not accepted.
The preceding sentences of y⁺ are the context of each sentence (each is corrupted on its own).
The mask acts on every position holding the image token id: with LLaVA-1.6 the processor expands
the image into the tokens of every AnyRes tile (base image, tiles, row newlines), so all of
them are masked alike. Images are read from disk batch by batch (``bdhs.num_workers``).
Written by hand: no library implements BDHS.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ...world.vqa import split_sentences
from ...util import write_atomic

FLIP = {"yes": "no", "no": "yes"}


def image_mask_hook(image_token_id: int, rho_th: float, gen):
    """An attention hook that keeps each image token only if its uniform draw ≥ ρ_th."""
    import torch

    def hook(input_ids, attention_mask):
        u = torch.rand(input_ids.shape, generator=gen).to(input_ids.device)
        drop = (input_ids == image_token_id) & (u < rho_th)
        return attention_mask.masked_fill(drop, 0)

    return hook


def plan_cut(sentence: str, rng: np.random.Generator, flip_prob: float):
    """(kept prefix words, flipped?) for one sentence: a random cut that leaves ≥ 1 word to
    generate; a leading yes/no is flipped with probability `flip_prob` and always kept."""
    words = sentence.split()
    flipped = False
    lo = 0
    if words and words[0].lower() in FLIP:
        if rng.random() < flip_prob:
            words[0] = FLIP[words[0].lower()]
            flipped = True
        lo = 1
    hi = max(lo, len(words) - 2)  # the last word is the '.', so at least one content word is new
    k = int(rng.integers(lo, hi + 1))
    return words[:k], flipped


def makes_claim(kept: list[str], generated: list[str], claim=None) -> bool:
    """The BDHS sentence ``kept + generated`` makes a claim (module docstring): the generated
    part holds a word besides the closing '.', and the sentence passes `claim` if given."""
    if not [w for w in generated if w not in (".", ",", "?", "!")]:
        return False
    return claim is None or bool(claim(" ".join(kept + generated)))


def bdhs_generate(model, proc, pairs: list[dict], cfg: dict, similarity, seed: int,
                  progress=True, claim=None) -> tuple[list[dict], dict]:
    """BDHS negatives for `pairs` (records with image, question, chosen). Returns per-pair
    records {id, rejected_bdhs, sentences: [{tries, sim, accepted, flipped, claim}]} and
    statistics. `claim`: a test a generated sentence must pass (the world's `names_object`)."""
    import torch

    from .model import generate

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    image_id = model.config.image_token_id if hasattr(model.config, "image_token_id") \
        else model.config.image_token_index
    hook = image_mask_hook(int(image_id), cfg["rho_th"], gen)
    units = []  # one per (pair, sentence)
    for pi, p in enumerate(pairs):
        sents = split_sentences(p["chosen"])
        for si, s in enumerate(sents):
            units.append({"pair": pi, "sent": si, "orig": s, "context": " ".join(sents[:si]),
                          "tries": 0, "new": None, "sim": None, "accepted": False,
                          "flipped": False, "claim": False, "fallback": None})
    pending = list(range(len(units)))
    t0 = time.time()
    for attempt in range(cfg["max_tries"]):
        if not pending:
            break
        prefixes, qs, imgs = [], [], []
        for ui in pending:
            u = units[ui]
            kept, flipped = plan_cut(u["orig"], rng, cfg["flip_prob"])
            u["_kept"], u["flipped"] = kept, flipped
            prefixes.append(" ".join(filter(None, [u["context"], " ".join(kept)])))
            p = pairs[u["pair"]]
            imgs.append(p["image"])  # a path: decoded batch by batch by `generate`
            qs.append(p["question"])
        outs = generate(model, proc, imgs, qs, max_new_tokens=cfg["max_new_tokens"],
                        do_sample=True, temperature=cfg.get("temperature", 1.0),
                        batch_size=cfg.get("batch_size", 64), attention_hook=hook,
                        prefixes=prefixes, stop_at_period=True,
                        num_workers=cfg.get("num_workers", 0))
        news = []
        for ui, o in zip(pending, outs):
            u = units[ui]
            words = o.split()
            if "." in words:
                words = words[:words.index(".") + 1]
            elif not words or words[-1] != ".":
                words.append(".")
            u["new"] = " ".join(u["_kept"] + words)
            u["claim"] = makes_claim(u["_kept"], words, claim)
            if u["claim"]:
                u["fallback"] = (u["new"], u["flipped"])
            u["tries"] = attempt + 1
            news.append(u["new"])
        sims = similarity.cosine(news, [units[ui]["orig"] for ui in pending])
        still = []
        for ui, s in zip(pending, sims):
            units[ui]["sim"] = float(s)
            # a sentence making no claim (e.g. the model closed it at once) is retried like a
            # too similar one
            if s < cfg["sim_threshold"] and units[ui]["claim"]:
                units[ui]["accepted"] = True
            else:
                still.append(ui)
        if progress:
            print(f"[bdhs] try {attempt + 1}: {len(pending) - len(still)}/{len(pending)} sentences "
                  f"accepted ({time.time() - t0:.1f}s)", file=sys.stderr)
        pending = still
    for ui in pending:  # never accepted: keep the last try that made a claim, if one did
        u = units[ui]
        if not u["claim"] and u["fallback"] is not None:
            (u["new"], u["flipped"]), u["claim"] = u["fallback"], True
    out = []
    for pi, p in enumerate(pairs):
        us = [u for u in units if u["pair"] == pi]
        out.append({"id": p["id"], "rejected_bdhs": " ".join(u["new"] for u in us),
                    "sentences": [{k: u[k] for k in ("orig", "new", "tries", "sim", "accepted",
                                                      "flipped", "claim")} for u in us]})
    tries = np.array([u["tries"] for u in units])
    sims = np.array([u["sim"] for u in units])
    stats = {"n_pairs": len(pairs), "n_sentences": len(units),
             "tries_mean": float(tries.mean()), "tries_hist": {str(k): int((tries == k).sum())
                                                               for k in range(1, cfg["max_tries"] + 1)},
             "accepted_frac": float(np.mean([u["accepted"] for u in units])),
             "similarity_mean": float(sims.mean()), "similarity_p50": float(np.median(sims)),
             "similarity_p90": float(np.percentile(sims, 90)),
             "flipped": int(sum(u["flipped"] for u in units)),
             "no_claim": int(sum(not u["claim"] for u in units)),
             "identical_to_chosen": int(sum(o["rejected_bdhs"] == pairs[i]["chosen"]
                                            for i, o in enumerate(out))),
             "wall_s": round(time.time() - t0, 2)}
    return out, stats


def run_bdhs(cfg: dict, out_path, threads=1, progress=True) -> dict:
    """The BDHS stage: loads the offline pairs and the reference model, writes
    ``bdhs.jsonl`` (one record per pair) and ``bdhs_stats.json`` beside it."""
    import torch

    from ...training.schedule import set_threads
    from .data import load_povid, load_scenes
    from .judge import SentenceSimilarity
    from .model import load

    set_threads(threads)
    torch.manual_seed(cfg["seed"])
    pairs = load_povid(cfg["pairs"]["file"], cfg["pairs"]["images"], cfg["pairs"].get("limit"))
    cuda = torch.cuda.is_available()
    model, proc = load(cfg["reference"], dtype=torch.bfloat16 if cuda else None)
    if cuda:
        model.to("cuda")
    sim = SentenceSimilarity(cfg["bdhs"]["embedder"])
    claim = None
    if cfg.get("scenes"):  # the world: a BDHS sentence must name an object or the letter
        from .judge import names_object as claim
    recs, stats = bdhs_generate(model, proc, pairs, cfg["bdhs"], sim, cfg["seed"], progress,
                                claim=claim)
    if cfg.get("scenes"):  # world: how often BDHS negatives really hallucinate (oracle judge)
        from ...world.vqa import judge

        scenes = load_scenes(cfg["scenes"])
        hs = [judge(r["rejected_bdhs"], scenes[Path(p["image"]).name]).hallucinated > 0
              for r, p in zip(recs, pairs) if "describe" in p["question"]]
        hc = [judge(p["chosen"], scenes[Path(p["image"]).name]).hallucinated > 0
              for p in pairs if "describe" in p["question"]]
        stats["oracle_hallucinating_frac_bdhs"] = float(np.mean(hs)) if hs else None
        stats["oracle_hallucinating_frac_chosen"] = float(np.mean(hc)) if hc else None
        sents = [x for r in recs for x in r["sentences"]]
        stats["no_object_sentence_frac"] = float(np.mean([not claim(x["new"]) for x in sents])) \
            if sents else None
    out_path = Path(out_path)
    with write_atomic(out_path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out_path.parent / "bdhs_stats.json").write_text(json.dumps(stats, indent=1))
    return stats
