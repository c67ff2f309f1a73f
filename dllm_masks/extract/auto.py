"""Rule-based extraction for a sample of either domain, and the domain guess for ``auto``."""
from __future__ import annotations

import re

from .code import _FENCE, _parse, code_spans
from .math import _CALC, math_spans
from .spans import Spans

__all__ = ["detect_domain", "rule_spans", "DOMAINS"]

DOMAINS = ("code", "math")
_MATH_MARKS = re.compile(r"####|\\boxed|\\frac|\\\(|\\\[|\$\$")
_CODE_MARKS = re.compile(r"^\s*(def|class|import|from|return|for|while|if|#include|public|function|fn|let|const|var)\b"
                         r"|[;{}]\s*$", re.M)


def detect_domain(prompt: str, answer: str) -> str:
    """Guess ``"code"`` or ``"math"`` for a sample without a ``domain`` field.

    Math: the answer has a GSM8K calculator annotation or ``####``, or LaTeX (``\\boxed``,
    ``\\frac``, math delimiters). Code: it parses as Python, has a fenced block, or has lines that
    start with a code keyword or end in ``;``/``{``/``}``. Otherwise math.
    """
    for name, v in (("prompt", prompt), ("answer", answer)):
        if not isinstance(v, str):
            raise TypeError(f"{name}: expected a str, got {type(v).__name__}")
    if _CALC.search(answer) or _MATH_MARKS.search(answer):
        return "math"
    if _FENCE.search(answer) or _CODE_MARKS.search(answer):
        return "code"
    tree, _ = _parse(answer)
    if tree is not None and answer.strip() and not re.fullmatch(r"[\s\d.,+\-*/=()$%]*", answer):
        return "code"
    return "math"


def rule_spans(prompt: str, answer: str, domain: str) -> Spans:
    """Spans of ``answer`` by the rules of ``domain`` (``"code"``: :func:`code_spans` with the
    prompt as a prefix that is parsed with the answer when that parses; ``"math"``:
    :func:`math_spans`)."""
    if domain == "code":
        return code_spans(answer, prefix=prompt)
    if domain == "math":
        if not isinstance(prompt, str):
            raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
        return math_spans(answer)
    raise ValueError(f"domain: expected 'code' or 'math', got {domain!r}")
