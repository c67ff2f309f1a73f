"""Information-dense span extraction (paper §2.1), plug-and-play.

* :func:`code_spans` — Python ``ast`` rules, with a token-level fallback for other text;
* :func:`math_spans` — GSM8K calculator annotations, prose equations, final answers, LaTeX;
* :class:`LLMExtractor` — the paper's pipeline against any OpenAI-compatible server;
* :mod:`~dllm_masks.extract.align` — character spans → per-token priority bits;
* ``dllm-masks extract`` — annotate a JSONL file (:mod:`~dllm_masks.extract.cli`).

Every extractor returns a :class:`Spans`: merged half-open character spans into the answer, with
a ``meta`` dict that says how they were found.
"""
from . import align
from .auto import detect_domain, rule_spans
from .code import code_spans
from .llm import LLMError, LLMExtractor, align_quotes
from .math import math_spans
from .spans import Spans, merge_spans

__all__ = ["code_spans", "math_spans", "rule_spans", "detect_domain", "LLMExtractor", "LLMError",
           "align_quotes", "align", "Spans", "merge_spans"]
