"""Character spans → per-token priority bits, ready for :func:`dllm_masks.priority_mask`.

A token is *dense* (priority bit 1) when its character range overlaps a span: token
``[a, b)`` and span ``[s, e)`` with ``a < e`` and ``s < b``. Zero-width tokens (special tokens,
whose offsets are ``(0, 0)``) are never dense. A token that straddles a span's edge is dense, so
byte-level BPE tokens that carry a leading space (``"Ġ=="``) count when their text does.

Spans are character offsets into the *answer*; offsets are character offsets into the text the
tokenizer saw (usually prompt + answer). ``answer_start`` places the answer in that text.

Stable API (the training data pipeline builds on it):

* :func:`priority_bits` — offsets [T, 2] + answer spans → bool [T];
* :func:`answer_tokens` — bool [T]: the tokens that overlap the answer;
* :func:`dense_fraction` — ρ of one sample: the fraction of answer tokens that are dense;
* :func:`encode` — tokenize prompt + answer with a ``tokenizers.Tokenizer`` and return ids,
  priority bits and the prompt length in one go.

Typical use::

    enc = tokenizer.encode(prompt + answer)
    prio = align.priority_bits(enc.offsets, spans, answer_start=len(prompt))
    # prompt and answer tokenized separately (ids = prompt_ids + answer_ids):
    prio = torch.cat([torch.zeros(len(prompt_ids), dtype=torch.bool),
                      align.priority_bits(answer_enc.offsets, spans)])
"""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from .spans import check_spans, merge_spans

__all__ = ["priority_bits", "answer_tokens", "dense_fraction", "encode", "AlignedSample"]


def _offsets(offsets) -> torch.Tensor:
    """offsets as an int64 CPU tensor [T, 2], validated."""
    if isinstance(offsets, torch.Tensor):
        if offsets.dtype.is_floating_point or offsets.dtype.is_complex or offsets.dtype == torch.bool:
            raise TypeError(f"offsets: expected an integer tensor, got dtype {str(offsets.dtype).replace('torch.', '')}")
        off = offsets.detach().to("cpu", torch.int64)
    else:
        if isinstance(offsets, (str, bytes)) or not hasattr(offsets, "__len__"):
            raise TypeError(f"offsets: expected a [T, 2] tensor or a sequence of (start, end) pairs, "
                            f"got {type(offsets).__name__}")
        if len(offsets) == 0:
            return torch.zeros((0, 2), dtype=torch.int64)
        try:
            off = torch.as_tensor([tuple(p) for p in offsets])
        except (TypeError, ValueError, RuntimeError):
            raise TypeError("offsets: expected a sequence of (start, end) integer pairs") from None
        if off.dtype.is_floating_point or off.dtype == torch.bool:
            raise TypeError("offsets: expected integer offsets")
        off = off.to(torch.int64)
    if off.numel() == 0 and off.dim() <= 2:
        return off.reshape(0, 2)
    if off.dim() != 2 or off.shape[1] != 2:
        raise ValueError(f"offsets: expected shape [T, 2], got {tuple(off.shape)}")
    if bool((off < 0).any()) or bool((off[:, 1] < off[:, 0]).any()):
        t = int(torch.nonzero((off < 0).any(1) | (off[:, 1] < off[:, 0]))[0])
        raise ValueError(f"offsets: token {t} has offsets {tuple(off[t].tolist())}; need 0 <= start <= end")
    return off


def _int(name: str, x, low: int = 0) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    if x < low:
        raise ValueError(f"{name}: must be >= {low}, got {x}")
    return int(x)


def _region(answer_start, answer_end) -> Tuple[int, Optional[int]]:
    a = _int("answer_start", answer_start)
    if answer_end is None:
        return a, None
    b = _int("answer_end", answer_end)
    if b < a:
        raise ValueError(f"answer_end: must be >= answer_start = {a}, got {b}")
    return a, b


def priority_bits(offsets, spans, *, answer_start: int = 0, answer_end: Optional[int] = None) -> torch.Tensor:
    """Per-token priority bits from character spans.

    Parameters
    ----------
    offsets : torch.Tensor (integer, [T, 2]) or sequence of T (start, end) int pairs
        Character offsets of each token in the tokenized text, e.g. ``tokenizers``'
        ``Encoding.offsets``. Zero-width tokens (special tokens) are never dense.
    spans : sequence of (int, int)
        Half-open character spans into the *answer* (as the extractors return them), in any
        order; they may overlap.
    answer_start : int
        Character offset of the answer's first character in the tokenized text (``len(prompt)``
        when the text is ``prompt + answer``; 0 when only the answer was tokenized).
    answer_end : int, optional
        Character offset just past the answer. When given, a span ending past the answer is an
        error, and nothing beyond ``answer_end`` is dense.

    Returns
    -------
    torch.Tensor, bool, [T]
        True where the token overlaps a span. Prompt tokens are dense only where a token
        straddles the prompt/answer boundary and overlaps a span (its answer part is dense).

    Raises
    ------
    TypeError, ValueError
        Naming the argument: malformed offsets or spans, negative ``answer_start``, a span past
        ``answer_end``.

    Examples
    --------
    >>> priority_bits([(0, 3), (3, 5), (5, 9), (9, 10)], [(1, 4)], answer_start=3)
    tensor([False,  True,  True, False])
    """
    off = _offsets(offsets)
    a, b = _region(answer_start, answer_end)
    sp = check_spans("spans", spans, length=None if b is None else b - a)
    merged = merge_spans(((s + a, e + a) for s, e in sp), lo=a, hi=b)
    T = off.shape[0]
    if not merged or T == 0:
        return torch.zeros(T, dtype=torch.bool)
    m = torch.tensor(merged, dtype=torch.int64)
    starts, ends = m[:, 0].contiguous(), m[:, 1].contiguous()
    tok_a, tok_b = off[:, 0].contiguous(), off[:, 1].contiguous()
    # merged spans are disjoint and sorted, so their ends are sorted too: the first span that
    # ends after the token's start is the only candidate to overlap it
    idx = torch.searchsorted(ends, tok_a, right=True)
    cand = idx.clamp(max=len(merged) - 1)
    return (idx < len(merged)) & (starts[cand] < tok_b) & (tok_a < tok_b)


