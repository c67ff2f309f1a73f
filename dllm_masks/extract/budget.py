"""Density budget for the rule extractors: keep the most informative spans up to a target ρ.

The rules mark more of an answer than the paper's annotators did (on the bundled data, measured on
tokens: about 0.55 of code and 0.62 of math, against the paper's ρ ≈ 0.25 and 0.31). A budget
``target_rho`` keeps a subset of the spans, chosen greedily:

1. every span carries the *kind* of the rule that found it;
2. spans are ordered by the rank of their kind in :data:`PRIORITY` (the domain's list, most
   informative first), then — within a kind, information per unit proxied by brevity — by their
   size in the budget's unit (shorter first), then by position (start, end);
3. spans are taken in that order while the covered share of the answer stays ``<= target_rho``;
   the first span that would push it above the target ends the selection (spans after it are
   dropped even when they would fit, so that a kept span never ranks below a dropped one and the
   kept set only grows with ``target_rho``).

The covered share is that of the union of the kept spans: a span nested in one already kept costs
nothing. It is measured in a *unit* given by ``measure``: characters by default, tokens with
:func:`token_measure` (built from the offsets of the answer tokenized on its own). The share in
tokens is exactly :func:`dllm_masks.extract.align.dense_fraction` of the kept spans, which is what
``dllm-masks extract --tokenizer`` reports; without a tokenizer both count characters.

The selection is deterministic (no randomness, a total order on spans), and ``target_rho=None``
everywhere means no budget: the extractors' results are unchanged.

Kinds (a span's kind names the rule that found it; math splits its rules finer, so that results
and equations rank before operands):

=========  ========================================================================================
code       ``condition`` > ``return`` > ``recursion`` > ``update`` > ``index`` > ``iterable``: the
           tests that decide control flow and the values a function produces first, then the
           pivot points (recursive calls, the state a loop carries, index arithmetic), and loop
           iterables (often ``range(len(x))``) last. The token fallback uses the same names.
math       ``final`` (the final answer: ``#### N``, ``\\boxed{}``, "the answer is") >
           ``result`` (the result written after a calculator annotation, ``<<6*4=24>>24``, and the
           number after the last ``=`` of a prose equation, ``12 x 3 = $36``) >
           ``calculator`` (the annotation ``<<expr=result>>`` itself) >
           ``equation`` (a prose equation with ``=``, a LaTeX segment with a relation) >
           ``operation`` (arithmetic without ``=``, ``3 * 4``; a LaTeX segment with an operation
           and no relation: operands and operators) > ``number`` (the numbers the math extractor
           marks when no rule matched)
=========  ========================================================================================
"""
from __future__ import annotations

import numbers
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .spans import merge_spans

__all__ = ["PRIORITY", "check_target_rho", "char_measure", "token_measure", "budget_spans", "share_steps",
           "calibrate_cap", "measure_for", "parse_target_rho", "target_for"]

PRIORITY: Dict[str, Tuple[str, ...]] = {
    "code": ("condition", "return", "recursion", "update", "index", "iterable"),
    "math": ("final", "result", "calculator", "equation", "operation", "number"),
}

Labelled = Tuple[int, int, str]
Measure = Callable[[int, int], Iterable[int]]


def check_target_rho(target_rho, name: str = "target_rho") -> Optional[float]:
    """None, or ``target_rho`` as a float in (0, 1]; TypeError/ValueError naming ``name`` else."""
    if target_rho is None:
        return None
    if isinstance(target_rho, bool) or not isinstance(target_rho, numbers.Real):
        raise TypeError(f"{name}: expected a number in (0, 1] or None, got {type(target_rho).__name__}")
    t = float(target_rho)
    if not (0.0 < t <= 1.0):  # NaN fails this too
        raise ValueError(f"{name}: must be in (0, 1], got {target_rho!r}")
    return t


def char_measure(start: int, end: int) -> range:
    """The default unit: the characters ``start..end-1`` of the answer."""
    return range(start, end)


char_measure.unit = "characters"  # type: ignore[attr-defined]


