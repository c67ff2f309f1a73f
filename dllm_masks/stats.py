"""``dm.mask_stats``: what a batch of masks looks like, per view (docs/importance.md §7).

The paper blames the harm of hard masking on *contextual collapse*: too many neighbouring dense
tokens masked at once. These statistics measure that: masked run lengths, fully masked blocks,
dense tokens masked together with both neighbours, dense spans masked whole, and the realized
rates against σ and per priority level. Everything is vectorized over tokens (no Python loop
over tokens, sequences or segments).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import torch

from . import validation
from .ops import num_segments

__all__ = ["mask_stats", "MaskStats", "format_stats"]


class MaskStats(NamedTuple):
    """Statistics of one view of a :class:`~dllm_masks.MaskedBatch`.

    Attributes
    ----------
    run_hist : torch.Tensor, int64, [R + 1]
        ``run_hist[n]`` = number of maximal runs of exactly n consecutive masked tokens (runs stop
        at sequence ends); R is the longest run (``run_hist[0]`` is 0).
    run_mean : float
        Mean masked run length (nan without masked tokens).
    full_blocks : float or None
        Share of blocks (``block_size`` positions from each sequence's start) with at least one
        maskable token whose maskable tokens are all masked. None without ``block_size``.
    dense_both_neighbours : float
        Among masked dense tokens with a neighbour on each side in their sequence, the share whose
        two neighbours are masked too (nan if there is none).
    dense_spans_whole : float
        Share of dense spans (maximal runs of dense tokens in a sequence) masked entirely (nan if none).
    segment_rate : torch.Tensor, float64, [S]
        Realized masking rate per segment: masked / maskable (nan where nothing is maskable).
    segment_target : torch.Tensor, float64, [S]
        Its target: σ in view 0, 1 − σ in the complement.
    level_rate : dict
        Realized rate per priority level: {level: masked / maskable} (bool priority: levels False
        and True; float weights: each value if there are at most 16, else 8 equal-count bins
        named by their lower edge).
    """

    run_hist: torch.Tensor
    run_mean: float
    full_blocks: Optional[float]
    dense_both_neighbours: float
    dense_spans_whole: float
    segment_rate: torch.Tensor
    segment_target: torch.Tensor
    level_rate: Dict[float, float]


def _share(num: torch.Tensor, den: torch.Tensor) -> float:
    d = int(den)
    return float(num) / d if d else float("nan")


def _levels(prio: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
    """Level value of every token (float64): the priority itself, or a bin's lower edge."""
    p = prio.to(torch.float64)
    vals = torch.unique(p[mk])
    if vals.numel() <= 16:
        return p
    edges = torch.quantile(p[mk], torch.linspace(0, 1, 9, dtype=torch.float64)[:-1])
    edges = torch.unique(edges)
    idx = torch.searchsorted(edges, p, right=True).clamp(min=1) - 1
    return edges[idx]


def mask_stats(batch, *, block_size: Optional[int] = None, priority: Optional[torch.Tensor] = None,
               maskable: Optional[torch.Tensor] = None) -> List[MaskStats]:
    """Per-view statistics of the masks of a :class:`~dllm_masks.MaskedBatch`.

    Parameters
    ----------
    batch : MaskedBatch
        The output of :func:`dllm_masks.priority_mask`, packed ([V·T]) or padded ([V·B, L]).
    block_size : int, optional
        The ``block_size`` the batch was made with: segments are blocks, and ``full_blocks`` is
        measured. None: one segment per sequence.
    priority : torch.Tensor, bool/integer or float32, [T] or [B, L], optional
        The priority given to the op. Dense tokens are the nonzero ones (bool/integer) or the
        weights above 1.0 (float: above the base weight). None: no dense token.
    maskable : torch.Tensor, bool, [T] or [B, L], optional
        Tokens that could be masked. None: with the complement, the union of the two views (it
        equals the maskable tokens); otherwise every token.

    Returns
    -------
    list of :class:`MaskStats`, one per view (view 0 first).
    """
    K = None if block_size is None else validation.check_int("block_size", block_size, low=1)
    views, cu, mv = _views(batch, K, block_size)
    T = mv.shape[1]
    mk, dense, level = _token_classes(mv, views, T, priority, maskable)
    geo = _geometry(cu, T, K)
    S = batch.sigma.numel()
    sig = batch.sigma.to(torch.float64).cpu().expand(S)
    return [_view_stats(mv[v], mk, dense, level, geo, S, K, sig if v == 0 else 1.0 - sig) for v in range(views)]


def _views(batch, K: Optional[int], block_size):
    """(views, int64 offsets of view 0's sequences [B+1], bool masks [views, T]) of a batch."""
    masked_all = batch.masked
    S = batch.sigma.numel()
    if masked_all.dim() == 2:
        rows, L = masked_all.shape
        cu_all = torch.arange(rows + 1, dtype=torch.int64) * L
    else:
        cu_all = batch.cu_seqlens.to(torch.int64).cpu()
    nseq = cu_all.numel() - 1
    masked_all = masked_all.reshape(-1).cpu()
    views = 1
    if nseq % 2 == 0 and nseq:
        half = cu_all[: nseq // 2 + 1]
        if num_segments(half, K) == S and torch.equal(cu_all[nseq // 2:] - cu_all[nseq // 2], half):
            views = 2
    if views == 1 and num_segments(cu_all, K) != S:
        raise ValueError(f"block_size: the batch has {S} segments, which block_size={block_size} does not give")
    T = masked_all.numel() // views
    return views, cu_all[: nseq // views + 1], masked_all.view(views, T)


def _token_classes(mv: torch.Tensor, views: int, T: int, priority, maskable):
    """Per token: maskable (bool), dense (bool, maskable only) and priority level (float64)."""
    if maskable is not None:
        mk = maskable.reshape(-1).to(torch.bool).cpu()
        validation.check_shape("maskable", mk, (T,))
    elif views == 2:
        mk = mv[0] | mv[1]
    else:
        mk = torch.ones(T, dtype=torch.bool)
    if priority is not None:
        pr = priority.reshape(-1).cpu()
        validation.check_shape("priority", pr, (T,))
        dense = (pr > 1.0) if pr.is_floating_point() else (pr != 0)
        level = _levels(pr, mk) if pr.is_floating_point() else (pr != 0).to(torch.float64)
    else:
        dense = torch.zeros(T, dtype=torch.bool)
        level = torch.zeros(T, dtype=torch.float64)
    return mk, dense & mk, level


def _geometry(cu: torch.Tensor, T: int, K: Optional[int]) -> dict:
    """Per token: whether it has a neighbour before / after it in its sequence, and its segment."""
    tok = torch.arange(T)
    seq = torch.searchsorted(cu[1:], tok, right=True)
    pos = tok - cu[seq]
    lens = cu[1:] - cu[:-1]
    if K is None:
        seg = seq
    else:
        nblk = (lens + K - 1) // K
        seg = (torch.cumsum(nblk, 0) - nblk)[seq] + pos // K
    return {"has_prev": pos > 0, "has_next": pos < lens[seq] - 1, "seg": seg}


def _shifted(x: torch.Tensor, by: int, valid: torch.Tensor) -> torch.Tensor:
    """x[i - by] (by = 1: the previous token; -1: the next one) where ``valid``, else False."""
    out = torch.zeros_like(x)
    if by > 0:
        out[by:] = x[:-by]
    else:
        out[:by] = x[-by:]
    return out & valid


def _view_stats(m, mk, dense, level, geo, S: int, K: Optional[int], target) -> MaskStats:
    """The statistics of one view's masks ``m`` (bool [T])."""
    has_prev, has_next, seg = geo["has_prev"], geo["has_next"], geo["seg"]
    prev, nxt = _shifted(m, 1, has_prev), _shifted(m, -1, has_next)
    # masked runs
    starts = m & ~prev
    run_id = torch.cumsum(starts.to(torch.int64), 0) - 1
    run_len = torch.bincount(run_id[m], minlength=int(starts.sum())) if bool(m.any()) else torch.zeros(0, dtype=torch.int64)
    hist = torch.bincount(run_len, minlength=1) if run_len.numel() else torch.zeros(1, dtype=torch.int64)
    run_mean = float(run_len.double().mean()) if run_len.numel() else float("nan")
    # fully masked blocks
    full = None
    if K is not None:
        bk_mk = torch.zeros(S, dtype=torch.int64).index_add_(0, seg, mk.to(torch.int64))
        bk_m = torch.zeros(S, dtype=torch.int64).index_add_(0, seg, m.to(torch.int64))
        full = _share(((bk_m == bk_mk) & (bk_mk > 0)).sum(), (bk_mk > 0).sum())
    # dense tokens: both neighbours, whole spans
    inner = dense & m & has_prev & has_next
    both = _share((inner & prev & nxt).sum(), inner.sum())
    span_start = dense & ~_shifted(dense, 1, has_prev)
    span_id = torch.cumsum(span_start.to(torch.int64), 0) - 1
    nspan = int(span_start.sum())
    if nspan:
        span_len = torch.bincount(span_id[dense], minlength=nspan)
        span_m = torch.bincount(span_id[dense], weights=m[dense].double(), minlength=nspan)
        whole = _share((span_m == span_len.double()).sum(), torch.tensor(nspan))
    else:
        whole = float("nan")
    # realized rates
    n_mk = torch.zeros(S, dtype=torch.float64).index_add_(0, seg, mk.double())
    n_m = torch.zeros(S, dtype=torch.float64).index_add_(0, seg, m.double())
    rate = torch.where(n_mk > 0, n_m / n_mk.clamp(min=1), torch.full_like(n_m, float("nan")))
    levels = {}
    for lv in torch.unique(level[mk]).tolist():
        sel = mk & (level == lv)
        levels[lv] = _share((m & sel).sum(), sel.sum())
    return MaskStats(hist, run_mean, full, both, whole, rate, target, levels)


def format_stats(stats: List[MaskStats], max_run: int = 12) -> str:
    """A short human-readable summary of :func:`mask_stats` (one block per view)."""
    lines = []
    for v, s in enumerate(stats):
        name = "view 0 (sigma)" if v == 0 else "view 1 (complement)"
        h = s.run_hist.tolist()
        shown = " ".join(f"{n}:{c}" for n, c in enumerate(h[: max_run + 1]) if n and c)
        more = sum(h[max_run + 1:])
        lines.append(f"{name}: masked runs (length:count) {shown}" + (f" >{max_run}:{more}" if more else "")
                     + f"; mean run {s.run_mean:.2f}")
        if s.full_blocks is not None:
            lines.append(f"  fully masked blocks {s.full_blocks:.3f}")
        lines.append(f"  dense tokens masked with both neighbours {s.dense_both_neighbours:.3f}; "
                     f"dense spans masked whole {s.dense_spans_whole:.3f}")
        ok = ~torch.isnan(s.segment_rate)
        if bool(ok.any()):
            dev = (s.segment_rate[ok] - s.segment_target[ok]).abs()
            lines.append(f"  realized rate - target per segment: mean |diff| {float(dev.mean()):.4f}, "
                         f"max {float(dev.max()):.4f} over {int(ok.sum())} segments")
        lv = ", ".join(f"{k:g}: {r:.3f}" for k, r in s.level_rate.items())
        lines.append(f"  realized rate per priority level: {lv}")
    return "\n".join(lines)
