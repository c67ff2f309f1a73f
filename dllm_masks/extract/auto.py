"""Rule-based extraction for a sample of either domain, and the domain guess for ``auto``."""
from __future__ import annotations

import hashlib
import re

from .budget import target_for
from .code import _FENCE, RULES as CODE_RULES, _labelled as _code_labelled, _parse, code_spans
from .math import _CALC, RULES as MATH_RULES, _labelled_all as _math_labelled, math_spans
from .spans import Spans

__all__ = ["detect_domain", "rule_spans", "labelled_rule_spans", "selected", "sample_key", "DOMAINS"]

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


def rule_spans(prompt: str, answer: str, domain: str, *, target_rho=None, measure=None) -> Spans:
    """Spans of ``answer`` by the rules of ``domain`` (``"code"``: :func:`code_spans` with the
    prompt as a prefix that is parsed with the answer when that parses; ``"math"``:
    :func:`math_spans`).

    ``target_rho`` (a number in (0, 1], a dict ``{domain: number}``, or None) and ``measure``
    set the density budget (:mod:`dllm_masks.extract.budget`); a domain the dict does not name
    has no budget.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain: expected 'code' or 'math', got {domain!r}")
    target = target_for(target_rho, domain)
    if domain == "code":
        return code_spans(answer, prefix=prompt, target_rho=target, measure=measure)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
    return math_spans(answer, target_rho=target, measure=measure)


def labelled_rule_spans(prompt: str, answer: str, domain: str):
    """The spans :func:`rule_spans` starts from, before merging or budgeting.

    Returns
    -------
    (labelled, meta)
        ``labelled``: ``(start, end, kind)`` character spans into ``answer`` (not merged; they
        may reach outside it and are clipped by the budget), kinds as in
        :data:`dllm_masks.extract.budget.PRIORITY[domain]`; ``meta``: the extractor's meta.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain: expected 'code' or 'math', got {domain!r}")
    for name, v in (("prompt", prompt), ("answer", answer)):
        if not isinstance(v, str):
            raise TypeError(f"{name}: expected a str, got {type(v).__name__}")
    if domain == "code":
        return _code_labelled(answer, prompt, list(CODE_RULES))
    return _math_labelled(answer, list(MATH_RULES))


def sample_key(rec: dict) -> str:
    """Identity of a sample: its ``id`` when present, else a hash of prompt and answer."""
    if rec.get("id") is not None:
        return "id:" + str(rec["id"])
    h = hashlib.sha256((rec["prompt"] + "\x00" + rec["answer"]).encode("utf-8", "surrogatepass"))
    return "sha256:" + h.hexdigest()


def selected(rec: dict, fraction: float, seed: int) -> bool:
    """Whether a sample is annotated: ``u(sample, seed) < fraction``.

    Parameters
    ----------
    rec : dict
        A record with ``prompt`` and ``answer`` (str) and optionally ``id``; see :func:`sample_key`.
    fraction : float in [0, 1]
        Expected fraction of samples chosen (the paper: 0.1 of code, 0.5 of math).
    seed : int

    Returns
    -------
    bool
        u is the first 64 bits of SHA-256(seed, sample key) over 2^64: the choice depends on the
        sample alone, not on its position in a file or on the other samples, and is the same on
        every machine (``dllm-masks extract --fraction`` and ``dllm_masks.data.annotate`` agree).
    """
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    h = hashlib.sha256(f"{seed}\x00{sample_key(rec)}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64 < fraction
