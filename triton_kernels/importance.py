"""``dllm_masks::priority_mask`` on CUDA with float32 importance weights: the Triton kernel.

Bit-identical to :func:`dllm_masks.reference.priority_mask_ref` (docs/importance.md): the same
Philox counter layout, the water-filling solve of §3 operation by operation (integer histograms
over exponent buckets, the ascending float64 fold, the radix search with its fixed test), integer
Bernoulli thresholds (§4) and the systematic exact sampling of §5 with its gap tokens. Launched
with ``enable_fp_fusion=False``: every float64 operation is rounded on its own (``mul.rn``,
``add.rn``, ``div.rn``; no ``fma``). float32 weights are read as bit patterns and widened to
float64 through their integer significand and exponent, so no float32 arithmetic (and no
flush-to-zero of denormals) ever touches them.

Work decomposition: one program per segment (a sequence, or a block of ``block_size``
positions), looping over the segment's tokens in tiles. Passes over a segment:

1. statistics: maskable and positive counts, the smallest and largest maskable weight and how
   many tokens hold each (a segment whose maskable weights take at most two values is the
   boolean op, §2), and the 256-bin exponent histogram (counts and int64 significand sums, from
   one-hot reductions over ``HB`` tokens at a time);
2. only when the clip boundary falls inside an occupied bucket: up to three refinement passes
   (the same histograms over the next digit of the bit patterns);
3. ``sampling="exact"``: with three or more levels, one pass for the line's total share (and one
   more per gap token, §5 step 4; in practice none or one); with at most two levels, the boolean
   op's selection (the k smallest keys ``(r << 31) | j`` per group, found by a radix select with
   4-bit digits, two groups at once, until one key is left in each bucket);
4. the write pass: rates per token, the draws (Bernoulli) or the running prefix sums of the
   integer shares (exact, carried across tiles), both views, labels and loss weights.

No host sync and no data-dependent allocation (the grid is ``num_segments``), so a call can be
captured in a CUDA graph; seed and offsets are read from ``rng`` on the device.
Loops over tiles are ``while`` loops (see :mod:`.priority_mask`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .philox import STREAM_BERNOULLI, STREAM_SELECT, philox_quads, pick_word
from .priority_mask import (_empty_outputs, _exact_counts, _segment, _segment_table, _select_keys,
                            _sequence_key, _solve_rates, _tile, _write_views)

__all__ = ["priority_mask_weights_triton", "priority_mask_weights_triton_out", "weights_launch_settings",
           "WeightsLaunchSettings", "compile_weights_specialization"]

LW_SIGMA: tl.constexpr = tl.constexpr(1)
PINF_BITS: tl.constexpr = tl.constexpr(0x7F800000)  # +inf: the "clip nothing" boundary
ONE_BITS: tl.constexpr = tl.constexpr(0x3F800000)  # 1.0f
NO_PATTERN: tl.constexpr = tl.constexpr(0x7FFFFFFF)  # above every weight pattern
KEY_ALL: tl.constexpr = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # above every selection key
# _solve_rates' modes (priority_mask.W_*): which branch of docs/design.md §3 a ratio takes.
W_ONE: tl.constexpr = tl.constexpr(0)
W_ZERO: tl.constexpr = tl.constexpr(2)
W_ABOVE_ONE: tl.constexpr = tl.constexpr(3)
W_BELOW_ONE: tl.constexpr = tl.constexpr(4)


# ---------------------------------------------------------------------------------------------
# Exact float64 values from bit patterns
# ---------------------------------------------------------------------------------------------
@triton.jit
def _pow2(e):
    """Exact float64 2^e for int64 e in the normal range (built from its bits)."""
    return ((e + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def _mant(p):
    """Integer significand of non-negative float32 patterns p (int64): w = mant · 2^(max(e,1) − 150)."""
    return (p & 0x7FFFFF) | ((p >> 23) > 0).to(tl.int64) << 23


@triton.jit
def _value(p):
    """float64 value of the float32 patterns p (int64 in [0, 0x7F800000)), exactly."""
    return _mant(p).to(tl.float64) * _pow2(tl.maximum(p >> 23, 1) - 150)


@triton.jit
def _test(b, K, A, W):
    """G(b) of docs/importance.md §3: fl(v(b)·fl(K − A)) ≥ W; false at b = 0, true from +inf's pattern."""
    g = (_value(tl.minimum(b, PINF_BITS - 1)) * (K - A.to(tl.float64))) >= W
    return (g & (b != 0)) | (b >= PINF_BITS)


@triton.jit
def _at(x, bins, i):
    """Element i of the vector x (a masked sum: exact for integers and for one float among zeros)."""
    return tl.sum(tl.where(bins == i, x, 0))


