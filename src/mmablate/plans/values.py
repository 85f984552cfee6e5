"""Value parsers: a replacement line of a plan → one typed config value (or a clear error).

`Number` reads numbers written with words around them (`λ = 1/16 (baseline)`, `25%`).
`Choice` reads named options: word phrases (`concatenation`, `GPT-3`, `hinge loss`) and math
written in prose (`1/log(k+1)`, `exp(-k)`, `ψ(xw/c) / (ψ(xl/c) + ε)`), the latter compared as
expressions with sympy (so `1/(1+k)` is `1/(k+1)`). Values the code cannot run raise
`Unavailable` with the reason; nothing is dropped or substituted.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

from .text import best_match, fold, match_score


class ValueProblem(ValueError):
    """The text does not name a value of this part."""


class Unavailable(ValueError):
    """The text names something this pipeline cannot run (says why)."""


# ---- numbers ---------------------------------------------------------------------------------
_NUM = re.compile(r"(?<![\w.])([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)"
                  r"(?:\s*/\s*(\d+(?:\.\d+)?))?(\s*%)?(?![\w.])")


@dataclass
class Number:
    lo: float | None = None
    hi: float | None = None
    named: dict = field(default_factory=dict)  # value → phrases, e.g. {1.0: ["fully offline"]}

    def describe(self) -> str:
        rng = f"in [{self.lo:g}, {self.hi:g}]" if self.lo is not None and self.hi is not None else (
            f"≥ {self.lo:g}" if self.lo is not None else "")
        names = "; or " + ", ".join(f"{ph[0]!r} (= {v:g})" for v, ph in self.named.items()) \
            if self.named else ""
        return f"a number {rng} (e.g. 0.25, 1/16, 25%){names}".replace("  ", " ")

    def parse(self, text: str):
        found = []
        for m in _NUM.finditer(fold(text)):
            v = float(m.group(1))
            if m.group(2):
                d = float(m.group(2))
                if d == 0:
                    raise ValueProblem(f"division by zero in {m.group(0)!r}")
                v /= d
            if m.group(3):
                v /= 100.0
            if v not in found:
                found.append(v)
        if not found and self.named:
            key, why = best_match({v: ph for v, ph in self.named.items()}, text)
            if key is not None:
                found = [float(key)]
        if not found:
            raise ValueProblem(f"no number in {text!r}; expected {self.describe()}")
        if len(found) > 1:
            raise ValueProblem(f"several numbers in {text!r} ({', '.join(f'{v:g}' for v in found)}); "
                               "write one value per line")
        v = found[0]
        if not math.isfinite(v) or (self.lo is not None and v < self.lo) or \
                (self.hi is not None and v > self.hi):
            raise ValueProblem(f"{v:g} is out of range; expected {self.describe()}")
        return v


# ---- named options ---------------------------------------------------------------------------
@dataclass
class Option:
    phrases: list
    formulas: list = field(default_factory=list)


_MATH_NAMES = {"k", "x", "xw", "xl", "c", "psi", "eps", "log", "exp", "e", "sqrt", "mu"}
_MATH_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z_][a-z0-9_]*|\*\*|[()+\-*/]|\S")


def math_runs(text: str) -> list[str]:
    """Maximal runs of formula tokens in prose: `a decay such as exp(-k)` → [`exp(-k)`].

    Only numbers, the names in _MATH_NAMES, operators and parentheses are kept, so the strings
    later given to sympy's parser hold nothing else."""
    t = fold(text)
    for a, b in (("ψ", " psi "), ("ε", " eps "), ("μ", " mu "), ("×", "*"), ("·", "*"),
                 ("^", "**"), ("ln(", "log(")):
        t = t.replace(a, b)
    runs, cur = [], []
    for m in _MATH_TOKEN.finditer(t):
        tok = m.group(0)
        ok = tok[0].isdigit() or tok in _MATH_NAMES or tok in ("**", "(", ")", "+", "-", "*", "/")
        if ok:
            cur.append(tok)
        else:
            runs.append(cur)
            cur = []
    runs.append(cur)
    out = []
    for r in runs:
        while r and r[0] in ("**", "+", "*", "/", ")"):
            r = r[1:]
        while r and r[-1] in ("**", "+", "-", "*", "/", "("):
            r = r[:-1]
        if r and any(x[0].isdigit() or x in _MATH_NAMES - {"log", "exp", "sqrt"} for x in r):
            out.append(" ".join(r))
    return out


