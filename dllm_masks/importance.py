"""Float importance weights for ``priority_mask``: the water-filling solve and the sampling of
docs/importance.md, vectorized over tokens and segments (pure PyTorch, any device).

Loops run only over radix levels (4) and exponent-bucket ranks (≤ 255), never over tokens or
segments. Every sum over tokens is an integer sum; the only floating accumulation is the
ascending fold over exponent buckets, written out step by step so that every device and every
backend rounds it the same way.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .rates import exact_counts, solve_two_level

__all__ = ["solve_two_level", "weighted_masks", "token_rates"]

_PINF_BITS = 0x7F800000  # +inf: the "clip nothing" boundary
_TWO32 = 4294967296.0


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact float64 2^e for integer e in the normal range (built from its bits)."""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def _pattern_value(b: torch.Tensor) -> torch.Tensor:
    """float64 value of the float32 bit patterns ``b`` (int64 in [0, 2^31))."""
    return b.to(torch.int32).view(torch.float32).to(torch.float64)


def _groups(gkey: torch.Tensor, gseg_of: torch.Tensor, cnt_src: torch.Tensor, val_src: torch.Tensor, shift: int):
    """Non-empty (segment, digit) groups of tokens keyed ``seg << shift | digit``, ascending:
    (segment, digit, count, significand sum, exclusive count and sum within the segment)."""
    ukey, inv = torch.unique(gkey, sorted=True, return_inverse=True)
    G = ukey.numel()
    cnt = torch.zeros(G, dtype=torch.int64, device=gkey.device).index_add_(0, inv, cnt_src)
    msum = torch.zeros(G, dtype=torch.int64, device=gkey.device).index_add_(0, inv, val_src)
    gseg = ukey >> shift
    digit = ukey & ((1 << shift) - 1)
    # exclusive prefix (within the segment) of counts and sums: integers, exact in any order
    ccum = torch.cumsum(cnt, 0) - cnt
    mcum = torch.cumsum(msum, 0) - msum
    first = torch.ones(G, dtype=torch.bool, device=gkey.device)
    first[1:] = gseg[1:] != gseg[:-1]
    gidx = torch.arange(G, device=gkey.device)
    start = torch.cummax(torch.where(first, gidx, torch.zeros_like(gidx)), 0).values
    cbelow = ccum - ccum[start]
    mbelow = mcum - mcum[start]
    rank = gidx - start
    return gseg, digit, cnt, msum, cbelow, mbelow, rank