# ---------------------------------------------------------------------------------------------
# Loading tokens
# ---------------------------------------------------------------------------------------------
@triton.jit
def _tokens(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr,
            G: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """The boolean kernel's tile of G Philox groups from group qb (quad [G,1], lane [1,4],
    positions j, token indices t, valid, maskable; see priority_mask._tile) with the positive
    tokens and the int64 weight patterns (sign bit cleared) of the sequence starting at cu_b."""
    quad, lane, j, t, valid, mk, _ = _tile(qb, cu_b, jlo, jhi, plen_b, mk_ptr, w_ptr,
                                           G, False, HAS_MASKABLE, HAS_PROMPT)
    raw = tl.load(w_ptr + t, mask=valid, other=0)
    pos = mk & (raw > 0)  # -0.0 (and anything negative) is not positive
    p = (raw & 0x7FFFFFFF).to(tl.int64)
    return quad, lane, j, t, valid, mk, pos, p


@triton.jit
def _flat_tokens(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr,
                 HB: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """(maskable, positive, patterns) of the HB positions from Philox group qb, flat (the
    histogram passes need no draws: one token per row of their one-hot matrices)."""
    quad, lane, j, t, valid, mk, pos, p = _tokens(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr,
                                                  HB // 4, HAS_MASKABLE, HAS_PROMPT)
    return tl.reshape(mk, [HB]), tl.reshape(pos, [HB]), tl.reshape(p, [HB])


@triton.jit
def _digit_hist(dig, on, mant, bins):
    """Counts and significand sums (int64, shaped like ``bins``: all 256 or half of them) of the
    digits ``dig`` of the tokens ``on`` (one-hot reduction; the int32 partial sums hold
    HB · 2^24 < 2^31). Bins × tokens, tokens along the fast axis: the tile's tokens are spread
    over the threads, not each read by all."""
    oh = (dig[None, :] == bins[:, None]) & on[None, :]
    c = tl.sum(oh.to(tl.int32), axis=1).to(tl.int64)
    m = tl.sum(tl.where(oh, mant.to(tl.int32)[None, :], 0), axis=1).to(tl.int64)
    return c, m


@triton.jit
def _all_bins(lo, hi, HBINS: tl.constexpr):
    """The [256] histogram from its bins 0..HBINS-1 (``lo``) and, for HBINS = 128, 128..255 (``hi``)."""
    out = lo
    if HBINS < 256:
        out = tl.reshape(tl.trans(tl.join(lo, hi)), [256])
    return out


# ---------------------------------------------------------------------------------------------
# The water-filling solve (docs/importance.md §3)
# ---------------------------------------------------------------------------------------------
# Long on purpose, like importance._water_fill: the level test, then each radix level, in the
# order the backends share.
@triton.jit
def _water_fill(cnt, msum, e_lo, e_hi, P, K, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr,
                HB: tl.constexpr, HBINS: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """(U, q0) of one segment from its exponent histogram (buckets e_lo..e_hi hold its positive
    weights); refinement passes re-read the segment's tokens [jlo, jhi)."""
    bins = tl.arange(0, 256).to(tl.int64)
    lowb = tl.arange(0, HBINS).to(tl.int64)
    x = msum.to(tl.float64) * _pow2(tl.maximum(bins, 1) - 150)
    # The ascending fold F over the buckets (empty ones add +0.0, which changes nothing).
    acc = K * 0.0
    f_excl = x * 0.0
    e = e_lo
    while e <= e_hi:
        f_excl = tl.where(bins == e, acc, f_excl)
        acc = acc + _at(x, bins, e)
        e += 1
    f_incl = f_excl + x  # the fold's own rounded add
    a_lo = P - (tl.cumsum(cnt, 0) - cnt)
    a_hi = a_lo - cnt
    b_lo = bins << 23
    b_hi = (bins + 1) << 23
    L = _test(b_lo, K, a_lo, f_excl)
    Ut = _test(b_hi, K, a_hi, f_incl)
    first = tl.min(tl.where((cnt > 0) & (L | Ut), bins, 256))
    U = e_lo * 0 + PINF_BITS
    A = P * 0
    W = acc
    refine = P < 0  # False (a tensor: the loop below carries it)
    lo = A
    hi = A
    ebk = A
    fbase = acc
    mlow = A
    ahi = A
    if first < 256:
        if _at(L.to(tl.int32), bins, first) != 0:
            U = first << 23
            A = _at(a_lo, bins, first)
            W = _at(f_excl, bins, first)
        else:
            refine = P >= 0  # True
            lo = first << 23
            hi = (first + 1) << 23
            ebk = first
            fbase = _at(f_excl, bins, first)
            ahi = _at(a_hi, bins, first)
    scale = _pow2(tl.maximum(ebk, 1) - 150)
    lv = A * 0
    while refine:
        shift = 15 - 8 * lv - (lv == 2).to(tl.int32)  # 15, 7, 0
        dmask = 255 >> (lv == 2).to(tl.int32)  # widths 8, 8, 7
        c_lo = tl.zeros([HBINS], tl.int64)
        m_lo = c_lo
        c_hi = c_lo
        m_hi = c_lo
        qb = jlo >> 2
        while qb < (jhi + 3) >> 2:
            mk, pos, p = _flat_tokens(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, HB, HAS_MASKABLE, HAS_PROMPT)
            dig = (p >> shift) & dmask
            on = pos & (p >= lo) & (p < hi)
            dc, dm = _digit_hist(dig, on, _mant(p), lowb)
            c_lo += dc
            m_lo += dm
            if HBINS < 256:
                dc, dm = _digit_hist(dig, on, _mant(p), lowb + HBINS)
                c_hi += dc
                m_hi += dm
            qb += HB // 4
        c = _all_bins(c_lo, c_hi, HBINS)
        m = _all_bins(m_lo, m_hi, HBINS)
        tot = tl.sum(c)
        cbelow = tl.cumsum(c, 0) - c
        mbelow = tl.cumsum(m, 0) - m
        d_lo = lo + (bins << shift)
        d_hi = d_lo + (1 << shift)
        da_lo = ahi + (tot - cbelow)
        da_hi = da_lo - c
        w_lo = fbase + (mlow + mbelow).to(tl.float64) * scale
        w_hi = fbase + (mlow + mbelow + m).to(tl.float64) * scale
        L = _test(d_lo, K, da_lo, w_lo)
        Ut = _test(d_hi, K, da_hi, w_hi)
        first = tl.min(tl.where((c > 0) & (L | Ut), bins, 256))
        refine = P < 0
        if first == 256:  # no digit stops: the gap above the last non-empty one
            U = hi
            A = ahi
            W = fbase + (mlow + tl.sum(m)).to(tl.float64) * scale
        elif _at(L.to(tl.int32), bins, first) != 0:
            U = _at(d_lo, bins, first)
            A = _at(da_lo, bins, first)
            W = _at(w_lo, bins, first)
        elif lv == 2:
            U = _at(d_hi, bins, first)
            A = _at(da_hi, bins, first)
            W = _at(w_hi, bins, first)
        else:
            refine = P >= 0
            mlow = mlow + _at(mbelow, bins, first)
            ahi = _at(da_hi, bins, first)
            lo = _at(d_lo, bins, first)
            hi = _at(d_hi, bins, first)
        lv += 1
    q0 = (K - A.to(tl.float64)) / W
    return U, q0


# ---------------------------------------------------------------------------------------------
# Per-token rates, systematic sampling, the two-level selection
# ---------------------------------------------------------------------------------------------
@triton.jit
def _rate(mk, pos, p, two, other, q0b, q1b, U, q0, qz, sat):
    """(q float64, clipped, priority group of the two-level op) of tokens: the boolean op's rates
    where the segment has at most two levels, else min(1, w·q0) with the clipped tokens at 1 and
    zero-weight tokens at qz (K ≥ P) or 0 (docs/importance.md §2-§3)."""
    grp = mk & (p == other)
    clip = pos & ((p >= U) | sat)
    qg = tl.minimum(_value(p) * q0, 1.0)
    qg = tl.where(pos, qg, tl.where(sat, qz, 0.0))
    qg = tl.where(clip, 1.0, qg)
    q = tl.where(two, tl.where(grp, q1b, q0b), qg)
    return tl.where(mk, q, 0.0), clip & (~two), grp


@triton.jit
def _points_below(c, V, m):
    """F(c) of docs/importance.md §5: how many of the points V + j·2^32 (j < m) lie below c."""
    return tl.where(c <= V, 0, tl.minimum(m, ((c - V - 1) >> 32) + 1))


@triton.jit
def _line_tile(q, mk, clip, carry, V, m):
    """Integer shares Q of the line tokens of a [G,4] tile, their prefix sums C (carried from the
    tiles before) and which of them hold a point; returns (line, Q, hit, carry after the tile)."""
    line = mk & (~clip)
    Q = tl.where(line, (q * 4294967296.0).to(tl.int64), 0)  # q ≥ 0: truncation is floor
    rs = tl.sum(Q, axis=1)
    c_hi = carry + (tl.cumsum(rs, 0) - rs)[:, None] + tl.cumsum(Q, axis=1)
    hit = line & (_points_below(c_hi, V, m) > _points_below(c_hi - Q, V, m))
    return line, Q, hit, carry + tl.sum(rs)


@triton.jit
def _gap_key(Q, j, jlo):
    """Order of the gap tokens: larger Q first, then lower position (Q < 2^32 for every candidate
    once a gap exists: a share of 2^32 always holds a point unless every point is placed)."""
    return (Q << 31) | (2147483647 - (j - jlo))


@triton.jit
def _line_pass(jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, two, other, q0b, q1b, U, q0, qz, sat, V, m, gcut,
               G: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """One pass over a segment's line: (clipped count A', total share C, the largest gap key
    below ``gcut`` among the unselected line tokens, -1 if none) for m points."""
    zero = jlo * 0
    a1 = zero
    carry = zero
    nxt = zero - 1
    qb = jlo >> 2
    while qb < (jhi + 3) >> 2:
        quad, lane, j, t, valid, mk, pos, p = _tokens(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr,
                                                      G, HAS_MASKABLE, HAS_PROMPT)
        q, clip, grp = _rate(mk, pos, p, two, other, q0b, q1b, U, q0, qz, sat)
        a1 += tl.sum(clip.to(tl.int32)).to(tl.int64)
        line, Q, hit, carry = _line_tile(q, mk, clip, carry, V, m)
        key = _gap_key(Q, j, jlo)
        nxt = tl.maximum(nxt, tl.max(tl.where(line & (~hit) & (key < gcut), key, -1)))
        qb += G
    return a1, carry, nxt


@triton.jit
def _systematic_plan(jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, two, other, q0b, q1b, U, q0, qz, sat, V, kf,
                     G: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """(m, gcut) of docs/importance.md §5 for one segment with three or more levels: m = k − A'
    points to place on the line, and the key from which unselected line tokens are gap tokens
    (KEY_ALL: none). One pass for A' and the line's total share C, then g = m − F(C) passes, each
    finding the next largest key among the unselected line tokens (in practice g is 0 or 1)."""
    gcut = jlo * 0 + KEY_ALL
    a1, C, nxt = _line_pass(jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, two, other, q0b, q1b, U, q0, qz, sat, V, jlo * 0,
                            gcut, G, HAS_MASKABLE, HAS_PROMPT)
    m = kf.to(tl.int64) - a1
    gap = m - _points_below(C, V, m)
    while gap > 0:
        a1, C, nxt = _line_pass(jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, two, other, q0b, q1b, U, q0, qz, sat, V, m,
                                gcut, G, HAS_MASKABLE, HAS_PROMPT)
        gap = tl.where(nxt < 0, 0, gap - 1)
        gcut = tl.where(nxt < 0, gcut, nxt)
    return m, gcut


@triton.jit
def _systematic_tile(q, mk, clip, carry, V, m, gcut, j, jlo):
    """View-0 mask of a [G,4] tile under systematic sampling (clipped, holding a point, or a gap
    token) and the prefix carry after it."""
    line, Q, hit, carry = _line_tile(q, mk, clip, carry, V, m)
    return clip | hit | (line & (~hit) & (_gap_key(Q, j, jlo) >= gcut)), carry


@triton.jit
def _group_keys(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, other, key_lo, key_hi, k0, k1,
                G: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """Selection keys [4G] of a tile (flat) and its tokens of each group [2, 4G] (group 1: the
    maskable tokens of weight ``other``, group 0: the other maskable ones)."""
    quad, lane, j, t, valid, mk, pos, p = _tokens(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr,
                                                  G, HAS_MASKABLE, HAS_PROMPT)
    key = tl.reshape(_select_keys(quad, lane, j, key_lo, key_hi, k0, k1), [4 * G])
    gi = tl.arange(0, 2)[:, None]
    return key, tl.reshape(mk, [4 * G])[None, :] & (tl.reshape(p == other, [4 * G])[None, :] == (gi == 1))


@triton.jit
def _two_level_cuts(jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, other, key_lo, key_hi, k0, k1, kk0, kk1, m0, m1,
                    G: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """Cut keys (c0, c1) of the boolean op's exact selection (docs/design.md §5) on a segment with
    at most two levels: a maskable token of group g is masked iff its key (r << 31) | j < c_g,
    c_g being the key of rank kk_g among the m_g tokens of the group (group 1: weight ``other``).

    Both groups at once (state vectors over g): a radix select with 4-bit digits from the top of
    the 63-bit keys, until each active group's bucket holds one key, then one pass for that key."""
    gi = tl.arange(0, 2).to(tl.int64)
    bins = tl.arange(0, 16).to(tl.int64)
    kk = tl.where(gi == 0, kk0, kk1)
    size = tl.where(gi == 0, m0, m1)
    act = (kk > 0) & (kk < size)
    rank = kk
    bucket = size
    prefix = gi * 0
    psh = prefix + 63  # key >> 63 == 0 == prefix for every key
    d = cu_b * 0 + 60
    while (tl.sum((act & (bucket > 1)).to(tl.int32)) > 0) & (d >= 0):
        h = tl.zeros([2, 16], tl.int64)
        qb = jlo >> 2
        while qb < (jhi + 3) >> 2:
            key, ing = _group_keys(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, other, key_lo, key_hi, k0, k1,
                                   G, HAS_MASKABLE, HAS_PROMPT)
            inb = ing & ((key[None, :] >> psh[:, None]) == prefix[:, None])
            oh = (((key >> d) & 15)[None, :, None] == bins[None, None, :]) & inb[:, :, None]
            h += tl.sum(oh.to(tl.int32), axis=1).to(tl.int64)
            qb += G
        refine = act & (bucket > 1)
        cincl = tl.cumsum(h, axis=1)
        dig = tl.sum((cincl <= rank[:, None]).to(tl.int64), axis=1)
        at = bins[None, :] == dig[:, None]
        rank = tl.where(refine, rank - tl.sum(tl.where(at, cincl - h, 0), axis=1), rank)
        bucket = tl.where(refine, tl.sum(tl.where(at, h, 0), axis=1), bucket)
        prefix = tl.where(refine, prefix * 16 + dig, prefix)
        psh = tl.where(refine, d, psh)
        d -= 4
    cut = tl.where(kk > 0, KEY_ALL, 0)
    if tl.sum(act.to(tl.int32)) > 0:  # the one key left in each active group's bucket
        qb = jlo >> 2
        while qb < (jhi + 3) >> 2:
            key, ing = _group_keys(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, other, key_lo, key_hi, k0, k1,
                                   G, HAS_MASKABLE, HAS_PROMPT)
            inb = ing & act[:, None] & ((key[None, :] >> psh[:, None]) == prefix[:, None])
            cut = tl.minimum(cut, tl.min(tl.where(inb, key[None, :], KEY_ALL), axis=1))
            qb += G
    return _at(cut, gi, 0), _at(cut, gi, 1)


# ---------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["T", "sigma_stride", "has_sid", "lw_mode", "mask_id"])
def _weights_kernel(
    ids_ptr, cu_ptr, segstart_ptr, segseq_ptr, sigma_ptr, w_ptr, mk_ptr, plen_ptr, sid_ptr, rng_ptr,
    noisy_ptr, masked_ptr, labels_ptr, lw_ptr, rates_ptr,
    T, sigma_stride, has_sid, lw_mode, mask_id,
    G: tl.constexpr, GS: tl.constexpr, HB: tl.constexpr, HBINS: tl.constexpr, SEG_IS_SEQ: tl.constexpr,
    HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr, EXACT: tl.constexpr, COMPLEMENT: tl.constexpr,
    HAS_LW: tl.constexpr,
):
    """Program s: segment s, whole (statistics, solve, selection, both views, its rates). Tiles of
    G Philox groups (the write and line passes), GS groups (the two-level radix select, whose
    one-hot matrices are 2 × 4·GS × 16) and HB tokens (the histogram passes, whose one-hot
    matrices are HBINS × HB: all 256 bins at once, or 128 and then the other 128)."""
    s = tl.program_id(0).to(tl.int64)
    seg_lo, seg_hi, b, cu_b, _, _ = _segment(s, segstart_ptr, segseq_ptr, cu_ptr, 1, SEG_IS_SEQ)
    plen_b = 0
    if HAS_PROMPT:
        plen_b = tl.load(plen_ptr + b)
    jlo = seg_lo - cu_b
    jhi = seg_hi - cu_b
    zero = seg_lo * 0

    # Pass 1: counts, the two ends of the weights (with how many tokens sit at each), histogram.
    lowb = tl.arange(0, HBINS).to(tl.int64)
    n = zero
    P = zero
    pmin = zero + NO_PATTERN
    cmin = zero
    pmax = zero - 1
    cmax = zero
    ppos = zero + NO_PATTERN  # smallest positive pattern
    cnt_lo = tl.zeros([HBINS], tl.int64)
    msum_lo = cnt_lo
    cnt_hi = cnt_lo
    msum_hi = cnt_lo
    qb = jlo >> 2
    while qb < (jhi + 3) >> 2:
        mk, pos, p = _flat_tokens(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, HB, HAS_MASKABLE, HAS_PROMPT)
        n += tl.sum(mk.to(tl.int32)).to(tl.int64)
        P += tl.sum(pos.to(tl.int32)).to(tl.int64)
        tmin = tl.min(tl.where(mk, p, NO_PATTERN))
        tcmin = tl.sum((mk & (p == tmin)).to(tl.int32)).to(tl.int64)
        cmin = tl.where(tmin < pmin, tcmin, tl.where(tmin == pmin, cmin + tcmin, cmin))
        pmin = tl.minimum(pmin, tmin)
        tmax = tl.max(tl.where(mk, p, -1))
        tcmax = tl.sum((mk & (p == tmax)).to(tl.int32)).to(tl.int64)
        cmax = tl.where(tmax > pmax, tcmax, tl.where(tmax == pmax, cmax + tcmax, cmax))
        pmax = tl.maximum(pmax, tmax)
        ppos = tl.minimum(ppos, tl.min(tl.where(pos, p, NO_PATTERN)))
        dc, dm = _digit_hist(p >> 23, pos, _mant(p), lowb)
        cnt_lo += dc
        msum_lo += dm
        if HBINS < 256:
            dc, dm = _digit_hist(p >> 23, pos, _mant(p), lowb + HBINS)
            cnt_hi += dc
            msum_hi += dm
        qb += HB // 4
    cnt = _all_bins(cnt_lo, cnt_hi, HBINS)
    msum = _all_bins(msum_lo, msum_hi, HBINS)
    two = (cmin + tl.where(pmax != pmin, cmax, 0)) == n  # at most two distinct values (N = 0 too)

    sig = tl.load(sigma_ptr + s * sigma_stride)
    s64 = sig.to(tl.float64)
    N = n.to(tl.float64)
    K = s64 * N
    kf = (K + 0.5).to(tl.int64).to(tl.float64)  # floor: K + 0.5 > 0

    # ≥ 3 levels: water-filling with target K (Bernoulli) or k (exact).
    target = K
    if EXACT:
        target = kf
    Pf = P.to(tl.float64)
    sat = (target >= Pf).to(tl.int32) != 0  # (an integer-born flag: the interpreter cannot broadcast a float-born one)
    U = zero + PINF_BITS
    q0 = K * 0.0
    # One branch or the other: the boolean op's rates (read only where ≤ 2 levels), the share of
    # the zero-weight tokens (only where saturated) and the group of the two-level op are not
    # needed where the water-filling runs, so none of them is live across its passes.
    if (~two) & (~sat):
        U, q0 = _water_fill(cnt, msum, ppos >> 23, pmax >> 23, P, target, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr,
                            HB, HBINS, HAS_MASKABLE, HAS_PROMPT)
        other = zero - 2
        n1 = zero
        q0b = q0
        q1b = q0
        qz = q0
    else:
        # ≤ 2 levels: the boolean op (base: the level 1.0 if present, else the larger one).
        base_is_min = (pmin == ONE_BITS) & (pmax != ONE_BITS)
        base = tl.where(base_is_min, pmin, pmax)
        other = tl.where(base_is_min, pmax, pmin)
        distinct = two & (n > 0) & (pmin != pmax)
        ratio = tl.where(distinct,
                         _value(tl.maximum(other, 0)) / _value(tl.minimum(tl.maximum(base, 1), PINF_BITS - 1)), 1.0)
        other = tl.where(distinct, other, zero - 2)  # no pattern: nobody is in the priority group
        n1 = tl.where(distinct, tl.where(other == pmin, cmin, cmax), 0)
        w_mode = tl.where(ratio == 1.0, W_ONE, tl.where(ratio == 0.0, W_ZERO,
                                                         tl.where(ratio > 1.0, W_ABOVE_ONE, W_BELOW_ONE)))
        q0b, q1b = _solve_rates(n, n1, s64, ratio, w_mode)
        qz = (target - Pf) / tl.where(n == P, 1.0, N - Pf)

    k0, k1, key_lo, key_hi = _sequence_key(b, rng_ptr, sid_ptr, has_sid)
    V = zero
    m = zero
    gcut = zero + KEY_ALL  # gap tokens: keys ≥ gcut (none)
    c0 = zero
    c1 = zero
    if EXACT:
        if two:
            kk0, kk1 = _exact_counts(n, n1, s64, q1b)
            c0, c1 = _two_level_cuts(jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, other, key_lo, key_hi, k0, k1, kk0, kk1,
                                     n - n1, n1, GS, HAS_MASKABLE, HAS_PROMPT)
        else:
            # V: the stream-1 draw of the segment's first position.
            quad0 = (jlo >> 2) + tl.zeros([1], tl.int64)
            w0, w1, w2, w3 = philox_quads(quad0, key_lo, key_hi, STREAM_SELECT, k0, k1)
            V = tl.sum(pick_word(w0, w1, w2, w3, jlo & 3).to(tl.int64))
            m, gcut = _systematic_plan(jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr, two, other, q0b, q1b, U, q0, qz, sat,
                                       V, kf, G, HAS_MASKABLE, HAS_PROMPT)

    # The write pass.
    qmax = K * 0.0
    carry = zero
    qb = jlo >> 2
    while qb < (jhi + 3) >> 2:
        quad, lane, j, t, valid, mk, pos, p = _tokens(qb, jlo, jhi, cu_b, plen_b, mk_ptr, w_ptr,
                                                      G, HAS_MASKABLE, HAS_PROMPT)
        q, clip, grp = _rate(mk, pos, p, two, other, q0b, q1b, U, q0, qz, sat)
        qmax = tl.maximum(qmax, tl.max(q))
        if EXACT:
            if two:
                key = _select_keys(quad, lane, j, key_lo, key_hi, k0, k1)
                m_a = mk & (key < tl.where(grp, c1, c0))
            else:
                m_a, carry = _systematic_tile(q, mk, clip, carry, V, m, gcut, j, jlo)
        else:
            w0, w1, w2, w3 = philox_quads(quad, key_lo, key_hi, STREAM_BERNOULLI, k0, k1)
            r = pick_word(w0, w1, w2, w3, lane).to(tl.int64)
            m_a = mk & (r < (q * 4294967296.0).to(tl.int64))
        lw_a = q  # the loss weights of both views (unused without HAS_LW)
        lw_b = q
        if HAS_LW:
            qa = q
            if lw_mode == LW_SIGMA:
                qa = q * 0.0 + s64
            lw_a = (1.0 / tl.where(m_a, qa, 1.0)).to(tl.float32)
            lw_b = (1.0 / tl.where(mk & (~m_a), 1.0 - qa, 1.0)).to(tl.float32)
        _write_views(t, valid, mk, m_a, m_a, ids_ptr, noisy_ptr, masked_ptr, labels_ptr, lw_ptr, T, mask_id,
                     lw_a, lw_a, lw_b, lw_b, COMPLEMENT, HAS_LW)
        qb += G

    r0 = tl.where(sat, 1.0, tl.minimum(q0, 1.0))
    r1 = tl.where(sat, 1.0, qmax)
    r0 = tl.where(two, q0b, r0)
    r1 = tl.where(two, tl.maximum(q0b, q1b), r1)
    tl.store(rates_ptr + 2 * s, r0)
    tl.store(rates_ptr + 2 * s + 1, r1)


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------
class WeightsLaunchSettings(NamedTuple):
    """``tile`` tokens per step of the Philox passes (four per Philox call), ``hist`` tokens per
    step of the histogram passes, warps per program, and the bins of one one-hot matrix of the
    histogram passes (256, or 128: each step then builds two in turn, and a thread holds half
    the values at once)."""

    tile: int
    hist: int
    num_warps: int
    hist_bins: int = 256

    @property
    def select_groups(self) -> int:
        """Philox groups per step of the two-level radix select (exact sampling), whose one-hot
        matrices are 2 × 4·GS × 16: 16 up to four warps (32 values or fewer per thread), else 64."""
        return min(self.tile // 4, 16 if self.num_warps <= 4 else 64)


def weights_launch_settings(block_size: int, exact: bool = False) -> WeightsLaunchSettings:
    """Per sequence: 1024-token tiles and histogram steps of 64 tokens; per block: one tile holding
    a block that starts mid Philox group (K + 3 positions, at least 64), up to 1024, and
    histogram steps of 16 tokens (one-hot matrices of 256 × 16 for the fewer threads). The
    one-hot matrices are built 128 bins at a time per block up to four warps and per sequence
    with ``exact``: all at once, those specializations spill (benchmarks/gpu_static_weights.py)."""
    tile = 1024 if block_size <= 0 else min(1024, max(64, triton.next_power_of_2(block_size + 3)))
    warps = max(2, min(8, tile // 128))
    half = (block_size > 0 and warps <= 4) or (block_size <= 0 and exact)
    return WeightsLaunchSettings(tile, 64 if block_size <= 0 else 16, warps, 128 if half else 256)


def priority_mask_weights_triton(input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng,
                                 weight, block_size, num_segments, exact, complementary, loss_weight_mode,
                                 mask_token_id, *, settings: Optional[WeightsLaunchSettings] = None):
    """Triton implementation of ``dllm_masks::priority_mask`` for a float32 ``priority``
    (importance weights, docs/importance.md) on the op's normalized arguments (see
    :func:`dllm_masks.reference.priority_mask_ref`); the same five outputs, bit for bit.

    One launch of ``num_segments`` programs (plus a few small torch ops building the block table
    when ``block_size > 0``); no host sync, so it can be captured in a CUDA graph. The weights
    are not checked here (``validate=True`` checks them in :func:`dllm_masks.ops.normalize`).
    """
    outs = _empty_outputs(input_ids, num_segments, complementary, loss_weight_mode)
    priority_mask_weights_triton_out(input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng,
                                     weight, block_size, num_segments, exact, complementary, loss_weight_mode,
                                     mask_token_id, noisy=outs[0], masked=outs[1], labels=outs[2],
                                     loss_weight=outs[3], rates=outs[4], settings=settings)
    return outs


def priority_mask_weights_triton_out(input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng,
                                     weight, block_size, num_segments, exact, complementary, loss_weight_mode,
                                     mask_token_id, *, noisy, masked, labels, loss_weight, rates,
                                     settings: Optional[WeightsLaunchSettings] = None) -> None:
    """The out-variant of :func:`priority_mask_weights_triton`: writes the five outputs into the
    given contiguous buffers (flat [V·T], ``loss_weight`` [V·T] or [0], ``rates`` [S, 2])."""
    T, S, K = input_ids.numel(), int(num_segments), int(block_size)
    if S == 0:  # no segment, hence no token
        return None
    cu, rng = cu_seqlens.to(torch.int32).contiguous(), rng.to(torch.int64).contiguous()
    sig = sigma.to(torch.float32).contiguous()
    segstart, segseq = (cu, cu) if K == 0 else _segment_table(cu, T, K, S)
    st, dummy = settings or weights_launch_settings(K, bool(exact)), rng  # dummy: never read, its flag is off
    w = priority.to(torch.float32).contiguous().view(torch.int32)
    mk = maskable.contiguous().view(torch.uint8) if maskable is not None else dummy
    plen = prompt_lens.to(torch.int64).contiguous() if prompt_lens is not None else dummy
    sid = sample_ids.to(torch.int64).contiguous() if sample_ids is not None else dummy
    _weights_kernel[(S,)](input_ids.contiguous(), cu, segstart, segseq, sig, w, mk, plen, sid, rng,
                          noisy, masked, labels, loss_weight if loss_weight_mode else dummy, rates,
                          T, 0 if sig.numel() == 1 else 1, int(sample_ids is not None), int(loss_weight_mode),
                          int(mask_token_id),
                          G=st.tile // 4, GS=st.select_groups, HB=st.hist, HBINS=st.hist_bins, SEG_IS_SEQ=K == 0, HAS_MASKABLE=maskable is not None,
                          HAS_PROMPT=prompt_lens is not None, EXACT=bool(exact), COMPLEMENT=bool(complementary),
                          HAS_LW=bool(loss_weight_mode), num_warps=st.num_warps, enable_fp_fusion=False)
    return None


def _is_weighted(priority) -> bool:
    return priority is not None and priority.is_floating_point()


def priority_mask_cuda(*args):
    """The op's CUDA implementation: float32 ``priority`` (argument 3) to the importance-weights
    kernel, anything else to the boolean kernel of :mod:`.priority_mask`."""
    from .priority_mask import priority_mask_triton

    return (priority_mask_weights_triton if _is_weighted(args[3]) else priority_mask_triton)(*args)


def priority_mask_cuda_out(*args, **bufs) -> None:
    """The out-variant of :func:`priority_mask_cuda` (buffers as keywords)."""
    from .priority_mask import priority_mask_triton_out

    (priority_mask_weights_triton_out if _is_weighted(args[3]) else priority_mask_triton_out)(*args, **bufs)


_PTR_TYPES = {"ids_ptr": "*i64", "cu_ptr": "*i32", "sigma_ptr": "*fp32", "w_ptr": "*i32", "mk_ptr": "*u8",
              "plen_ptr": "*i64", "sid_ptr": "*i64", "rng_ptr": "*i64", "noisy_ptr": "*i64", "masked_ptr": "*i1",
              "labels_ptr": "*i64", "lw_ptr": "*fp32", "rates_ptr": "*fp64", "T": "i32", "sigma_stride": "i32",
              "has_sid": "i32", "lw_mode": "i32", "mask_id": "i32"}


def compile_weights_specialization(arch: int = 90, *, exact: bool = False, block_size: int = 0,
                                   complementary: bool = True, loss_weight: bool = True,
                                   ids_dtype: torch.dtype = torch.int64, has_maskable: bool = False,
                                   has_prompt: bool = True, settings: Optional[WeightsLaunchSettings] = None):
    """Compile one specialization of the weights kernel ahead of time for ``sm_<arch>`` (the
    constexpr flags a call with these options launches with) and return Triton's compiled kernel
    (``.asm``: ttir … ptx, cubin; ``.metadata``). Needs no GPU, only a process without
    ``TRITON_INTERPRET=1``. Tests read its PTX: float64 arithmetic must be ``mul.rn``/``add.rn``/
    ``sub.rn``/``div.rn``, never ``fma``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _weights_kernel
    st = settings or weights_launch_settings(block_size, exact)
    const = dict(G=st.tile // 4, GS=st.select_groups, HB=st.hist, HBINS=st.hist_bins, SEG_IS_SEQ=block_size == 0, HAS_MASKABLE=has_maskable,
                 HAS_PROMPT=has_prompt, EXACT=exact, COMPLEMENT=complementary, HAS_LW=loss_weight)
    seg = "*i32" if block_size == 0 else "*i64"
    ids = {torch.int32: "*i32", torch.int64: "*i64"}[ids_dtype]
    types = dict(_PTR_TYPES, segstart_ptr=seg, segseq_ptr=seg, ids_ptr=ids, noisy_ptr=ids)
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature, constexprs=const)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": st.num_warps, "enable_fp_fusion": False})