def answer_tokens(offsets, *, answer_start: int = 0, answer_end: Optional[int] = None) -> torch.Tensor:
    """Tokens that overlap the answer ``[answer_start, answer_end)`` (``answer_end=None``: to the end).

    Parameters
    ----------
    offsets : torch.Tensor (integer, [T, 2]) or sequence of (start, end) pairs
    answer_start, answer_end : int
        As in :func:`priority_bits`.

    Returns
    -------
    torch.Tensor, bool, [T]
        Zero-width tokens are excluded.
    """
    off = _offsets(offsets)
    a, b = _region(answer_start, answer_end)
    hit = (off[:, 1] > a) & (off[:, 0] < off[:, 1])
    if b is not None:
        hit &= off[:, 0] < b
    return hit


def dense_fraction(offsets, spans, *, answer_start: int = 0, answer_end: Optional[int] = None) -> float:
    """ρ of one sample: dense answer tokens / answer tokens (0.0 when the answer has no tokens).

    Parameters are those of :func:`priority_bits`. The paper's ρ_code and ρ_math are the mean of
    this over the annotated samples of a domain.
    """
    bits = priority_bits(offsets, spans, answer_start=answer_start, answer_end=answer_end)
    ans = answer_tokens(offsets, answer_start=answer_start, answer_end=answer_end)
    n = int(ans.sum())
    return float((bits & ans).sum()) / n if n else 0.0


class AlignedSample(NamedTuple):
    """Result of :func:`encode`.

    Attributes
    ----------
    input_ids : torch.Tensor, int64, [T]
    priority : torch.Tensor, bool, [T]
        Priority bits (:func:`priority_bits`); False on prompt and special tokens.
    prompt_len : int
        Tokens before the first token that reaches into the answer: pass as ``prompt_lens`` to
        ``priority_mask`` (prompt tokens are never masked). A token straddling the boundary
        counts as answer.
    offsets : torch.Tensor, int64, [T, 2]
        Character offsets into ``prompt + answer``.
    """

    input_ids: torch.Tensor
    priority: torch.Tensor
    prompt_len: int
    offsets: torch.Tensor


def encode(tokenizer, prompt: str, answer: str, spans: Sequence[Tuple[int, int]], *,
           add_special_tokens: bool = True) -> AlignedSample:
    """Tokenize ``prompt + answer`` and align answer spans to its tokens.

    Parameters
    ----------
    tokenizer : tokenizers.Tokenizer (or anything whose ``encode(text, add_special_tokens=...)``
        returns an object with ``ids`` and ``offsets``)
    prompt, answer : str
    spans : sequence of (int, int)
        Character spans into ``answer``; each must end within it.
    add_special_tokens : bool
        Passed to the tokenizer (BOS/EOS per its post-processor).

    Returns
    -------
    AlignedSample
        ``input_ids`` int64 [T], ``priority`` bool [T], ``prompt_len`` int, ``offsets`` int64 [T, 2].
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
    if not isinstance(answer, str):
        raise TypeError(f"answer: expected a str, got {type(answer).__name__}")
    if isinstance(tokenizer, (str, bytes)) or not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer: expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
    enc = tokenizer.encode(prompt + answer, add_special_tokens=add_special_tokens)
    if not (hasattr(enc, "ids") and hasattr(enc, "offsets")):
        raise TypeError(f"tokenizer: encode() returned {type(enc).__name__}, which has no ids and offsets "
                        "(use a fast tokenizer: tokenizers.Tokenizer)")
    off = _offsets(enc.offsets)
    a, b = len(prompt), len(prompt) + len(answer)
    prio = priority_bits(off, spans, answer_start=a, answer_end=b)
    reaches = (off[:, 1] > a) & (off[:, 0] < off[:, 1])
    nz = torch.nonzero(reaches)
    prompt_len = int(nz[0]) if len(nz) else off.shape[0]
    return AlignedSample(torch.as_tensor(enc.ids, dtype=torch.int64), prio, prompt_len, off)
