"""Text handling for plan documents: mojibake repair, markup stripping, phrase matching.

Light imports only (ftfy): this runs at Snakefile parse time.
"""
from __future__ import annotations

import re
import unicodedata

# ---- repair --------------------------------------------------------------------------------
# ftfy repairs UTF-8 that was decoded as cp1252/latin-1 (`Ïˆ` → ψ, `Î»` → λ, `Âµ` → µ, `ðŸ§ ` → 🧠)
# and most of the Mac Roman case (`Œ≥` → γ, `‚Äê` → ‐). It leaves 4-byte emoji whose first byte
# Mac Roman decodes to the private-use Apple logo (U+F8FF, e.g. `\uf8ffüìã` for 📋) and any text
# where a single mis-decoded sequence is too short for its heuristics. For those residues we
# re-encode the line in the suspected codec and decode it as UTF-8, keeping the result only if
# it decodes cleanly and removes the suspicious characters (written by hand: ftfy lacks it).
_SUSPICIOUS = re.compile("[\uf8ff\u00c2\u00c3\u00ce\u00cf\u00e2\u00f0\u0152\u201a\u2248]")


def _residue_fix(line: str) -> str:
    if not _SUSPICIOUS.search(line):
        return line
    for codec in ("mac_roman", "cp1252"):
        try:
            fixed = line.encode(codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if len(_SUSPICIOUS.findall(fixed)) < len(_SUSPICIOUS.findall(line)):
            return fixed
    return line


def repair(line: str) -> str:
    """One line of a plan with its mis-decoded characters repaired (line count is kept)."""
    import ftfy

    return _residue_fix(ftfy.fix_text(line, normalization="NFC"))


def repair_text(text: str) -> list[str]:
    """The document's lines, repaired, one entry per physical line (so line numbers hold)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return [repair(line) for line in text.splitlines()]


_TAG = re.compile(r"<[^>]*>")


def strip_markup(line: str) -> str:
    """A line without HTML tags and markdown emphasis (`**Action**:` → `Action:`)."""
    line = _TAG.sub(" ", line)
    line = line.replace("**", "").replace("__", " ")
    return line.strip()


# ---- tokens and phrase matching -------------------------------------------------------------
STOP = frozenset("""a an the of for to in on at by with and or as is are be used using use via from
into that this these those its it which where when currently current e g eg i ie such""".split())
_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"})
_WORD = re.compile(r"[0-9a-zα-ωµ]+(?:-[0-9a-zα-ωµ]+)*")
_SUFFIXES = ("ations", "ation", "ings", "ing", "ed", "es", "s")


def fold(text: str) -> str:
    """Lower case, NFKC (µ micro sign → μ), unified dashes, `_` as space."""
    return unicodedata.normalize("NFKC", text).translate(_DASHES).lower().replace("_", " ")


def stem(w: str) -> str:
    # A few English suffixes, then a trailing 'e' (so difference/differences, combine/combined,
    # image/images agree). Hand-written: a full stemmer (nltk) is not a dependency here.
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) - len(suf) >= 3 and not (suf == "s" and w.endswith("ss")):
            w = w[: -len(suf)]
            break
    if w.endswith("e") and len(w) > 4:
        w = w[:-1]
    return w


def tokens(text: str, expand: bool = True) -> set[str]:
    """Stemmed content words. A hyphenated word gives its joined form (`zero-shot` → `zeroshot`)
    and, when `expand`, its parts too (`difference-based` → also `difference`, `based`)."""
    out = set()
    for m in _WORD.finditer(fold(text)):
        w = m.group(0)
        parts = w.split("-")
        cands = ["".join(parts)] + (parts if expand and len(parts) > 1 else [])
        for c in cands:
            if c and c not in STOP:
                out.add(stem(c))
    return out


def token_eq(a: str, b: str) -> bool:
    """Equal stems, or a long shared prefix (typos and derivations: concatenation/concatenate)."""
    if a == b:
        return True
    n = min(len(a), len(b))
    if n < 6:
        return False
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k >= 6 and k >= 0.8 * n


def phrase_tokens(phrase: str) -> set[str]:
    return tokens(phrase, expand=False)


def phrase_in(phrase: str, text_tokens: set[str]) -> bool:
    """Every content word of `phrase` occurs (in any order) among `text_tokens`."""
    pt = phrase_tokens(phrase)
    return bool(pt) and all(any(token_eq(p, t) for t in text_tokens) for p in pt)


def match_score(phrases, text: str) -> tuple[int, int, str]:
    """(words in the longest matching phrase, number of matching phrases, that phrase)."""
    tt = tokens(text)
    best, n, which = 0, 0, ""
    for ph in phrases:
        if phrase_in(ph, tt):
            n += 1
            k = len(phrase_tokens(ph))
            if k > best:
                best, which = k, ph
    return best, n, which


def best_match(options: dict, text: str):
    """The key of `options` (key → phrases) whose phrases match `text` best.

    Returns (key, None) or (None, reason) where reason is "none" or "ambiguous: a, b"."""
    scored = sorted(((match_score(ph, text)[:2], k) for k, ph in options.items()), reverse=True)
    scored = [(s, k) for s, k in scored if s[0] > 0]
    if not scored:
        return None, "none"
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        tied = [k for s, k in scored if s == scored[0][0]]
        return None, "ambiguous between " + ", ".join(map(str, tied))
    return scored[0][1], None
