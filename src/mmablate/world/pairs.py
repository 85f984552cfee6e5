"""Image pairs of the synthetic world that differ in one known attribute (PC-CLIP's data).

Each pair (A, B) is a scene B and a copy A with exactly one attribute of its main object (or the
object count) changed: colour, size, shape, count or position. Because the change is known, the
*ground-truth difference text* — how the first image differs from the second — is written from
the attributes by `difference()`, in the world grammar (every word is in the world vocabulary):

* colour   ``a red circle instead of a blue circle``
* shape    ``a red circle instead of a red square``
* size     ``a larger red circle`` / ``a smaller red circle``
* count    ``one more blue square`` / ``one fewer blue square``
* position ``the red circle on the left instead of the right``

`difference()` is also the *template captioner* (the reference row of the captioner ablation);
the language-model captioners see only the two images' captions, as the paper's LLM does.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .scenes import SIZES, Obj, Scene, WorldSampler, caption

ATTRIBUTES = ("colour", "size", "shape", "count", "position")
PLACES = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}


def difference(a: Scene, b: Scene, attribute: str) -> str:
    """How scene `a` differs from scene `b` (which differ only in `attribute`)."""
    oa, ob = a.main, b.main
    if attribute == "colour":
        return f"a {oa.colour} {oa.shape} instead of a {ob.colour} {ob.shape}"
    if attribute == "shape":
        return f"a {oa.colour} {oa.shape} instead of a {ob.colour} {ob.shape}"
    if attribute == "size":
        word = "larger" if SIZES[oa.size] > SIZES[ob.size] else "smaller"
        return f"a {word} {oa.colour} {oa.shape}"
    if attribute == "count":
        more, few = (a, b) if len(a.objects) > len(b.objects) else (b, a)
        extra = more.objects[len(few.objects)]
        word = "more" if more is a else "fewer"
        return f"one {word} {extra.colour} {extra.shape}"
    if attribute == "position":
        return f"the {oa.colour} {oa.shape} on the {oa.position} instead of the {ob.position}"
    raise ValueError(f"unknown attribute {attribute!r}; known: {list(ATTRIBUTES)}")


def _place(o: Obj, where: str) -> Obj:
    x, y = PLACES[where]
    return replace(o, x=x, y=y)


def sample_pair(sampler: WorldSampler, rng: np.random.Generator, attribute: str
                ) -> tuple[Scene, Scene]:
    """(A, B): two scenes that differ in `attribute` only."""
    if attribute == "count":
        base = sampler.scene(rng, n_objects=1)
        extra = sampler.scene(rng, n_objects=2).objects[1]
        if abs(extra.x - base.main.x) + abs(extra.y - base.main.y) < 0.3:  # keep them apart
            extra = replace(extra, x=1 - base.main.x, y=1 - base.main.y)
        bigger = Scene(base.objects + (extra,), base.background)
        return (bigger, base) if rng.random() < 0.5 else (base, bigger)
    # the other attributes: a single-object scene, so the caption names the changed object alone
    b = sampler.scene(rng, n_objects=1)
    o = b.main
    if attribute == "colour":
        new = replace(o, colour=str(rng.choice([c for c in sampler.colours if c != o.colour])))
    elif attribute == "shape":
        new = replace(o, shape=str(rng.choice([s for s in sampler.shapes if s != o.shape])))
    elif attribute == "size":
        new = replace(o, size="small" if o.size == "large" else "large")
    elif attribute == "position":
        pa, pb = rng.choice(list(PLACES), size=2, replace=False)
        o = _place(o, str(pb))
        new = _place(o, str(pa))
        b = Scene((o,), b.background)
    else:
        raise ValueError(f"unknown attribute {attribute!r}; known: {list(ATTRIBUTES)}")
    return Scene((new,), b.background), b


def pair_record(a: Scene, b: Scene, attribute: str) -> dict:
    return {"caption_a": caption(a), "caption_b": caption(b), "attribute": attribute,
            "difference": difference(a, b, attribute), "reverse": difference(b, a, attribute)}
