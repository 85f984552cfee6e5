"""Plan documents → ablations in config form.

A plan, as researchers write it (see config/plans/): an HTML/CSS wrapper, a `# <planner>/<model>/
<Paper_Title>` title line, a reasoning section, then per ablation a `### name` heading and the
bullets **Ablated Part**, **Action** (REPLACE), **Replacement** (a bulleted list of values, or
values on the same line separated by commas) and **Metrics** (comma-separated, or bullets).

`read_plan(path)` reads the document (mis-decoded characters repaired, markup stripped, line
numbers kept); `resolve(raw)` maps it through the study registry: title → study, ablated part →
config key, each replacement → a typed value, metrics → metric ids. Every problem is collected
and raised together as one `PlanError` naming the file and line, listing what is known.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .registry import REGISTRY, StudySpec
from .text import best_match, match_score, repair_text, strip_markup
from .values import Unavailable, ValueProblem


class PlanError(ConfigError):
    """A plan that cannot be mapped to config (all its problems, each with file:line)."""

    def __init__(self, path, problems):
        self.path, self.problems = str(path), list(problems)
        super().__init__("\n".join(f"{self.path}:{ln}: {msg}" for ln, msg in self.problems))


@dataclass
class Item:
    text: str
    line: int  # 1-based line in the file


@dataclass
class RawAblation:
    name: str
    line: int
    part: Item | None = None
    action: Item | None = None
    replacement: Item | None = None        # the **Replacement** field line itself
    values: list = field(default_factory=list)   # [Item]
    metrics_field: Item | None = None
    metrics: list = field(default_factory=list)  # [Item]


@dataclass
class RawPlan:
    path: str
    title: Item | None
    planner: str
    ablations: list


@dataclass
class PlanAblation:
    id: str
    part: str
    key: str
    values: list
    metrics: list
    line: int
    name: str = ""
    value_lines: list = field(default_factory=list)

    def config(self) -> dict:
        return {"id": self.id, "part": self.part, "key": self.key, "values": list(self.values),
                "metrics": list(self.metrics)}


@dataclass
class Plan:
    path: str
    study: str
    title: str
    planner: str
    ablations: list
    notes: list = field(default_factory=list)  # [(line, message)] — things assumed, shown by check


_FIELD = re.compile(r"^(?:[-*+]|\d+[.)])?\s*(ablated\s+parts?|actions?|replacements?|metrics?)"
                    r"\s*:\s*(.*)$", re.I)
_BULLET = re.compile(r"^(?:[-*+•]|\d+[.)])\s+(.*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def _split_inline(text: str) -> list[str]:
    return [t.strip(" .") for t in re.split(r"[,;]|\s+and\s+", text) if t.strip(" .")]


def read_plan(path) -> RawPlan:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PlanError(path, [(0, f"cannot read the plan: {e.strerror}")]) from None
    lines = repair_text(raw.decode("utf-8", errors="replace"))
    title, planner, abls = None, "", []
    cur: RawAblation | None = None
    heading: Item | None = None
    collecting = None  # "values" | "metrics" while a bulleted list continues a field
    in_style = False
    for i, line in enumerate(lines, 1):
        if re.search(r"<style\b", line, re.I):
            in_style = True
        if in_style:
            if re.search(r"</style>", line, re.I):
                in_style = False
            continue
        s = strip_markup(line)
        if not s:
            continue
        h = _HEADING.match(s)
        if h:
            collecting = None
            if len(h.group(1)) == 1 and title is None:
                full = h.group(2).strip()
                segs = [x for x in full.split("/") if x]
                planner = "/".join(segs[:-1])
                title = Item(re.sub(r"_+", " ", segs[-1] if segs else full).strip(), i)
            elif len(h.group(1)) >= 3:
                heading = Item(h.group(2).strip(), i)
            continue
        f = _FIELD.match(s)
        if f:
            name, val = f.group(1).lower(), f.group(2).strip()
            collecting = None
            if name.startswith("ablated"):
                nm = heading.text if heading and (cur is None or heading.line > cur.line) else ""
                cur = RawAblation(nm or f"ablation at line {i}", heading.line if nm else i)
                abls.append(cur)
                cur.part = Item(val, i)
                continue
            if cur is None:
                cur = RawAblation(heading.text if heading else f"ablation at line {i}", i)
                abls.append(cur)
            if name.startswith("action"):
                cur.action = Item(val, i)
            elif name.startswith("replacement"):
                cur.replacement = Item(val, i)
                cur.values += [Item(v, i) for v in ([val] if _one_value(val) else
                                                    _split_inline(val))] if val else []
                collecting = "values"
            else:
                cur.metrics_field = Item(val, i)
                cur.metrics += [Item(v, i) for v in _split_inline(val)]
                collecting = "metrics"
            continue
        b = _BULLET.match(s)
        if b and collecting and cur is not None:
            getattr(cur, collecting).append(Item(b.group(1).strip(), i))
            continue
        collecting = None
    return RawPlan(str(path), title, planner, abls)


def _one_value(text: str) -> bool:
    # A formula or a number with a comma inside parentheses is one value, not a list.
    return bool(re.search(r"\([^)]*,", text))


# ---- resolution ------------------------------------------------------------------------------
def study_of(title: str):
    key, why = best_match({s.id: s.title_phrases for s in REGISTRY.values()}, title)
    return key, why


def known_studies() -> str:
    return "; ".join(f"{s.id} ({s.title})" for s in REGISTRY.values())


def known_parts(spec: StudySpec) -> str:
    return "; ".join(f"{p.id} = {p.key} ({', '.join(repr(x) for x in p.phrases[:3])})"
                     for p in spec.parts)


def resolve(raw: RawPlan) -> Plan:
    problems, notes = [], []
    if raw.title is None:
        raise PlanError(raw.path, [(1, "no title line ('# <planner>/<Paper_Title>'); it names the "
                                       f"paper and so the study. Known studies: {known_studies()}")])
    sid, why = study_of(raw.title.text)
    if sid is None:
        raise PlanError(raw.path, [(raw.title.line, f"title {raw.title.text!r} "
                                    + ("names no known study" if why == "none" else f"is {why}")
                                    + f"; known studies: {known_studies()}")])
    spec = REGISTRY[sid]
    if not raw.ablations:
        problems.append((raw.title.line, "no ablation blocks found (expected '- **Ablated Part**: "
                                         "...', '- **Action**: REPLACE', '- **Replacement**:' "
                                         "with a list of values, '- **Metrics**: ...')"))
    out, seen = [], {}
    for ra in raw.ablations:
        where = ra.part.line if ra.part else ra.line
        if ra.part is None or not ra.part.text:
            problems.append((where, f"ablation {ra.name!r} has no 'Ablated Part'; known parts of "
                                    f"{sid}: {known_parts(spec)}"))
            continue
        un = [(match_score(ph, ra.part.text)[0], why) for ph, why in spec.unavailable_parts]
        un = max(un, default=(0, ""))
        pid, why = best_match({p.id: p.phrases for p in spec.parts}, ra.part.text)
        pscore = match_score(spec.part(pid).phrases, ra.part.text)[0] if pid else 0
        if un[0] and un[0] >= pscore:
            problems.append((ra.part.line, f"cannot run: ablated part {ra.part.text!r}: {un[1]}; "
                                            f"known parts of {sid}: {known_parts(spec)}"))
            continue
        if pid is None:
            what = "names no known part" if why == "none" else f"is {why}"
            problems.append((ra.part.line, f"ablated part {ra.part.text!r} {what} of study {sid}; "
                                            f"known parts: {known_parts(spec)}"))
            continue
        part = spec.part(pid)
        if pid in seen:
            problems.append((ra.part.line, f"part {pid} ({part.key}) is already ablated at line "
                                            f"{seen[pid]}; one ablation per part"))
            continue
        seen[pid] = ra.part.line
        if ra.action is None:
            notes.append((where, f"ablation {ra.name!r}: no 'Action' line; REPLACE assumed"))
        elif not re.fullmatch(r"replace(ment)?", ra.action.text.strip(" .").lower()):
            problems.append((ra.action.line, f"action {ra.action.text!r} is not supported; the "
                                              "pipeline runs REPLACE ablations (to remove a part, "
                                              "REPLACE it with the value that switches it off)"))
        if ra.replacement is None:
            problems.append((where, f"ablation {ra.name!r} ({pid}) has no 'Replacement' block; "
                                    f"expected a list of values: {part.values.describe()}"))
            continue
        if not ra.values:
            problems.append((ra.replacement.line, f"'Replacement' of {pid} lists no values; "
                                                  f"expected {part.values.describe()}"))
            continue
        values, vlines = [], []
        for it in ra.values:
            try:
                v = part.values.parse(it.text)
            except Unavailable as e:
                problems.append((it.line, f"cannot run: {pid} ({part.key}): {e}"))
                continue
            except ValueProblem as e:
                problems.append((it.line, f"{pid} ({part.key}): {e}"))
                continue
            if v in values:
                problems.append((it.line, f"{pid}: value {v!r} is listed twice (line "
                                          f"{vlines[values.index(v)]})"))
                continue
            values.append(v)
            vlines.append(it.line)
        metrics = []
        if not ra.metrics:
            problems.append((ra.metrics_field.line if ra.metrics_field else where,
                             f"ablation {pid} lists no metrics; known metrics of {sid}: "
                             f"{', '.join(spec.metrics)}"))
        for it in ra.metrics:
            mid, why = best_match(spec.metrics, it.text)
            if mid is None:
                what = "names no known metric" if why == "none" else f"is {why}"
                problems.append((it.line, f"metric {it.text!r} {what} of study {sid}; known "
                                          f"metrics: " + "; ".join(
                                              f"{m} ({ph[0]!r})" for m, ph in spec.metrics.items())))
            elif mid not in metrics:
                metrics.append(mid)
        out.append(PlanAblation(pid, ra.part.text, part.key, values, metrics, where, ra.name, vlines))
    if problems:
        raise PlanError(raw.path, sorted(problems))
    return Plan(raw.path, sid, raw.title.text, raw.planner, out, notes)


def parse_plan(path) -> Plan:
    return resolve(read_plan(path))