def _sympy_ns():
    import sympy

    ns = {n: sympy.Symbol(n, positive=True) for n in ("k", "x", "xw", "xl", "c", "eps", "mu")}
    ns.update(psi=sympy.Function("psi"), log=sympy.log, exp=sympy.exp, sqrt=sympy.sqrt, e=sympy.E)
    return sympy, ns


@functools.lru_cache(maxsize=None)
def _parse_expr(s: str):
    sympy, ns = _sympy_ns()
    from sympy.parsing.sympy_parser import parse_expr

    try:
        return parse_expr(s, local_dict=ns, global_dict={"Integer": sympy.Integer,
                                                         "Float": sympy.Float,
                                                         "Rational": sympy.Rational,
                                                         "Symbol": sympy.Symbol})
    except Exception:  # a run that is not a well-formed expression (prose around it)
        return None


def same_formula(a, b) -> bool:
    """Same function? Structural equality (sympy canonicalises 1/(1+k) = 1/(k+1)), else equal
    values at a few points (ψ taken as a sigmoid) — sympy.simplify takes ~0.1 s a pair."""
    import random

    import sympy

    if a == b:
        return True
    _, ns = _sympy_ns()
    t = sympy.Symbol("t")
    sig = sympy.Lambda(t, 1 / (1 + sympy.exp(-t)))
    try:
        fa, fb = (e.replace(ns["psi"], sig) for e in (a, b))
        syms = sorted(fa.free_symbols | fb.free_symbols, key=str)
        rng = random.Random(0)
        for _ in range(3):
            pt = {s: rng.uniform(1.5, 4.0) for s in syms}
            va, vb = complex(fa.evalf(subs=pt)), complex(fb.evalf(subs=pt))
            if abs(va - vb) > 1e-9 * max(1.0, abs(va)):
                return False
        return True
    except (TypeError, ValueError, ZeroDivisionError):
        return False


@dataclass
class Choice:
    options: dict                     # config value → Option
    unavailable: list = field(default_factory=list)  # [(phrases, reason)]

    def describe(self) -> str:
        return "one of: " + "; ".join(
            f"{v} ({', '.join(repr(p) for p in (o.formulas + o.phrases)[:3])})"
            for v, o in self.options.items())

    def _formula_match(self, text: str):
        if not any(o.formulas for o in self.options.values()):
            return []
        canon = {v: ["".join(math_runs(f)).replace(" ", "") for f in o.formulas]
                 for v, o in self.options.items()}
        hits = []
        for run in math_runs(text):
            flat = run.replace(" ", "")
            exact = [v for v, fs in canon.items() if flat in fs]
            if exact:  # written as in the registry: no need to import sympy (~0.4 s)
                found = exact
            else:
                e = _parse_expr(run)
                found = [] if e is None else [
                    v for v, o in self.options.items()
                    if any(same_formula(e, _parse_expr(" ".join(math_runs(f))))
                           for f in o.formulas)]
            hits += [v for v in found if v not in hits]
        return hits

    def parse(self, text: str):
        hits = self._formula_match(text)
        if len(hits) > 1:
            raise ValueProblem(f"{text!r} matches several formulas ({', '.join(hits)}); "
                               "write one value per line")
        un = max(((match_score(ph, text)[0], why) for ph, why in self.unavailable),
                 default=(0, ""))
        if hits and un[0] == 0:
            return hits[0]
        key, why = best_match({v: o.phrases for v, o in self.options.items()}, text)
        score = match_score(self.options[key].phrases, text)[0] if key is not None else 0
        if un[0] and un[0] >= score and not hits:
            raise Unavailable(f"{text!r}: {un[1]}")
        if hits:
            return hits[0]
        if key is None:
            what = "does not name" if why == "none" else f"is {why};"
            raise ValueProblem(f"{text!r} {what} a known value; known values: {self.describe()}")
        return key
