"""Information-dense spans of math solutions: rules for GSM8K-style and LaTeX text.

The paper (§2.1) marks *core mathematical operations* and *key intermediate and final results* as
the information-dense hubs of math. :func:`math_spans` finds them with rules (choose a subset with
``rules=``; the default applies all):

==============  ==============================================================================
``calculator``  GSM8K calculator annotations ``<<48/2=24>>`` and the result written right after
                them (``<<48/2=24>>24``)
``equation``    expressions and results written in the prose: ``48/2 = 24``, ``$12 x 3 = $36``,
                ``x = 5``, ``2 * (3 + 4) = 14``, chains ``a = b = c``, an expression written
                before an annotation (``48/2 = <<...``), and arithmetic with two or more operands
                even without ``=`` (``3 * 4``)
``final``       the final answer after ``####`` (GSM8K), the contents of ``\\boxed{...}`` and
                ``\\fbox{...}``, and what follows "the answer is"
``latex``       LaTeX math (``\\(...\\)``, ``\\[...\\]``, ``$$...$$``, ``$...$``, ``equation``/
                ``align``/``gather`` environments) that holds a relation (``=``, ``<``,
                ``\\le``, ``\\approx``, ...) or an operation (``+``, ``\\times``, ``\\frac``, ...);
                ``$...$`` counts as math only in text that looks like LaTeX (in GSM8K prose ``$``
                is a dollar sign)
==============  ==============================================================================

When none of the rules finds anything in a text that has numbers, the result falls back to the
numbers themselves (with ``$``/``%`` and a sign), and ``meta["method"]`` says ``"fallback"``.

``target_rho=`` keeps only the most informative spans up to a density budget: final answers,
then results, calculator annotations, equations, and operations (operands) last
(:mod:`dllm_masks.extract.budget`).
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Tuple

from .budget import PRIORITY, budget_spans, check_target_rho
from .spans import Spans, check_rules, merge_spans

__all__ = ["math_spans", "RULES", "detect_format"]

RULES: Dict[str, str] = {
    "calculator": "GSM8K calculator annotations <<expr=result>> with the result written after them",
    "equation": "expressions and results in the prose (48/2 = 24, x = 5, 3 * 4)",
    "final": "the final answer after ####, \\boxed{...}, and what follows 'the answer is'",
    "latex": "LaTeX math segments holding a relation or an operation",
}

# Numbers: 1,234.5  .5  12  (GSM8K writes thousands with commas).
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+)(?:\.\d+)?|\.\d+"
_CALC = re.compile(rf"<<[^<>\n]{{0,300}}>>(?:\$?(?:{_NUM})%?)?")
# Tokens of the prose-equation scanner. One pass, no backtracking across tokens: runs of math
# tokens are then judged in Python, which keeps the whole scan linear in the text.
_MTOK = re.compile(rf"""
  (?P<calc><<[^<>\n]{{0,300}}>>)
| (?P<num>\$?(?:{_NUM})%?)
| (?P<op>\\times|\\cdot|\\div|[-+*/×÷^−])
| (?P<eq>=)
| (?P<lp>\()
| (?P<rp>\))
| (?P<var>(?<![^\W\d_])[A-Za-z](?![^\W\d_]))
| (?P<glue>[ \t]+|\$)
| (?P<word>[^\W\d_]+)
| (?P<other>.)
""", re.X | re.S)
_FINAL = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]*?)[ \t]*$", re.M)
_ANSWER_IS = re.compile(r"\b(?:final answer|answer) is[: \t]*\$?(-?(?:" + _NUM + r")(?:[ \t]*/[ \t]*\d+)?%?)", re.I)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(rf"[-−]?\$?(?:{_NUM})%?")
_LATEX_MARKERS = re.compile(r"\\[A-Za-z]{2,}|\\\(|\\\[|\$\$")
_LATEX_SEG = re.compile(
    r"\$\$(.{1,4000}?)\$\$|\\\[(.{1,4000}?)\\\]|\\\((.{1,500}?)\\\)"
    r"|\\begin\{(equation|align|gather|multline|eqnarray)(\*?)\}(.{1,4000}?)\\end\{\4\5\}"
    r"|(?<![\\$])\$(?!\$)((?:[^$\\\n]|\\.){1,500}?)\$",
    re.S)
_INLINE_DOLLAR_GROUP = 7
_RELATION = re.compile(r"[=<>≤≥≠≈]|\\(?:le|ge|leq|geq|neq|ne|approx|equiv|sim|cong|lt|gt|Rightarrow|implies)\b")
_RESULT = re.compile(rf"=[ \t]*(\$?(?:{_NUM})%?)$")  # the number after an equation's last `=`
_OPERATION = re.compile(r"[-+*/^×÷]|\\(?:times|cdot|div|frac|dfrac|tfrac|sqrt|sum|prod|int|binom|pm|mp)\b")


def detect_format(text: str) -> str:
    """``"gsm8k"`` (calculator annotations or ``####``), ``"latex"`` (LaTeX commands or math
    delimiters), or ``"plain"``."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    if "####" in text or _CALC.search(text):
        return "gsm8k"
    if _LATEX_MARKERS.search(text):
        return "latex"
    return "plain"