def _test(v: torch.Tensor, K: torch.Tensor, A: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """G(b) of docs/importance.md: fl(v(b)·fl(K − A)) ≥ W(b); false at b = 0, true from +inf's pattern."""
    g = (v * (K - A.to(torch.float64))) >= W
    g = g & (b != 0)
    return g | (b >= _PINF_BITS)


def _first_stop(stop: torch.Tensor, gseg: torch.Tensor, rank: torch.Tensor, S: int) -> torch.Tensor:
    """Per group: is it its segment's first group (ascending) with ``stop``?"""
    big = torch.iinfo(torch.int64).max
    r = torch.where(stop, rank, torch.full_like(rank, big))
    first = torch.full((S,), big, dtype=torch.int64, device=rank.device).scatter_reduce_(0, gseg, r, "amin")
    return stop & (rank == first[gseg])


# Long on purpose: it is docs/importance.md §3 operation by operation (the exponent fold, then
# each level of the radix search with its fixed test); split up, the order the backends must
# share would be spread over several functions.
def _water_fill(seg: torch.Tensor, w: torch.Tensor, sel: torch.Tensor, S: int, K: torch.Tensor):
    """Clip boundary U (int64 pattern), clipped count A and q0 per segment (docs/importance.md §3)
    for the maskable tokens ``sel``; segments with K ≥ P are left to the caller."""
    dev = seg.device
    pos = sel & (w > 0)
    idx = pos.nonzero().squeeze(1)
    sg = seg[idx]
    p = w[idx].view(torch.int32).to(torch.int64)
    e = p >> 23
    mant = (p & 0x7FFFFF) | ((e > 0).to(torch.int64) << 23)
    P = torch.zeros(S, dtype=torch.int64, device=dev).index_add_(0, sg, torch.ones_like(sg))

    U = torch.full((S,), _PINF_BITS, dtype=torch.int64, device=dev)
    A = torch.zeros(S, dtype=torch.int64, device=dev)
    W = torch.zeros(S, dtype=torch.float64, device=dev)
    # Level 1: exponent buckets, the ascending fold F.
    gseg, ge, cnt, msum, cbelow, _, rank = _groups((sg << 8) | e, sg, torch.ones_like(sg), mant, 8)
    x = msum.to(torch.float64) * _pow2(ge.clamp(min=1) - 150)
    f_excl = torch.zeros_like(x)
    acc = torch.zeros(S, dtype=torch.float64, device=dev)
    for r in range(int(rank.max()) + 1 if rank.numel() else 0):
        m = rank == r
        gs = gseg[m]
        f_excl[m] = acc[gs]
        acc[gs] = acc[gs] + x[m]
    f_incl = f_excl + x  # the same rounded add as the fold's
    W.copy_(acc)  # nothing clipped: W = F_255
    Kg = K[gseg]
    a_lo = P[gseg] - cbelow
    a_hi = a_lo - cnt
    b_lo = ge << 23
    b_hi = (ge + 1) << 23
    L = _test(_pattern_value(b_lo), Kg, a_lo, f_excl, b_lo)
    Ut = _test(_pattern_value(b_hi.clamp(max=_PINF_BITS - 1)), Kg, a_hi, f_incl, b_hi)
    chosen = _first_stop(L | Ut, gseg, rank, S)
    done_l = chosen & L
    U[gseg[done_l]] = b_lo[done_l]
    A[gseg[done_l]] = a_lo[done_l]
    W[gseg[done_l]] = f_excl[done_l]
    ref = chosen & ~L
    # State of the segments searched further: range [lo, hi), fold below the bucket, significand
    # sum of the bucket below lo, count at and above hi, bucket exponent.
    active = torch.zeros(S, dtype=torch.bool, device=dev)
    lo = torch.zeros(S, dtype=torch.int64, device=dev)
    hi = torch.zeros(S, dtype=torch.int64, device=dev)
    fbase = torch.zeros(S, dtype=torch.float64, device=dev)
    mlow = torch.zeros(S, dtype=torch.int64, device=dev)
    ahi = torch.zeros(S, dtype=torch.int64, device=dev)
    ebk = torch.zeros(S, dtype=torch.int64, device=dev)
    rs = gseg[ref]
    active[rs] = True
    lo[rs], hi[rs], fbase[rs], ahi[rs], ebk[rs] = b_lo[ref], b_hi[ref], f_excl[ref], a_hi[ref], ge[ref]

    for shift, width in ((15, 8), (7, 8), (0, 7)):
        tok = active[sg] & (p >= lo[sg]) & (p < hi[sg])
        if not bool(tok.any()):
            break
        ts = sg[tok]
        tp = p[tok]
        digit = (tp >> shift) & ((1 << width) - 1)
        gseg, dg, cnt, msum, cbelow, mbelow, rank = _groups((ts << 8) | digit, ts, torch.ones_like(ts), mant[tok], 8)
        tot = torch.zeros(S, dtype=torch.int64, device=dev).index_add_(0, ts, torch.ones_like(ts))
        scale = _pow2(ebk[gseg].clamp(min=1) - 150)
        b_lo = lo[gseg] + (dg << shift)
        b_hi = b_lo + (1 << shift)
        a_lo = ahi[gseg] + (tot[gseg] - cbelow)
        a_hi = a_lo - cnt
        w_lo = fbase[gseg] + (mlow[gseg] + mbelow).to(torch.float64) * scale
        w_hi = fbase[gseg] + (mlow[gseg] + mbelow + msum).to(torch.float64) * scale
        Kg = K[gseg]
        L = _test(_pattern_value(b_lo), Kg, a_lo, w_lo, b_lo)
        Ut = _test(_pattern_value(b_hi), Kg, a_hi, w_hi, b_hi)
        chosen = _first_stop(L | Ut, gseg, rank, S)
        # Segments where no digit stops: U = hi (the gap above their last non-empty digit).
        msum_seg = torch.zeros(S, dtype=torch.int64, device=dev).index_add_(0, gseg, msum)
        stopped = torch.zeros(S, dtype=torch.bool, device=dev)
        stopped[gseg[chosen]] = True
        none = active & ~stopped
        sc_seg = _pow2(ebk.clamp(min=1) - 150)
        U = torch.where(none, hi, U)
        A = torch.where(none, ahi, A)
        W = torch.where(none, fbase + (mlow + msum_seg).to(torch.float64) * sc_seg, W)
        done_l = chosen & L
        last = width == 7
        done_u = chosen & ~L if last else torch.zeros_like(chosen)
        ref = chosen & ~L if not last else torch.zeros_like(chosen)
        for d, bb, aa, ww in ((done_l, b_lo, a_lo, w_lo), (done_u, b_hi, a_hi, w_hi)):
            U[gseg[d]] = bb[d]
            A[gseg[d]] = aa[d]
            W[gseg[d]] = ww[d]
        active = torch.zeros_like(active)
        rs = gseg[ref]
        active[rs] = True
        mlow[rs] = mlow[rs] + mbelow[ref]
        lo[rs], hi[rs], ahi[rs] = b_lo[ref], b_hi[ref], a_hi[ref]
    q0 = (K - A.to(torch.float64)) / W
    return U, A, q0, P


def _token_rates(seg, w, sel, S, K, N):
    """Per-token rates (float64 [T], 0 outside ``sel``), the clipped tokens, and rates [S, 2]
    of the ≥ 3-level path (docs/importance.md §3) for target K per segment."""
    U, _, q0, P = _water_fill(seg, w, sel, S, K)
    Pf = P.to(torch.float64)
    sat = K >= Pf  # every positive weight saturates
    pos = sel & (w > 0)
    pattern = w.view(torch.int32).to(torch.int64)
    clipped = pos & ((pattern >= U[seg]) | sat[seg])
    q = torch.minimum(torch.ones_like(K)[seg], w.to(torch.float64) * q0[seg])
    qz = (K - Pf) / (N.to(torch.float64) - Pf)
    q = torch.where(pos, q, torch.where(sat[seg], qz[seg], torch.zeros_like(q)))
    q = torch.where(clipped, torch.ones_like(q), q)
    q = torch.where(sel, q, torch.zeros_like(q))
    qmax = torch.zeros(S, dtype=torch.float64, device=w.device).scatter_reduce_(0, seg, q, "amax")
    one = torch.ones_like(q0)
    r0 = torch.where(sat, one, torch.minimum(one, q0))
    r1 = torch.where(sat, one, qmax)
    return q, clipped, torch.stack([r0, r1], dim=-1)


def _systematic(seg, sel, clipped, q, k, S, v_off):
    """Exact mode of the ≥ 3-level path (docs/importance.md §5): clipped tokens plus systematic
    sampling of the line in index order with integer shares, exactly k per segment."""
    dev = seg.device
    T = seg.numel()
    line = sel & ~clipped
    Q = torch.where(line, torch.floor(q * _TWO32).to(torch.int64), torch.zeros_like(seg))
    A1 = torch.zeros(S, dtype=torch.int64, device=dev).index_add_(0, seg, clipped.to(torch.int64))
    m = k - A1
    seg_sum = torch.zeros(S, dtype=torch.int64, device=dev).index_add_(0, seg, Q)
    base = torch.cumsum(seg_sum, 0) - seg_sum
    c_hi = torch.cumsum(Q, 0) - base[seg]
    c_lo = c_hi - Q

    def F(c, s):
        return torch.where(c <= v_off[s], torch.zeros_like(c),
                           torch.minimum(m[s], ((c - v_off[s] - 1) >> 32) + 1))

    hit = line & (F(c_hi, seg) > F(c_lo, seg))
    sidx = torch.arange(S, device=dev)
    g = m - F(seg_sum, sidx)
    # the g unselected line tokens with the largest share (ties: lowest index)
    cand = line & ~hit
    key = torch.where(cand, (seg << 33) | ((1 << 32) - Q), torch.full_like(seg, S << 33))
    order = torch.sort(key, stable=True).indices
    ccount = torch.zeros(S + 1, dtype=torch.int64, device=dev).index_add_(
        0, torch.where(cand, seg, torch.full_like(seg, S)), torch.ones_like(seg))
    cstart = torch.cumsum(ccount, 0) - ccount
    rank = torch.empty_like(order)
    rank[order] = torch.arange(T, device=dev, dtype=torch.int64)
    rank = rank - cstart[seg]
    extra = cand & (rank < g[seg])
    return clipped | hit | extra


def weighted_masks(w: torch.Tensor, mk: torch.Tensor, seg: torch.Tensor, S: int, sig: torch.Tensor, exact: bool,
                   r: torch.Tensor, seg_first: torch.Tensor, select_two_level) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """View-0 masks, per-token rates and ``rates`` for float32 importance weights.

    Parameters
    ----------
    w : float32 [T] weights (finite, ≥ 0); mk : bool [T] maskable; seg : int64 [T] segment of
    each token; S : segment count; sig : float32 [S]; exact : sampling mode; r : int64 [T] the
    tokens' draws (stream 0 for Bernoulli, stream 1 for exact); seg_first : int64 [S] first token
    of each segment (any value for empty ones); select_two_level(grp, k0, k1) -> bool [T]: the
    boolean op's exact selection (docs/design.md) for groups ``grp`` and counts per segment.

    Returns
    -------
    masked bool [T], q float64 [T] (the rate of each token, 0 where not maskable), rates float64 [S, 2].
    """
    dev = w.device
    big = torch.tensor(float("inf"), dtype=torch.float32, device=dev)
    wm_min = torch.where(mk, w, big)
    wm_max = torch.where(mk, w, -big)
    wmin = torch.full((S,), float("inf"), dtype=torch.float32, device=dev).scatter_reduce_(0, seg, wm_min, "amin")
    wmax = torch.full((S,), -float("inf"), dtype=torch.float32, device=dev).scatter_reduce_(0, seg, wm_max, "amax")
    n = torch.zeros(S, dtype=torch.int64, device=dev).index_add_(0, seg, mk.to(torch.int64))
    at_ends = mk & ((w == wmin[seg]) | (w == wmax[seg]))
    n_ends = torch.zeros(S, dtype=torch.int64, device=dev).index_add_(0, seg, at_ends.to(torch.int64))
    two = n_ends == n  # at most two distinct values (N = 0 included)

    # ≤ 2 levels: the boolean op (base = the level 1.0 if present, else the larger one).
    base_is_min = (wmin == 1.0) & (wmax != 1.0)
    base = torch.where(base_is_min, wmin, wmax)
    other = torch.where(base_is_min, wmax, wmin)
    distinct = two & (n > 0) & (wmin != wmax)
    ratio = torch.where(distinct, other.to(torch.float64) / base.to(torch.float64), torch.ones(S, dtype=torch.float64, device=dev))
    grp = mk & two[seg] & distinct[seg] & (w == other[seg])
    n1 = torch.zeros(S, dtype=torch.int64, device=dev).index_add_(0, seg, grp.to(torch.int64))
    rates2 = solve_two_level(n, n1, sig, ratio)
    q2 = rates2[seg, grp.to(torch.int64)]

    # ≥ 3 levels: water-filling.
    gen = ~two
    sel = mk & gen[seg]
    s64 = sig.to(torch.float64)
    K = s64 * n.to(torch.float64)
    k = torch.floor(K + 0.5)
    target = k if exact else K
    qg, clipped, ratesg = _token_rates(seg, w, sel, S, torch.where(gen, target, torch.zeros_like(target)), n)

    q = torch.where(two[seg], q2, qg)
    q = torch.where(mk, q, torch.zeros_like(q))
    rates = torch.where(two[:, None], torch.stack([rates2[:, 0], torch.maximum(rates2[:, 0], rates2[:, 1])], -1), ratesg)
    if exact:
        k0, k1 = exact_counts(n, n1, sig, rates2)
        k0 = torch.where(two, k0, torch.zeros_like(k0))
        k1 = torch.where(two, k1, torch.zeros_like(k1))
        m2 = select_two_level(grp.to(torch.int64), k0, k1) & two[seg]
        v_off = r[seg_first.clamp(max=max(w.numel() - 1, 0))] if w.numel() else torch.zeros(S, dtype=torch.int64, device=dev)
        mg = _systematic(seg, sel, clipped, qg, k.to(torch.int64), S, v_off)
        masked = mk & (m2 | mg)
    else:
        thr = torch.floor(q * _TWO32).to(torch.int64)
        masked = mk & (r < thr)
    return masked, q, rates


def token_rates(weights: torch.Tensor, sigma, cu_seqlens=None, *, maskable=None, block_size=None,
                exact: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rates q_i of every token for float32 importance ``weights`` (docs/importance.md), the
    values ``priority_mask`` draws with (``exact=True``: the inclusion probabilities π_i).

    Parameters
    ----------
    weights : torch.Tensor, float32, [T] (finite, ≥ 0)
    sigma : float or floating tensor [1] or [S]
    cu_seqlens : int tensor [B+1], optional (None: one sequence)
    maskable : bool [T], optional (None: every token)
    block_size : int, optional (one σ per block)
    exact : bool, rates of ``sampling="exact"`` (target floor(σ·N + 0.5))

    Returns
    -------
    (q float64 [T] (0 where not maskable), rates float64 [S, 2])
    """
    from .reference import _token_layout

    T = weights.numel()
    dev = weights.device
    if cu_seqlens is None:
        cu_seqlens = torch.tensor([0, T], dtype=torch.int32, device=dev)
    cu, seq, pos = _token_layout(cu_seqlens, T)
    B = cu.numel() - 1
    if block_size:
        lens = cu[1:] - cu[:-1]
        nblk = (lens + block_size - 1) // block_size
        bstart = torch.zeros(B + 1, dtype=torch.int64, device=dev)
        torch.cumsum(nblk, 0, out=bstart[1:])
        seg = bstart[seq] + pos // block_size
        S = int(bstart[-1])
    else:
        seg, S = seq, B
    sig = torch.as_tensor(sigma, dtype=torch.float32, device=dev).reshape(-1).expand(S)
    mk = torch.ones(T, dtype=torch.bool, device=dev) if maskable is None else maskable.to(torch.bool)
    zero = torch.zeros(T, dtype=torch.int64, device=dev)
    first = torch.zeros(S, dtype=torch.int64, device=dev)
    _, q, rates = weighted_masks(weights.to(torch.float32), mk, seg, S, sig, exact, zero, first,
                                 lambda g, k0, k1: torch.zeros_like(mk))
    return q, rates