def token_measure(offsets: Sequence[Tuple[int, int]]) -> Measure:
    """A measure in tokens: ``measure(start, end)`` = indices of the tokens that overlap ``[start, end)``.

    Parameters
    ----------
    offsets : sequence of (int, int), or an integer tensor [T, 2]
        Character offsets of the tokens of the *answer tokenized on its own* (no special tokens),
        as ``tokenizers``' ``Encoding.offsets`` or ``TextTokenizer.encode(answer)[1]`` give them.
        Zero-width tokens are never counted, as in :func:`dllm_masks.extract.align.dense_fraction`.

    Returns
    -------
    callable ``(start, end) -> set of int`` with ``unit = "tokens"``.
    """
    if hasattr(offsets, "tolist"):
        offsets = offsets.tolist()
    at: Dict[int, List[int]] = {}  # character -> tokens that cover it
    for i, (a, b) in enumerate(offsets):
        for c in range(int(a), int(b)):
            at.setdefault(c, []).append(i)

    def measure(start: int, end: int) -> set:
        out: set = set()
        for c in range(start, end):
            out.update(at.get(c, ()))
        return out

    measure.unit = "tokens"  # type: ignore[attr-defined]
    return measure


def _ordered(labelled: Iterable[Labelled], length: int, priority: Sequence[str], measure: Optional[Measure]):
    """Candidates in selection order with their unit sets, and the answer's unit count."""
    measure = char_measure if measure is None else measure
    rank = {k: i for i, k in enumerate(priority)}
    cands = {}
    for s, e, kind in labelled:
        if kind not in rank:
            raise ValueError(f"labelled: span kind {kind!r} is not in the priority order {tuple(priority)}")
        s, e = max(int(s), 0), min(int(e), length)
        if s < e:
            cands[(s, e, kind)] = frozenset(measure(s, e))
    order = sorted(cands, key=lambda c: (rank[c[2]], len(cands[c]), c[0], c[1]))
    return [(c, cands[c]) for c in order], len(set(measure(0, length))), getattr(measure, "unit", "custom")


def measure_for(tokenizer, text: str) -> Measure:
    """The budget's unit for ``text``: characters when ``tokenizer`` is None, else its tokens.

    ``tokenizer``: a ``tokenizers.Tokenizer`` (``text`` encoded without special tokens, as
    ``dllm-masks extract --tokenizer`` measures ρ), or anything whose ``encode(text)`` returns
    ``(ids, offsets)`` (:class:`dllm_masks.data.tokenize.TextTokenizer`, whose offsets are those
    of the training sequences' answers).
    """
    if tokenizer is None:
        return char_measure
    if hasattr(tokenizer, "encode_batch"):
        return token_measure(tokenizer.encode(text, add_special_tokens=False).offsets)
    enc = tokenizer.encode(text)
    if not (isinstance(enc, tuple) and len(enc) == 2):
        raise TypeError(f"tokenizer: expected a tokenizers.Tokenizer or an encode(text) -> (ids, offsets), "
                        f"got {type(tokenizer).__name__}")
    return token_measure(enc[1])


def budget_spans(labelled: Iterable[Labelled], length: int, target_rho, *, priority: Sequence[str],
                 measure: Optional[Measure] = None) -> Tuple[List[Tuple[int, int]], dict]:
    """Greedy selection of labelled spans under a density budget (see the module docstring).

    Parameters
    ----------
    labelled : iterable of (start, end, kind)
        Character spans into an answer of ``length`` characters (clipped to it), with their kind.
    length : int
        Characters in the answer.
    target_rho : float in (0, 1]
        Largest share of the answer the kept spans may cover.
    priority : sequence of str
        Kinds, most informative first (:data:`PRIORITY`). A span of another kind is an error.
    measure : callable ``(start, end) -> iterable of unit ids``, optional
        The unit of the budget: :func:`char_measure` (default) or :func:`token_measure`. The
        answer's units are ``measure(0, length)``.

    Returns
    -------
    (spans, info)
        ``spans``: the kept spans, merged (sorted, disjoint). ``info``: ``target_rho``; ``unit``;
        ``rho`` — the share the kept spans cover; ``rho_all`` — the share all spans cover;
        ``kept`` and ``dropped`` — spans per kind.
    """
    t = check_target_rho(target_rho)
    if t is None:
        raise TypeError("target_rho: expected a number in (0, 1], got None")
    order, total, unit = _ordered(labelled, length, priority, measure)
    covered: set = set()
    n_kept = 0
    for c, units in order:
        new = units - covered
        if not total or (len(covered) + len(new)) / total > t:
            break
        covered |= new
        n_kept += 1
    kept = [c for c, _ in order[:n_kept]]
    every = set().union(*(u for _, u in order))
    info = {
        "target_rho": t,
        "unit": unit,
        "rho": len(covered) / total if total else 0.0,
        "rho_all": len(every) / total if total else 0.0,
        "kept": _count(kept, priority),
        "dropped": _count([c for c, _ in order[n_kept:]], priority),
    }
    return merge_spans(((s, e) for s, e, _ in kept), hi=length), info


