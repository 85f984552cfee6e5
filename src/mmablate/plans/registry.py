"""What a plan can ask of each study: its ablatable parts, their values, its metrics.

Derived from the study descriptions (`mmablate.studies.spec`, plain data: all four studies;
no study package is imported). A part =
config key + the phrases that name it in a plan (matched as sets of stemmed words, so word
order, plurals, hyphens and small typos do not matter) + a value parser built from the part's
range or options. `unavailable` entries name things a plan may ask for that this pipeline
cannot run, with the reason, so `plan check` refuses them instead of dropping or substituting.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .values import Choice, Number, Option

from ..studies.spec import OFFLINE, STUDY_SPECS  # noqa: F401  (OFFLINE re-exported)


@dataclass
class Part:
    id: str                 # ablation id in the config
    key: str                # dotted config key the ablation replaces
    phrases: list           # how plans name this part
    values: object          # Number | Choice


@dataclass
class StudySpec:
    id: str
    title: str
    title_phrases: list
    parts: list
    metrics: dict           # metric id → phrases
    unavailable_parts: list = field(default_factory=list)  # [(phrases, reason)]

    def part(self, pid: str) -> Part:
        return next(p for p in self.parts if p.id == pid)


def _values(part):
    if part.is_number:
        return Number(lo=part.lo, hi=part.hi, named={v: list(ph) for v, ph in part.named.items()})
    return Choice({v: Option(list(o.phrases), list(o.formulas)) for v, o in part.values.items()},
                  unavailable=[(list(ph), why) for ph, why in part.unavailable])


def from_description(d) -> StudySpec:
    """The plan registry entry of one study description (mmablate.studies.spec.Study)."""
    return StudySpec(
        id=d.id, title=d.title, title_phrases=list(d.title_phrases),
        parts=[Part(p.id, p.key, list(p.phrases), _values(p)) for p in d.parts],
        metrics={m.id: list(m.phrases) for m in d.metrics if m.phrases},
        unavailable_parts=[(list(ph), why) for ph, why in d.unavailable_parts])


REGISTRY = {sid: from_description(d) for sid, d in STUDY_SPECS.items()}
RANKCLIP, PCCLIP, PAIRRANK, MMALIGN = (REGISTRY[s] for s in ("rankclip", "pcclip", "pairrank",
                                                              "mmalign"))
