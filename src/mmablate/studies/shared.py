"""Stages more than one study runs (light imports only): the CLIP pretraining stage
(``rankclip_train``), which RankCLIP ablates and whose λ = 0 job — a plain CLIP-loss model of the
world — PC-CLIP (its base model) and pair ranking (its text encoder and reward twins) reuse.

The studies import these from here, never from each other's packages.
"""
from __future__ import annotations

import copy


def clip_data(P, rcfg: dict):
    """(training data root, evaluation data root, world job or None) of a CLIP config `rcfg`
    (RankCLIP's block): the shared world's output directory, or the real dataset roots."""
    data = rcfg["data"]
    if data["source"] == "world":
        w = P.world(P.config["world"])
        return w.dir, w.dir, w
    return data["root"], data["eval_root"], None


def clip_train(P, rcfg: dict):
    """Registers the CLIP pretraining job of `rcfg` (RankCLIP's block); returns it. λ = 0 makes
    the decay and the scale irrelevant (normalised away: the plain CLIP loss). ``loss.scale``
    enters the stage config only when it is not the default ``paper``, so the paper-scaled jobs
    keep the hashes they had before the key existed."""
    from ..pipeline import ref

    loss = dict(rcfg["loss"])
    scale = loss.pop("scale", "paper")
    if loss["rank_weight"] == 0:
        loss["decay"] = None
    elif scale != "paper":
        loss["scale"] = scale
    root, _, world = clip_data(P, rcfg)
    data = {k: v for k, v in rcfg["data"].items() if k not in ("source", "root", "eval_root")}
    cfg = {"model": rcfg["model"], "train": rcfg["train"], "loss": loss,
           "data": dict(data, root=root)}
    return P.add_stage("rankclip_train", cfg, needs={"world": ref(world)})


def world_clip(P, rank_weight=0.0):
    """(job, CLIP config) of the shared base CLIP: RankCLIP's config with λ = `rank_weight`
    (zero). The value enters the stage config as given: 0.0 (RankCLIP's λ = 0 row, PC-CLIP's
    base) and 0 (pair ranking's) are two jobs of one recipe, kept apart so that no job hash
    changes."""
    rcfg = copy.deepcopy(P.config["studies"]["rankclip"])
    rcfg["loss"]["rank_weight"] = rank_weight
    return clip_train(P, rcfg), rcfg