def share_steps(labelled: Iterable[Labelled], length: int, *, priority: Sequence[str],
                measure: Optional[Measure] = None) -> List[float]:
    """The covered share after each span in selection order (non-decreasing).

    ``budget_spans(..., target_rho=t)`` keeps the longest prefix of that order whose share is
    ``<= t``, so the share it keeps is ``max([0] + [x for x in steps if x <= t])``.
    """
    order, total, _ = _ordered(labelled, length, priority, measure)
    if not total:
        return []
    covered: set = set()
    out = []
    for _, units in order:
        covered |= units
        out.append(len(covered) / total)
    return out


def calibrate_cap(steps: Sequence[Sequence[float]], mean_rho) -> Tuple[float, float]:
    """The per-sample ``target_rho`` whose mean kept share over samples comes closest to ``mean_rho``.

    A per-sample budget keeps at most ``target_rho`` of every answer, so the mean share over a
    corpus falls below it (an answer whose most important span alone is larger keeps nothing).
    This finds the budget that reproduces a corpus mean instead.

    Parameters
    ----------
    steps : sequence of sequences of float
        :func:`share_steps` of each sample.
    mean_rho : float in (0, 1]
        The mean share wanted (the paper: 0.25 on code tokens, 0.31 on math tokens).

    Returns
    -------
    (target_rho, mean)
        ``target_rho`` to pass to the extractors (midway between the share that attains the best
        mean and the next larger share, so that rounding it in print does not change the
        selection), and the mean share it gives. The mean is a step function of the budget; ties
        go to the smaller budget. Exact and deterministic.
    """
    m = check_target_rho(mean_rho, "mean_rho")
    if m is None:
        raise TypeError("mean_rho: expected a number in (0, 1], got None")
    n = len(steps)
    if n == 0:
        raise ValueError("steps: no samples")
    events = sorted((x, i) for i, st in enumerate(steps) for x in st)
    best_cap, best_mean, cur, total = 1.0, 0.0, [0.0] * n, 0.0
    best_err = abs(0.0 - m)
    values = sorted({x for x, _ in events})
    k = 0
    for v in values:  # the mean at budget v: each sample keeps its largest step <= v
        while k < len(events) and events[k][0] <= v:
            x, i = events[k]
            total += x - cur[i]
            cur[i] = x
            k += 1
        if abs(total / n - m) < best_err:
            best_err, best_cap, best_mean = abs(total / n - m), v, total / n
    if best_mean == 0.0:  # nothing beats keeping nothing: a budget below every first step
        pos = [v for v in values if v > 0]
        return (pos[0] / 2 if pos else 1.0), 0.0
    nxt = next((v for v in values if v > best_cap), None)
    cap = best_cap if nxt is None else (best_cap + nxt) / 2
    return min(cap, 1.0), best_mean


def _count(spans: Iterable[Labelled], priority: Sequence[str]) -> Dict[str, int]:
    n = {k: 0 for k in priority}
    for _, _, kind in spans:
        n[kind] += 1
    return {k: v for k, v in n.items() if v}


def target_for(target_rho, domain: str, name: str = "target_rho") -> Optional[float]:
    """The budget of ``domain``: ``target_rho`` itself when it is a number or None, its entry
    when it is a dict ``{domain: target}`` (a domain not named has no budget)."""
    if isinstance(target_rho, dict):
        for k, v in target_rho.items():
            if k not in PRIORITY:
                raise ValueError(f"{name}: unknown domain {k!r} (known: {', '.join(PRIORITY)})")
            check_target_rho(v, f"{name}[{k!r}]")
        return check_target_rho(target_rho.get(domain), f"{name}[{domain!r}]")
    return check_target_rho(target_rho, name)


def parse_target_rho(text: str) -> Union[float, Dict[str, float]]:
    """``"0.25"`` -> 0.25 (every domain); ``"code=0.25,math=0.31"`` -> a dict per domain.

    Raises ValueError naming ``target_rho`` (``argparse`` turns it into a usage error).
    """
    if not isinstance(text, str):
        raise TypeError(f"target_rho: expected a str, got {type(text).__name__}")
    try:
        if "=" not in text:
            return check_target_rho(float(text))
        out = {}
        for part in text.split(","):
            dom, _, val = part.partition("=")
            dom = dom.strip()
            if dom not in PRIORITY:
                raise ValueError(f"target_rho: unknown domain {dom!r} (known: {', '.join(PRIORITY)})")
            out[dom] = check_target_rho(float(val), f"target_rho[{dom!r}]")
        return out
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith("target_rho") else
                         f"target_rho: expected a number in (0, 1] or DOMAIN=NUMBER,..., got {text!r}") from None
