"""Visual question answering in the synthetic world: texts, hallucinations and an oracle judge.

The multimodal-LLM study (mmalign) needs what a LLaVA-style model is trained and evaluated on:
instruction data (descriptions and questions with answers), POVID-style preference pairs (the
ground-truth answer vs. the same answer with hallucinated objects or attributes) and benchmark
questions. Everything here is derived from a `Scene`, so an oracle knows exactly which objects a
response mentions that are not in the image (hallucinated) and which it leaves out (missed).

Scenes are sampled with an object co-occurrence bias (each shape has a *companion* object that
appears beside it more often than chance), so a model that ignores the image has a language prior
to hallucinate from — the bias that bias-driven hallucination sampling (BDHS) exploits and POPE's
adversarial split probes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .scenes import COLOURS, NUMBER_WORDS, SHAPES, SIZES, Obj, Scene, WorldSampler

PROMPT_TEMPLATE = "<image>\nUSER: {q}\nASSISTANT:"  # LLaVA-1.5/1.6 vicuna conversation format
DESCRIBE = "describe the image ."
SHORT = "answer the question using a single word or phrase ."  # LLaVA's GQA/TextVQA suffix
EXTRA_WORDS = ["user", "assistant", ".", ",", "?", ":", "letter", "written", "objects",
               "there", "is", "no", "yes", "side", "where", "colour", "shape", "many", "how",
               "what", "which", "image", "in", "describe", "the", "a", "on", "of", "are",
               "answer", "question", "using", "single", "word", "or", "phrase", "it",
               "center"]


def companions(colours, shapes) -> dict[str, tuple[str, str]]:
    """Each shape's companion (colour, shape): a fixed, deterministic co-occurrence table."""
    out = {}
    for i, s in enumerate(shapes):
        out[s] = (colours[(2 * i + 1) % len(colours)], shapes[(i + 1) % len(shapes)])
    return out


class BiasedSampler(WorldSampler):
    """A `WorldSampler` whose second object is the main object's companion with prob. `cooccur`."""

    def __init__(self, colours, shapes, max_objects=2, glyph_prob=0.0, cooccur=0.6):
        super().__init__(colours, shapes, max_objects, glyph_prob)
        self.cooccur = cooccur
        self.comp = companions(self.colours, self.shapes)

    def scene(self, rng, n_objects=None, **main):
        s = super().scene(rng, n_objects, **main)
        if len(s.objects) >= 2 and rng.random() < self.cooccur:
            c, sh = self.comp[s.objects[0].shape]
            o = s.objects[1]
            objs = (s.objects[0], Obj(sh, c, o.size, o.x, o.y)) + s.objects[2:]
            s = Scene(objs, s.background, s.glyph)
        # one object per (colour, shape): existence questions stay unambiguous
        seen, objs = set(), []
        for o in s.objects:
            if (o.colour, o.shape) not in seen:
                seen.add((o.colour, o.shape))
                objs.append(o)
        return Scene(tuple(objs), s.background, s.glyph)


# ---- texts ---------------------------------------------------------------------------------
def sentence(o: Obj) -> str:
    pos = f" on the {o.position}" if o.position != "center" else " in the center"
    return f"there is a {o.size} {o.colour} {o.shape}{pos} ."


def describe(scene: Scene) -> str:
    """The ground-truth description: one sentence per object, then the letter if there is one."""
    out = [sentence(o) for o in scene.objects]
    if scene.glyph:
        out.append(f"the letter {scene.glyph.lower()} is written in the image .")
    return " ".join(out)


def exists_answer(present: bool, colour: str, shape: str) -> str:
    return (f"yes , there is a {colour} {shape} ." if present
            else f"no , there is no {colour} {shape} .")


def exists_question(colour: str, shape: str) -> str:
    return f"is there a {colour} {shape} in the image ?"


def split_sentences(text: str) -> list[str]:
    """Sentences of a response, each ending with its '.' (the world texts' only terminator)."""
    parts = [p.strip() for p in re.split(r"(?<=[.?!])\s+", text.strip()) if p.strip()]
    return parts