def _boxed(text: str) -> List[Tuple[int, int]]:
    """Contents of ``\\boxed{...}``/``\\fbox{...}`` (balanced braces; escaped braces skipped)."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return []
    close, stack, i, n = {}, [], 0, len(text)
    while i < n:  # one pass: the partner of every opening brace
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            close[stack.pop()] = i
        i += 1
    out = []
    for s in starts:
        e = close.get(s - 1)
        if e is not None and e > s:
            out.append((s, e))
    return out


def _connected_vars(run: list, kinds: List[str]) -> None:
    """Mark single letters that are not operands (the article "a" after a number) as breaks."""
    for i, (k, s, e, t) in enumerate(run):
        if kinds[i] != "var":
            continue
        left = next((j for j in range(i - 1, -1, -1) if kinds[j] != "glue"), None)
        right = next((j for j in range(i + 1, len(run)) if kinds[j] != "glue"), None)
        lk = kinds[left] if left is not None else None
        rk = kinds[right] if right is not None else None
        if t in "xX" and lk in ("num", "rp") and rk in ("num", "lp"):
            kinds[i] = "op"  # 0.2 x 50
        elif not (lk in ("op", "eq", "lp") or rk in ("op", "eq", "rp")
                  or (lk == "num" and run[left][2] == s)):  # 2x
            kinds[i] = "break"


def _judge(run: list, kinds: List[str]) -> Optional[Tuple[int, int]]:
    """The span of a run of math tokens [(kind, start, end, text)] if it is an operation or an
    equation, after trimming glue, dangling operators and unmatched parentheses."""
    a, b = 0, len(run) - 1
    n_lp, n_rp = kinds.count("lp"), kinds.count("rp")
    while a <= b:
        k = kinds[a]
        if k in ("glue", "eq", "rp") or (k == "op" and not (run[a][3] in "-−" and a + 1 <= b
                                                              and kinds[a + 1] == "num")):
            n_rp -= k == "rp"
            a += 1
        elif k == "lp" and n_lp > n_rp:
            n_lp -= 1
            a += 1
        else:
            break
    while b >= a:
        k = kinds[b]
        if k in ("glue", "eq", "op", "lp"):
            n_lp -= k == "lp"
            b -= 1
        elif k == "rp" and n_rp > n_lp:
            n_rp -= 1
            b -= 1
        else:
            break
    if a > b:
        return None
    ks = kinds[a:b + 1]
    operands = ks.count("num") + ks.count("var")
    if "calc" in ks or ("eq" in ks and operands >= 2) or ("op" in ks and ks.count("num") >= 2):
        return run[a][1], run[b][2]
    return None


def _judge_run(run: list, out: list) -> None:
    kinds = [k for k, *_ in run]
    _connected_vars(run, kinds)
    a = 0
    for i in range(len(run) + 1):
        if i == len(run) or kinds[i] == "break":
            if i > a:
                sp = _judge(run[a:i], kinds[a:i])
                if sp:
                    out.append(sp)
            a = i + 1


def _equations(text: str) -> List[Tuple[int, int]]:
    out, run = [], []
    for m in _MTOK.finditer(text):
        k = m.lastgroup
        if k in ("word", "other"):
            if run:
                _judge_run(run, out)
                run = []
        else:
            run.append((k, m.start(), m.end(), m.group()))
    if run:
        _judge_run(run, out)
    return out


def _strip(text: str, s: int, e: int) -> Tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


def _labelled(text: str, rules, fmt: str) -> List[Tuple[int, int, str]]:
    """(start, end, kind) spans of the rules, kinds as in :data:`dllm_masks.extract.budget.PRIORITY`.

    Their union is the union of the rules' spans: a calculator match splits into its annotation
    (``calculator``) and the result written after it (``result``); a prose equation is an
    ``equation`` when it holds ``=`` or an annotation, else an ``operation``, and the number after
    its last ``=`` is also a ``result``; LaTeX segments are ``equation`` with a relation, else
    ``operation``.
    """
    out: List[Tuple[int, int, str]] = []
    if "calculator" in rules:
        for m in _CALC.finditer(text):
            mid = text.index(">>", m.start()) + 2
            out.append((m.start(), mid, "calculator"))
            out.append((mid, m.end(), "result"))
    if "equation" in rules:
        eqs = _equations(text)
        if fmt == "latex":  # there `$` delimits math; it is not a dollar sign
            eqs = [(s + (text[s] == "$"), e) for s, e in eqs]
        for s, e in eqs:
            body = text[s:e]
            out.append((s, e, "equation" if ("=" in body or "<<" in body) else "operation"))
            r = _RESULT.search(body)
            if r:
                out.append((s + r.start(1), s + r.end(1), "result"))
    if "final" in rules:
        out += [(*m.span(1), "final") for m in _FINAL.finditer(text)]
        out += [(*m.span(1), "final") for m in _ANSWER_IS.finditer(text)]
        out += [(s, e, "final") for s, e in _boxed(text)]
    if "latex" in rules and fmt == "latex":
        for m in _LATEX_SEG.finditer(text):
            body_group = next(i for i in (1, 2, 3, 6, _INLINE_DOLLAR_GROUP) if m.group(i) is not None)
            body = m.group(body_group)
            if _RELATION.search(body) or _OPERATION.search(body):
                kind = "equation" if _RELATION.search(body) else "operation"
                out.append((*_strip(text, *m.span(body_group)), kind))
    return out


def math_spans(text: str, *, rules: Optional[Iterable[str]] = None, target_rho: Optional[float] = None,
               measure=None) -> Spans:
    """Information-dense character spans of a math solution.

    Parameters
    ----------
    text : str
        A solution: GSM8K style (prose, ``<<expr=result>>`` annotations, ``#### N``), LaTeX
        (MATH style, ``\\boxed{}``), or plain text.
    rules : iterable of str, optional
        Subset of :data:`RULES` to apply (default: all).
    target_rho : float in (0, 1], optional
        Density budget (:mod:`dllm_masks.extract.budget`): keep the spans of the highest priority
        (final answers and results, then annotations and equations, then operations) while they
        cover at most this share of ``text``. None (default): keep every span.
    measure : callable, optional
        Unit of the budget: characters (default) or
        :func:`~dllm_masks.extract.budget.token_measure` of ``text``'s token offsets.

    Returns
    -------
    Spans
        Sorted, merged half-open ``(start, end)`` character offsets into ``text``. ``meta``:
        ``method`` — ``"rules"``, or ``"fallback"`` when the rules found nothing and the numbers
        were marked instead; ``format`` — :func:`detect_format`'s verdict; ``rules``;
        ``error`` — why the fallback served, else None; with ``target_rho``, ``budget`` — what
        :func:`~dllm_masks.extract.budget.budget_spans` reports (``rho``, ``kept``, ...).

    Raises
    ------
    TypeError
        ``text`` is not a str; ``target_rho`` is not a number. Never raises on the content of a str.
    ValueError
        ``target_rho`` is not in (0, 1].

    Examples
    --------
    >>> t = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 24"
    >>> s = math_spans(t)
    >>> s.texts(t)
    ['48/2 = <<48/2=24>>24', '24']
    >>> math_spans(t, target_rho=0.3).texts(t)  # results, then the annotation; not the operands
    ['<<48/2=24>>24', '24']
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    rules = check_rules("rules", rules, RULES)
    target = check_target_rho(target_rho)
    labelled, meta = _labelled_all(text, rules)
    if target is None:
        return Spans(merge_spans(((s, e) for s, e, _ in labelled), hi=len(text)), meta)
    kept, meta["budget"] = budget_spans(labelled, len(text), target, priority=PRIORITY["math"], measure=measure)
    return Spans(kept, meta)


def _labelled_all(text: str, rules) -> Tuple[List[Tuple[int, int, str]], dict]:
    """(start, end, kind) spans of :func:`math_spans` (the numbers when the rules find nothing)
    and its meta; arguments already validated."""
    fmt = detect_format(text)
    labelled = _labelled(text, rules, fmt)
    meta = {"method": "rules", "format": fmt, "rules": list(rules), "error": None}
    if not merge_spans(((s, e) for s, e, _ in labelled), hi=len(text)) and text.strip():
        labelled = [(*m.span(), "number") for m in _NUMBER.finditer(text)]
        meta.update(method="fallback", error="no operation, equation or final answer found; marked the numbers")
    return labelled, meta
