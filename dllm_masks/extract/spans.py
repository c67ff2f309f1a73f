"""Character spans: the common currency of the extractors.

Every extractor returns a :class:`Spans`: a list of half-open ``(start, end)`` character offsets,
sorted, non-empty and merged (overlapping or touching spans become one), with a ``meta`` dict
that says how they were found (``method``, ``rules``, ``error``, ...).
"""
from __future__ import annotations

import numbers
from typing import Iterable, List, Optional, Tuple

__all__ = ["Spans", "merge_spans", "check_spans", "check_rules"]

Span = Tuple[int, int]


class Spans(list):
    """A list of merged ``(start, end)`` character spans with a ``meta`` dict.

    Attributes
    ----------
    meta : dict
        ``method`` (str): how the spans were found, e.g. ``"ast"``, ``"fallback"``, ``"mixed"``,
        ``"rules"``, ``"llm"``; ``rules`` (list of str): the rules applied; ``error`` (str or
        None): why the preferred method could not serve (a syntax error, an HTTP failure), plus
        extractor-specific keys documented by each extractor.
    """

    def __init__(self, spans: Iterable[Span] = (), meta: Optional[dict] = None):
        super().__init__(spans)
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        return f"Spans({list.__repr__(self)}, meta={self.meta!r})"

    def texts(self, text: str) -> List[str]:
        """The substrings of ``text`` that the spans cover (for reading and debugging)."""
        return [text[s:e] for s, e in self]

    def covered(self) -> int:
        """Number of characters covered (the spans are disjoint)."""
        return sum(e - s for s, e in self)


def merge_spans(spans: Iterable[Span], *, lo: int = 0, hi: Optional[int] = None) -> List[Span]:
    """Clip spans to ``[lo, hi)``, drop empty ones, sort, and merge overlapping or touching ones.

    Parameters
    ----------
    spans : iterable of (int, int)
        Half-open character spans, in any order, possibly overlapping.
    lo, hi : int
        Clip window (``hi=None``: no upper bound).

    Returns
    -------
    list of (int, int)
        Disjoint, sorted, non-adjacent spans with ``start < end``.
    """
    clipped = []
    for s, e in spans:
        s = max(int(s), lo)
        e = int(e) if hi is None else min(int(e), hi)
        if s < e:
            clipped.append((s, e))
    clipped.sort()
    out: List[Span] = []
    for s, e in clipped:
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def check_spans(name: str, spans, *, length: Optional[int] = None) -> List[Span]:
    """Validate user-given spans: a sequence of ``(start, end)`` integer pairs, 0 <= start <= end.

    Raises ``TypeError``/``ValueError`` naming ``name``. With ``length``, ends must not exceed it.
    Returns the spans as a list of int tuples (not merged).
    """
    if isinstance(spans, (str, bytes)) or not hasattr(spans, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of (start, end) pairs, got {type(spans).__name__}")
    out = []
    for i, sp in enumerate(spans):
        try:
            s, e = sp
        except (TypeError, ValueError):
            raise TypeError(f"{name}: item {i} is not a (start, end) pair: {sp!r}") from None
        for v in (s, e):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name}: item {i} has a non-integer offset: {sp!r}")
        s, e = int(s), int(e)
        if s < 0 or e < s:
            raise ValueError(f"{name}: item {i} must satisfy 0 <= start <= end, got ({s}, {e})")
        if length is not None and e > length:
            raise ValueError(f"{name}: item {i} = ({s}, {e}) ends past the text (length {length})")
        out.append((s, e))
    return out


def check_rules(name: str, rules, known) -> List[str]:
    """Validate a rule subset against the known rule names; None means all (in ``known``'s order)."""
    if rules is None:
        return list(known)
    if isinstance(rules, str):
        rules = [rules]
    try:
        rules = list(rules)
    except TypeError:
        raise TypeError(f"{name}: expected an iterable of rule names, got {type(rules).__name__}") from None
    for r in rules:
        if not isinstance(r, str):
            raise TypeError(f"{name}: rule names are strings, got {type(r).__name__}")
        if r not in known:
            raise ValueError(f"{name}: unknown rule {r!r}; known rules: {', '.join(known)}")
    return [r for r in known if r in set(rules)]