# ---- hallucinations (POVID-style rejected responses) ----------------------------------------
def hallucinate(scene: Scene, rng: np.random.Generator, colours, shapes) -> str:
    """The ground-truth description with one hallucination injected, as POVID's GPT-4V edits:
    an object replaced by an absent one, an attribute (colour/size/position) changed, or an
    absent object added (the co-occurring companion when there is one)."""
    objs = list(scene.objects)
    present = {(o.colour, o.shape) for o in objs}
    kind = rng.choice(["object", "attribute", "add"])
    i = int(rng.integers(len(objs)))
    o = objs[i]
    if kind == "object":
        cands = [(c, s) for c in colours for s in shapes if (c, s) not in present and s != o.shape]
        c, s = cands[int(rng.integers(len(cands)))]
        objs[i] = Obj(s, c, o.size, o.x, o.y)
    elif kind == "attribute":
        which = rng.choice(["colour", "size", "position"])
        if which == "colour":
            cands = [c for c in colours if c != o.colour and (c, o.shape) not in present]
            objs[i] = Obj(o.shape, cands[int(rng.integers(len(cands)))], o.size, o.x, o.y)
        elif which == "size":
            objs[i] = Obj(o.shape, o.colour, "small" if o.size == "large" else "large", o.x, o.y)
        else:  # mirror the object: left <-> right, top <-> bottom (centre moves left)
            x, y = (1 - o.x, o.y) if o.position in ("left", "right") else (o.x, 1 - o.y)
            if o.position == "center":
                x = 0.2
            objs[i] = Obj(o.shape, o.colour, o.size, x, y)
    else:
        comp = companions(tuple(colours), tuple(shapes))[o.shape]
        cands = [(c, s) for c in colours for s in shapes if (c, s) not in present]
        c, s = comp if comp not in present else cands[int(rng.integers(len(cands)))]
        side = 0.8 if o.x < 0.5 else 0.2
        objs.append(Obj(s, c, "small", side, 0.5))
    return describe(Scene(tuple(objs), scene.background, scene.glyph))


# ---- the oracle: what a response says about the image ---------------------------------------
_MENTION = re.compile(r"(?:(small|large)\s+)?(" + "|".join(COLOURS) + r")\s+(" +
                      "|".join(SHAPES) + r")s?(?:\s+(?:on the (left|right|top|bottom)|in the "
                      r"(center)))?")
_NEGATED = re.compile(r"\b(no|not)\b")


@dataclass
class Judgement:
    hallucinated: int  # mentioned objects absent from the image, plus wrong attributes
    missed: int        # objects in the image the response does not mention
    mentioned: int     # correct object mentions
    n_objects: int

    @property
    def recall(self) -> float:
        return self.mentioned / max(1, self.n_objects)

    @property
    def score(self) -> float:
        """The online-pair judge's ranking score: fewer hallucinated and missed objects is better."""
        return -(2.0 * self.hallucinated + self.missed)


def mentions(text: str) -> list[dict]:
    """Object mentions of a response, skipping negated sentences ("no , there is no red circle")."""
    out = []
    for sent in split_sentences(text.lower()):
        if _NEGATED.search(sent):
            continue
        for m in _MENTION.finditer(sent):
            out.append({"size": m.group(1), "colour": m.group(2), "shape": m.group(3),
                        "position": m.group(4) or m.group(5)})
    return out


def judge(text: str, scene: Scene) -> Judgement:
    """Counts hallucinated and missed objects of a free-form response against the scene."""
    gt = {(o.colour, o.shape): o for o in scene.objects}
    hall, found = 0, set()
    for m in mentions(text):
        o = gt.get((m["colour"], m["shape"]))
        if o is None:
            hall += 1
            continue
        wrong = (m["size"] and m["size"] != o.size) or (m["position"] and m["position"] != o.position)
        if wrong:
            hall += 1
        found.add((m["colour"], m["shape"]))
    return Judgement(hall, len(gt) - len(found), len(found), len(gt))


def mmhal_score(j: Judgement) -> int:
    """MMHal-Bench's 0–6 rubric with the oracle's counts: 3–6 = no hallucination (more
    informative = higher: 3 + round(3·recall)), 0–2 = hallucination (2 if all objects are
    also covered, 1 if some, 0 if none)."""
    if j.hallucinated == 0:
        return 3 + int(round(3 * j.recall))
    return 2 if j.recall >= 1 else (1 if j.mentioned else 0)


def pope_parse(text: str) -> str:
    """LLaVA's POPE answer parsing (llava/eval/eval_pope.py): the first sentence, commas removed,
    is 'no' if it contains the word No/no/not, otherwise 'yes'."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def count_answer(n: int) -> str:
    return f"there are {NUMBER_WORDS[n]} objects ." if n != 1 else "there is one object ."


__all__ = ["BiasedSampler", "describe", "hallucinate", "judge", "mentions", "mmhal_score",
           "pope_parse", "split_sentences", "exists_answer", "exists_question", "SIZES"]
