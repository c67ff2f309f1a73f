"""``dllm_masks::priority_mask`` on CUDA: the Triton kernels and their launcher.

Bit-identical to :func:`dllm_masks.reference.priority_mask_ref` (docs/design.md §7): the same Philox
counter layout (§4), integer thresholds, and the rates of §3 solved in float64 with exactly the
operations of :mod:`dllm_masks.rates`, each rounded on its own (launched with
``enable_fp_fusion=False``; float64 ``/`` lowers to ``div.rn.f64``).

Work decomposition (no host sync, so CUDA graphs can capture it):

* A *segment* (a sequence, or a block of ``block_size`` positions) is cut into *chunks* of
  ``CHUNK`` tokens aligned to its first token. Segment s owns the program ids
  ``[P_s, P_{s+1})`` with ``P_s = start_s // CHUNK + s``, which is at least one more than it needs
  (``ceil(len_s / CHUNK)``, one for an empty segment), so the grid ``T // CHUNK + S`` is known
  on the host without reading ``cu_seqlens``; programs past their segment's last chunk idle.
* Launch 1, ``_stats_kernel``: each program finds its segment by a binary search over ``P``,
  records it for launch 2, and, for segments longer than one chunk, writes its chunk's counts
  (maskable, priority). With ``exact``, the first chunk of such a segment also runs the whole
  segment's selection (below) and writes the two cut keys.
* Launch 2, ``_mask_kernel``: counts (its own chunk when the segment is one chunk, else the sum of
  launch 1's partial counts), solves (q0, q1) in float64, then draws Philox for four tokens per
  call and writes both views: noisy ids, masks, labels and loss weights.
* Per block with ``block_size <= 256`` (the default settings; the block-diffusion recipe's K = 32)
  a third kernel, ``_block_runs_kernel``, does it all in one launch: program p handles a run of
  R = next_pow2(ceil(1024 / K)) whole blocks (≥ 1024 tokens), in steps of a [rows, groups, 4]
  tile holding one block per row. Blocks are found from a block → sequence table built by
  ``repeat_interleave`` (no search); counts, rate solves and exact cuts are per row, and every
  token's bytes are read once.
* Per block with ``256 < block_size <= CHUNK`` (up to K = 4096 with the default settings) each
  segment is one chunk, so the grid is S programs, program s handles segment s, and launch 1 is
  skipped: no binary search, no idle programs.

``sampling="exact"``: within each group (priority or not) of a segment the k smallest keys
``(r << 31) | j`` (r the stream-1 draw, j < 2^31 the position: ties go to the lower position, as in
the reference's stable sort) are masked. The key of rank k is found by a radix select with 2-bit
digits (counts per digit, then a narrower prefix), and a token is masked iff its key is below it.

Loops over tiles are ``while`` loops: Triton 3.6's interpreter cannot take a runtime bound in
``range()`` under NumPy 2.x, and compiled code is the same either way.
"""
from __future__ import annotations

import math
import struct
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .philox import STREAM_BERNOULLI, STREAM_SELECT, philox_quads, pick_word, split_u64

__all__ = ["priority_mask_triton", "priority_mask_triton_out", "launch_settings", "LaunchSettings"]

IGNORE_INDEX: tl.constexpr = tl.constexpr(-100)
KEY_ALL: tl.constexpr = tl.constexpr(0x7FFFFFFFFFFFFFFF)  # above every key: the whole group is masked
PARTIALS: tl.constexpr = tl.constexpr(256)  # partial counts summed per step

# How the rates are solved (docs/design.md §3), chosen on the host from w like rates._solve does.
W_ONE: tl.constexpr = tl.constexpr(0)
W_INF: tl.constexpr = tl.constexpr(1)
W_ZERO: tl.constexpr = tl.constexpr(2)
W_ABOVE_ONE: tl.constexpr = tl.constexpr(3)
W_BELOW_ONE: tl.constexpr = tl.constexpr(4)
# The op's loss_weight_mode (dllm_masks.reference.LOSS_WEIGHT_MODES): 1/σ (LW_SIGMA) or 1/q_i.
LW_SIGMA: tl.constexpr = tl.constexpr(1)

# Float literals in the kernels are only 0.0, 0.5, 1.0 and 2^32: Triton types a Python float as
# float32 before widening it, which is exact for these and would not be for others.


# ---------------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------------
@triton.jit
def _solve_rates(n, n1, s, w, w_mode):
    """(q0, q1) of one segment, float64, mirroring ``rates._solve`` operation for operation.

    n, n1: int64 scalars (maskable, maskable priority); s: σ as float64; w: the weight, float64;
    w_mode: which branch of docs/design.md §3 w selects (W_ONE … W_BELOW_ONE, chosen on the host).
    Denominators that are zero only where the result is overridden below (n0 = 0, n1 = 0, N = 0)
    are replaced by 1 so that no division by zero happens at all.
    """
    N = n.to(tl.float64)
    n1f = n1.to(tl.float64)
    n0f = N - n1f
    K = s * N
    n1d = tl.where(n1 == 0, 1.0, n1f)
    n0d = tl.where(n1 == n, 1.0, n0f)
    q0 = s  # w == 1
    q1 = s
    if w_mode == W_INF:
        q1 = tl.minimum(K / n1d, 1.0)
        q0 = tl.maximum((K - n1f) / n0d, 0.0)
    elif w_mode == W_ZERO:
        q0 = tl.minimum(K / n0d, 1.0)
        q1 = tl.maximum((K - n0f) / n1d, 0.0)
    elif w_mode >= W_ABOVE_ONE:
        den = n1f * w + n0f  # a multiply, then an add (no fma: enable_fp_fusion=False)
        p = K / tl.where(n == 0, 1.0, den)
        wp = p * w
        if w_mode == W_ABOVE_ONE:  # the priority rate clips first
            keep = wp <= 1.0
            q0 = tl.where(keep, p, (K - n1f) / n0d)
            q1 = tl.where(keep, wp, 1.0)
        else:  # 0 < w < 1: the base rate clips first
            keep = p <= 1.0
            q0 = tl.where(keep, p, 1.0)
            q1 = tl.where(keep, wp, (K - n0f) / n1d)
    uniform = (n1 == 0) | (n1 == n)
    q0 = tl.where(uniform, s, q0)
    q1 = tl.where(uniform, s, q1)
    q0 = tl.where(n == 0, 0.0, q0)
    q1 = tl.where(n == 0, 0.0, q1)
    return q0, q1


@triton.jit
def _exact_counts(n, n1, s, q1):
    """(k0, k1) of ``sampling="exact"``, mirroring ``rates.exact_counts`` (int64 scalars).

    floor(x) of the non-negative x here is its truncation toward zero, i.e. ``.to(tl.int64)``.
    """
    N = n.to(tl.float64)
    n1f = n1.to(tl.float64)
    n0f = N - n1f
    K = s * N
    k = (K + 0.5).to(tl.int64).to(tl.float64)
    k1 = (q1 * n1f + 0.5).to(tl.int64).to(tl.float64)
    lo = tl.maximum(k - n0f, 0.0)
    hi = tl.minimum(n1f, k)
    k1 = tl.minimum(tl.maximum(k1, lo), hi)
    return (k - k1).to(tl.int64), k1.to(tl.int64)


@triton.jit
def _tile(qb, cu_b, jlo, jhi, plen_b, mk_ptr, prio_ptr,
          G: tl.constexpr, HAS_PRIO: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """One tile of G Philox groups (4·G positions) starting at group ``qb`` of a sequence.

    Returns (quad [G,1], lane [1,4], j [G,4], t [G,4], valid, maskable, priority ∧ maskable):
    positions j, token indices t = cu_b + j, and which of them lie in [jlo, jhi).
    """
    quad = qb + tl.arange(0, G)[:, None].to(tl.int64)
    lane = tl.arange(0, 4)[None, :].to(tl.int64)
    j = quad * 4 + lane
    valid = (j >= jlo) & (j < jhi)
    t = cu_b + j
    mk, pr = _token_classes(t, j, valid, plen_b, mk_ptr, prio_ptr, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
    return quad, lane, j, t, valid, mk, pr


@triton.jit
def _token_classes(t, j, valid, plen_b, mk_ptr, prio_ptr,
                   HAS_PRIO: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """(maskable, priority ∧ maskable) of tokens t at positions j (where ``valid``): ``maskable``
    if given, else outside the prompt (j ≥ its length ``plen_b``), else every valid token."""
    if HAS_MASKABLE:
        mk = (tl.load(mk_ptr + t, mask=valid, other=0) != 0) & valid
    elif HAS_PROMPT:
        mk = valid & (j >= plen_b)
    else:
        mk = valid
    if HAS_PRIO:
        pr = (tl.load(prio_ptr + t, mask=valid, other=0) != 0) & mk
    else:
        pr = mk & (j < 0)
    return mk, pr


@triton.jit
def _count(lo, hi, cu_b, plen_b, mk_ptr, prio_ptr,
           G: tl.constexpr, HAS_PRIO: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """(maskable, maskable priority) counts of the tokens [lo, hi) of the sequence starting at cu_b."""
    jlo = lo - cu_b
    jhi = hi - cu_b
    n = cu_b * 0
    n1 = cu_b * 0
    qb = jlo >> 2
    while qb < (jhi + 3) >> 2:
        quad, lane, j, t, valid, mk, pr = _tile(qb, cu_b, jlo, jhi, plen_b, mk_ptr, prio_ptr,
                                                G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
        n += tl.sum(mk.to(tl.int32)).to(tl.int64)
        n1 += tl.sum(pr.to(tl.int32)).to(tl.int64)
        qb += G
    return n, n1


@triton.jit
def _select_keys(quad, lane, j, key_lo, key_hi, k0, k1):
    """Selection keys (r << 31) | j of ``sampling="exact"`` (int64, ≥ 0, distinct within a sequence)."""
    w0, w1, w2, w3 = philox_quads(quad, key_lo, key_hi, STREAM_SELECT, k0, k1)
    r = pick_word(w0, w1, w2, w3, lane)
    return (r.to(tl.int64) << 31) | j


@triton.jit
def _radix_step(rank, bucket, prefix, psh, c1, c2, c3, d, refine):
    """Narrow one group's prefix by the 2-bit digit at shift d, given the cumulative digit counts
    c1, c2, c3 (tokens of the bucket with digit < 1, < 2, < 3). Unchanged where not ``refine``."""
    dig = (rank >= c1).to(tl.int64) + (rank >= c2).to(tl.int64) + (rank >= c3).to(tl.int64)
    base = tl.where(dig == 0, 0, tl.where(dig == 1, c1, tl.where(dig == 2, c2, c3)))
    upper = tl.where(dig == 0, c1, tl.where(dig == 1, c2, tl.where(dig == 2, c3, bucket)))
    rank = tl.where(refine, rank - base, rank)
    bucket = tl.where(refine, upper - base, bucket)
    prefix = tl.where(refine, prefix * 4 + dig, prefix)
    psh = tl.where(refine, d, psh)
    return rank, bucket, prefix, psh


@triton.jit
def _select_cuts(lo, hi, cu_b, plen_b, mk_ptr, prio_ptr, key_lo, key_hi, k0, k1, kk0, kk1, m0, m1,
                 G: tl.constexpr, HAS_PRIO: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr):
    """Cut keys (c0, c1) of one segment [lo, hi): a maskable token of group g is masked iff key < c_g.

    kk_g tokens are to be masked out of the m_g maskable tokens of group g (0 = others,
    1 = priority). c_g is the key of rank kk_g (0-based) in the group, found by a radix select
    over the 64-bit keys (bit 63 is always 0), two bits per pass over the segment, until the
    candidate bucket holds one key, then one pass for that key.
    """
    jlo = lo - cu_b
    jhi = hi - cu_b
    zero = cu_b * 0
    act0 = (kk0 > 0) & (kk0 < m0)
    act1 = (kk1 > 0) & (kk1 < m1)
    rank0 = kk0 + zero
    rank1 = kk1 + zero
    bucket0 = m0 + zero
    bucket1 = m1 + zero
    prefix0 = zero
    prefix1 = zero
    psh0 = zero + 63  # key >> 63 == 0 == prefix for every key
    psh1 = zero + 63
    d = zero + 62
    while ((act0 & (bucket0 > 1)) | (act1 & (bucket1 > 1))) & (d >= 0):
        a1 = zero
        a2 = zero
        a3 = zero
        b1 = zero
        b2 = zero
        b3 = zero
        qb = jlo >> 2
        while qb < (jhi + 3) >> 2:
            quad, lane, j, t, valid, mk, pr = _tile(qb, cu_b, jlo, jhi, plen_b, mk_ptr, prio_ptr,
                                                    G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
            key = _select_keys(quad, lane, j, key_lo, key_hi, k0, k1)
            dig = (key >> d) & 3
            in0 = mk & (~pr) & ((key >> psh0) == prefix0)
            in1 = pr & ((key >> psh1) == prefix1)
            a1 += tl.sum((in0 & (dig < 1)).to(tl.int32)).to(tl.int64)
            a2 += tl.sum((in0 & (dig < 2)).to(tl.int32)).to(tl.int64)
            a3 += tl.sum((in0 & (dig < 3)).to(tl.int32)).to(tl.int64)
            b1 += tl.sum((in1 & (dig < 1)).to(tl.int32)).to(tl.int64)
            b2 += tl.sum((in1 & (dig < 2)).to(tl.int32)).to(tl.int64)
            b3 += tl.sum((in1 & (dig < 3)).to(tl.int32)).to(tl.int64)
            qb += G
        rank0, bucket0, prefix0, psh0 = _radix_step(rank0, bucket0, prefix0, psh0, a1, a2, a3, d,
                                                    act0 & (bucket0 > 1))
        rank1, bucket1, prefix1, psh1 = _radix_step(rank1, bucket1, prefix1, psh1, b1, b2, b3, d,
                                                    act1 & (bucket1 > 1))
        d -= 2
    c0 = tl.where(kk0 > 0, KEY_ALL, 0) + zero
    c1 = tl.where(kk1 > 0, KEY_ALL, 0) + zero
    if act0 | act1:  # the one key left in each bucket
        qb = jlo >> 2
        while qb < (jhi + 3) >> 2:
            quad, lane, j, t, valid, mk, pr = _tile(qb, cu_b, jlo, jhi, plen_b, mk_ptr, prio_ptr,
                                                    G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
            key = _select_keys(quad, lane, j, key_lo, key_hi, k0, k1)
            in0 = act0 & mk & (~pr) & ((key >> psh0) == prefix0)
            in1 = act1 & pr & ((key >> psh1) == prefix1)
            c0 = tl.minimum(c0, tl.min(tl.where(in0, key, KEY_ALL)))
            c1 = tl.minimum(c1, tl.min(tl.where(in1, key, KEY_ALL)))
            qb += G
    return c0, c1


@triton.jit
def _segment(s, segstart_ptr, segseq_ptr, cu_ptr, CHUNK: tl.constexpr, SEG_IS_SEQ: tl.constexpr):
    """(start, end, sequence, sequence start, P_s, chunks) of segment s (int64 scalars)."""
    seg_lo = tl.load(segstart_ptr + s).to(tl.int64)
    seg_hi = tl.load(segstart_ptr + s + 1).to(tl.int64)
    if SEG_IS_SEQ:
        b = s
    else:
        b = tl.load(segseq_ptr + s).to(tl.int64)
    cu_b = tl.load(cu_ptr + b).to(tl.int64)
    first = seg_lo // CHUNK + s
    nch = tl.maximum((seg_hi - seg_lo + CHUNK - 1) // CHUNK, 1)
    return seg_lo, seg_hi, b, cu_b, first, nch


@triton.jit
def _sequence_key(b, rng_ptr, sid_ptr, has_sid):
    """Philox key words (k0, k1) of the seed and counter words (lo, hi) of sequence b's key:
    ``sample_ids[b]`` if given, else ``seq_offset + b`` (docs/design.md §4), as uint64 bits."""
    k0, k1 = split_u64(tl.load(rng_ptr))
    key = tl.load(rng_ptr + 1).to(tl.uint64, bitcast=True) + b.to(tl.uint64)
    if has_sid != 0:
        key = tl.load(sid_ptr + b).to(tl.uint64, bitcast=True)
    key_lo, key_hi = split_u64(key)
    return k0, k1, key_lo, key_hi


@triton.jit
def _rates_of(s, n, n1, sigma_ptr, sigma_stride, w_bits, w_mode):
    """σ of segment s (widened to float64) and its (q0, q1)."""
    sig = tl.load(sigma_ptr + s * sigma_stride).to(tl.float64)
    w = w_bits.to(tl.int64).to(tl.float64, bitcast=True)
    q0, q1 = _solve_rates(n, n1, sig, w, w_mode)
    return sig, q0, q1


@triton.jit
def _loss_weights(q0, q1, sig, lw_mode, HAS_LW: tl.constexpr):
    """float32 loss weights of (view A other, view A priority, view B other, view B priority):
    "sigma" (LW_SIGMA) 1/σ and 1/(1-σ), "token" 1/q_i and 1/(1-q_i); scalars or [rows] vectors
    like q0. Zeros, never stored, without ``HAS_LW``."""
    if HAS_LW:
        qa0 = q0
        qa1 = q1
        if lw_mode == LW_SIGMA:
            qa0 = sig
            qa1 = sig
        return ((1.0 / qa0).to(tl.float32), (1.0 / qa1).to(tl.float32), (1.0 / (1.0 - qa0)).to(tl.float32),
                (1.0 / (1.0 - qa1)).to(tl.float32))
    else:
        z = (q0 * 0.0).to(tl.float32)
        return z, z, z, z


@triton.jit
def _write_views(t, valid, mk, pr, sel, ids_ptr, noisy_ptr, masked_ptr, labels_ptr, lw_ptr, T, mask_id,
                 lw00, lw01, lw10, lw11, COMPLEMENT: tl.constexpr, HAS_LW: tl.constexpr):
    """Load the ids of the tokens ``t`` (where ``valid``) and write both views: view A masks the
    maskable tokens with ``sel``, view B (``COMPLEMENT``) the maskable ones without; noisy ids,
    masks, labels (-100 where not masked) and loss weights (0 where not masked)."""
    m_a = mk & sel
    ids = tl.load(ids_ptr + t, mask=valid, other=0)
    mid = ids * 0 + mask_id
    tl.store(noisy_ptr + t, tl.where(m_a, mid, ids), mask=valid)
    tl.store(masked_ptr + t, m_a, mask=valid)
    tl.store(labels_ptr + t, tl.where(m_a, ids.to(tl.int64), IGNORE_INDEX), mask=valid)
    if HAS_LW:
        tl.store(lw_ptr + t, tl.where(m_a, tl.where(pr, lw01, lw00), 0.0), mask=valid)
    if COMPLEMENT:
        m_b = mk & (~sel)
        tl.store(noisy_ptr + T + t, tl.where(m_b, mid, ids), mask=valid)
        tl.store(masked_ptr + T + t, m_b, mask=valid)
        tl.store(labels_ptr + T + t, tl.where(m_b, ids.to(tl.int64), IGNORE_INDEX), mask=valid)
        if HAS_LW:
            tl.store(lw_ptr + T + t, tl.where(m_b, tl.where(pr, lw11, lw10), 0.0), mask=valid)


# ---------------------------------------------------------------------------------------------
# Kernels. Runtime flags (w_mode, sigma_stride, has_sid, lw_mode) steer per-program scalar work
# only; what changes the per-token loop is a constexpr. Fewer variants compile that way.
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["S", "w_bits", "w_mode", "sigma_stride", "has_sid"])
def _stats_kernel(
    cu_ptr, segstart_ptr, segseq_ptr, sigma_ptr, prio_ptr, mk_ptr, plen_ptr, sid_ptr, rng_ptr,
    prog_seg_ptr, partial_ptr, cut_ptr,
    S, w_bits, w_mode, sigma_stride, has_sid,
    CHUNK: tl.constexpr, G: tl.constexpr, SEG_IS_SEQ: tl.constexpr,
    HAS_PRIO: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr, EXACT: tl.constexpr,
):
    """Launch 1: program → segment map, partial counts of multi-chunk segments, their exact cuts."""
    pid = tl.program_id(0).to(tl.int64)
    # Largest s with P_s <= pid (P is strictly increasing and P_0 = 0).
    lo = pid * 0
    hi = S.to(tl.int64) - 1 + lo
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ok = tl.load(segstart_ptr + mid).to(tl.int64) // CHUNK + mid <= pid
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid - 1)
    s = lo
    seg_lo, seg_hi, b, cu_b, first, nch = _segment(s, segstart_ptr, segseq_ptr, cu_ptr, CHUNK, SEG_IS_SEQ)
    c = pid - first
    if c >= nch:
        tl.store(prog_seg_ptr + pid, -1)
    else:
        tl.store(prog_seg_ptr + pid, s.to(tl.int32))
        if nch > 1:
            plen_b = 0
            if HAS_PROMPT:
                plen_b = tl.load(plen_ptr + b)
            lo_t = seg_lo + c * CHUNK
            hi_t = tl.minimum(lo_t + CHUNK, seg_hi)
            n, n1 = _count(lo_t, hi_t, cu_b, plen_b, mk_ptr, prio_ptr, G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
            tl.store(partial_ptr + pid, n | (n1 << 32))
            if EXACT:
                if c == 0:
                    n, n1 = _count(seg_lo, seg_hi, cu_b, plen_b, mk_ptr, prio_ptr,
                                   G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
                    sig, q0, q1 = _rates_of(s, n, n1, sigma_ptr, sigma_stride, w_bits, w_mode)
                    kk0, kk1 = _exact_counts(n, n1, sig, q1)
                    k0, k1, key_lo, key_hi = _sequence_key(b, rng_ptr, sid_ptr, has_sid)
                    cut0, cut1 = _select_cuts(seg_lo, seg_hi, cu_b, plen_b, mk_ptr, prio_ptr, key_lo, key_hi,
                                              k0, k1, kk0, kk1, n - n1, n1,
                                              G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
                    tl.store(cut_ptr + 2 * s, cut0)
                    tl.store(cut_ptr + 2 * s + 1, cut1)


@triton.jit(do_not_specialize=["T", "S", "w_bits", "w_mode", "sigma_stride", "has_sid", "lw_mode", "mask_id"])
def _mask_kernel(
    ids_ptr, cu_ptr, segstart_ptr, segseq_ptr, sigma_ptr, prio_ptr, mk_ptr, plen_ptr, sid_ptr, rng_ptr,
    noisy_ptr, masked_ptr, labels_ptr, lw_ptr, rates_ptr, prog_seg_ptr, partial_ptr, cut_ptr,
    T, S, w_bits, w_mode, sigma_stride, has_sid, lw_mode, mask_id,
    CHUNK: tl.constexpr, G: tl.constexpr, SEG_IS_SEQ: tl.constexpr,
    HAS_PRIO: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr, EXACT: tl.constexpr,
    COMPLEMENT: tl.constexpr, HAS_LW: tl.constexpr, SEG_PER_PROGRAM: tl.constexpr,
):
    """Launch 2: rates of the program's segment, then its chunk's masks and both views.
    ``SEG_PER_PROGRAM`` (blocks no longer than a chunk): program s is segment s, whole (a grid of
    S programs, no launch 1, no program → segment map)."""
    pid = tl.program_id(0).to(tl.int64)
    if SEG_PER_PROGRAM:
        s = pid
    else:
        s = tl.load(prog_seg_ptr + pid).to(tl.int64)
    if s >= 0:
        seg_lo, seg_hi, b, cu_b, first, nch = _segment(s, segstart_ptr, segseq_ptr, cu_ptr, CHUNK, SEG_IS_SEQ)
        if SEG_PER_PROGRAM:
            c = pid * 0  # the segment's one chunk (nch == 1)
        else:
            c = pid - first
        plen_b = 0
        if HAS_PROMPT:
            plen_b = tl.load(plen_ptr + b)
        if nch == 1:
            n, n1 = _count(seg_lo, seg_hi, cu_b, plen_b, mk_ptr, prio_ptr, G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
        else:
            acc = pid * 0
            i0 = pid * 0
            while i0 < nch:
                i = i0 + tl.arange(0, PARTIALS).to(tl.int64)
                acc += tl.sum(tl.load(partial_ptr + first + i, mask=i < nch, other=0))
                i0 += PARTIALS
            n1 = acc >> 32
            n = acc - (n1 << 32)
        sig, q0, q1 = _rates_of(s, n, n1, sigma_ptr, sigma_stride, w_bits, w_mode)
        if c == 0:
            tl.store(rates_ptr + 2 * s, q0)
            tl.store(rates_ptr + 2 * s + 1, q1)
        k0, k1, key_lo, key_hi = _sequence_key(b, rng_ptr, sid_ptr, has_sid)
        if EXACT:
            if nch == 1:
                kk0, kk1 = _exact_counts(n, n1, sig, q1)
                cut0, cut1 = _select_cuts(seg_lo, seg_hi, cu_b, plen_b, mk_ptr, prio_ptr, key_lo, key_hi,
                                          k0, k1, kk0, kk1, n - n1, n1, G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
            else:
                cut0 = tl.load(cut_ptr + 2 * s)
                cut1 = tl.load(cut_ptr + 2 * s + 1)
        else:
            cut0 = (q0 * 4294967296.0).to(tl.int64)  # T = floor(q·2^32): q ≥ 0, so truncation is floor
            cut1 = (q1 * 4294967296.0).to(tl.int64)
        lw00, lw01, lw10, lw11 = _loss_weights(q0, q1, sig, lw_mode, HAS_LW)

        lo_t = seg_lo + c * CHUNK
        hi_t = tl.minimum(lo_t + CHUNK, seg_hi)
        jlo = lo_t - cu_b
        jhi = hi_t - cu_b
        qb = jlo >> 2
        while qb < (jhi + 3) >> 2:
            quad, lane, j, t, valid, mk, pr = _tile(qb, cu_b, jlo, jhi, plen_b, mk_ptr, prio_ptr,
                                                    G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
            if EXACT:
                key = _select_keys(quad, lane, j, key_lo, key_hi, k0, k1)
            else:
                w0, w1, w2, w3 = philox_quads(quad, key_lo, key_hi, STREAM_BERNOULLI, k0, k1)
                key = pick_word(w0, w1, w2, w3, lane).to(tl.int64)
            sel = key < tl.where(pr, cut1, cut0)
            _write_views(t, valid, mk, pr, sel, ids_ptr, noisy_ptr, masked_ptr, labels_ptr, lw_ptr, T, mask_id,
                         lw00, lw01, lw10, lw11, COMPLEMENT, HAS_LW)
            qb += G


# ---------------------------------------------------------------------------------------------
# Per-block σ, runs of whole blocks per program (blocks of up to RUN_MAX_BLOCK positions)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _row_sum(x):
    """Per-row count of a [R, G, 4] boolean tile: int64 [R]."""
    return tl.sum(tl.sum(x.to(tl.int32), axis=2), axis=1).to(tl.int64)


@triton.jit
def _row_min(x):
    """Per-row minimum of a [R, G, 4] int64 tile: [R]."""
    return tl.min(tl.min(x, axis=2), axis=1)


@triton.jit
def _run_cuts(key, mk, pr, kk0, kk1, m0, m1):
    """Cut keys (c0, c1) [R] of every block row at once: a maskable token of group g in row r is
    masked iff key < c_g[r]. The radix select of :func:`_select_cuts` (2-bit digits, from bit 62
    down, until each active row's bucket holds one key), on keys held in registers, with the
    per-group state as [R] vectors; a pass runs while any row still narrows."""
    zero = kk0 * 0
    act0 = (kk0 > 0) & (kk0 < m0)
    act1 = (kk1 > 0) & (kk1 < m1)
    rank0 = kk0
    rank1 = kk1
    bucket0 = m0
    bucket1 = m1
    prefix0 = zero
    prefix1 = zero
    psh0 = zero + 63  # key >> 63 == 0 == prefix for every key
    psh1 = zero + 63
    g0 = mk & (~pr)
    d = 62
    busy = tl.max(((act0 & (bucket0 > 1)) | (act1 & (bucket1 > 1))).to(tl.int32), axis=0)
    while (busy > 0) & (d >= 0):
        dig = (key >> d) & 3
        in0 = g0 & ((key >> psh0[:, None, None]) == prefix0[:, None, None])
        in1 = pr & ((key >> psh1[:, None, None]) == prefix1[:, None, None])
        a1 = _row_sum(in0 & (dig < 1))
        a2 = _row_sum(in0 & (dig < 2))
        a3 = _row_sum(in0 & (dig < 3))
        b1 = _row_sum(in1 & (dig < 1))
        b2 = _row_sum(in1 & (dig < 2))
        b3 = _row_sum(in1 & (dig < 3))
        rank0, bucket0, prefix0, psh0 = _radix_step(rank0, bucket0, prefix0, psh0, a1, a2, a3, d,
                                                    act0 & (bucket0 > 1))
        rank1, bucket1, prefix1, psh1 = _radix_step(rank1, bucket1, prefix1, psh1, b1, b2, b3, d,
                                                    act1 & (bucket1 > 1))
        d -= 2
        busy = tl.max(((act0 & (bucket0 > 1)) | (act1 & (bucket1 > 1))).to(tl.int32), axis=0)
    c0 = tl.where(kk0 > 0, KEY_ALL, 0) + zero
    c1 = tl.where(kk1 > 0, KEY_ALL, 0) + zero
    # the one key left in each active row's bucket (rows that are not active keep 0 or KEY_ALL)
    in0 = act0[:, None, None] & g0 & ((key >> psh0[:, None, None]) == prefix0[:, None, None])
    in1 = act1[:, None, None] & pr & ((key >> psh1[:, None, None]) == prefix1[:, None, None])
    c0 = tl.minimum(c0, _row_min(tl.where(in0, key, KEY_ALL)))
    c1 = tl.minimum(c1, _row_min(tl.where(in1, key, KEY_ALL)))
    return c0, c1


@triton.jit(do_not_specialize=["T", "S", "K", "w_bits", "w_mode", "sigma_stride", "has_sid", "lw_mode", "mask_id"])
def _block_runs_kernel(
    ids_ptr, cu_ptr, blkseq_ptr, firstblk_ptr, sigma_ptr, prio_ptr, mk_ptr, plen_ptr, sid_ptr, rng_ptr,
    noisy_ptr, masked_ptr, labels_ptr, lw_ptr, rates_ptr,
    T, S, K, w_bits, w_mode, sigma_stride, has_sid, lw_mode, mask_id,
    R: tl.constexpr, G: tl.constexpr, STEPS: tl.constexpr,
    HAS_PRIO: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr, EXACT: tl.constexpr,
    COMPLEMENT: tl.constexpr, HAS_LW: tl.constexpr,
):
    """Per-block σ in one launch: program p handles the R·STEPS blocks (segments) from p·R·STEPS
    on, R per step, one block per row of a [R, G, 4] tile of Philox groups (4·G ≥ K + 3
    positions, or ≥ K when K is a multiple of 4 and every block starts on a group).

    Segments are found without a search: ``blkseq[s]`` is block s's sequence b (a table the
    launcher builds with ``repeat_interleave``), ``firstblk[b]`` the index of b's first block, so
    block s spans positions [(s - firstblk[b])·K, min(… + K, len_b)) of b. Each step loads its
    tile once: counts, the rate solve (float64, [R] vectors), the exact selection (keys in
    registers) and both views' stores all work on it, so every per-token byte is read once.
    """
    pid = tl.program_id(0).to(tl.int64)
    w = w_bits.to(tl.int64).to(tl.float64, bitcast=True)
    for step in range(STEPS):
        s = (pid * STEPS + step) * R + tl.arange(0, R).to(tl.int64)
        _block_rows(s, ids_ptr, cu_ptr, blkseq_ptr, firstblk_ptr, sigma_ptr, prio_ptr, mk_ptr, plen_ptr, sid_ptr,
                    rng_ptr, noisy_ptr, masked_ptr, labels_ptr, lw_ptr, rates_ptr,
                    T, S, K, w, w_mode, sigma_stride, has_sid, lw_mode, mask_id,
                    G, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT, EXACT, COMPLEMENT, HAS_LW)


@triton.jit
def _block_rows(s, ids_ptr, cu_ptr, blkseq_ptr, firstblk_ptr, sigma_ptr, prio_ptr, mk_ptr, plen_ptr, sid_ptr,
                rng_ptr, noisy_ptr, masked_ptr, labels_ptr, lw_ptr, rates_ptr,
                T, S, K, w, w_mode, sigma_stride, has_sid, lw_mode, mask_id,
                G: tl.constexpr, HAS_PRIO: tl.constexpr, HAS_MASKABLE: tl.constexpr, HAS_PROMPT: tl.constexpr,
                EXACT: tl.constexpr, COMPLEMENT: tl.constexpr, HAS_LW: tl.constexpr):
    """One step of :func:`_block_runs_kernel`: the blocks ``s`` (int64 [R]; those ≥ S are idle rows)."""
    row_ok = s < S
    b = tl.load(blkseq_ptr + s, mask=row_ok, other=0).to(tl.int64)
    blk = s - tl.load(firstblk_ptr + b, mask=row_ok, other=0).to(tl.int64)
    cu_b = tl.load(cu_ptr + b, mask=row_ok, other=0).to(tl.int64)
    len_b = tl.load(cu_ptr + b + 1, mask=row_ok, other=0).to(tl.int64) - cu_b
    jlo = tl.where(row_ok, blk * K, 0)
    jhi = tl.minimum(jlo + K, len_b)  # 0 on idle rows: no valid position
    plen_b = jlo * 0
    if HAS_PROMPT:
        plen_b = tl.load(plen_ptr + b, mask=row_ok, other=0)

    quad = (jlo >> 2)[:, None, None] + tl.arange(0, G)[None, :, None].to(tl.int64)
    lane = tl.arange(0, 4)[None, None, :].to(tl.int64)
    j = quad * 4 + lane
    valid = (j >= jlo[:, None, None]) & (j < jhi[:, None, None])
    t = cu_b[:, None, None] + j
    mk, pr = _token_classes(t, j, valid, plen_b[:, None, None], mk_ptr, prio_ptr, HAS_PRIO, HAS_MASKABLE, HAS_PROMPT)
    n = _row_sum(mk)
    n1 = _row_sum(pr)

    sig = tl.load(sigma_ptr + s * sigma_stride, mask=row_ok, other=0.0).to(tl.float64)
    q0, q1 = _solve_rates(n, n1, sig, w, w_mode)
    tl.store(rates_ptr + 2 * s, q0, mask=row_ok)
    tl.store(rates_ptr + 2 * s + 1, q1, mask=row_ok)
    k0, k1, key_lo, key_hi = _sequence_key(b, rng_ptr, sid_ptr, has_sid)
    key_lo = key_lo[:, None, None]
    key_hi = key_hi[:, None, None]
    if EXACT:
        key = _select_keys(quad, lane, j, key_lo, key_hi, k0, k1)
        kk0, kk1 = _exact_counts(n, n1, sig, q1)
        cut0, cut1 = _run_cuts(key, mk, pr, kk0, kk1, n - n1, n1)
    else:
        w0, w1, w2, w3 = philox_quads(quad, key_lo, key_hi, STREAM_BERNOULLI, k0, k1)
        key = pick_word(w0, w1, w2, w3, lane).to(tl.int64)
        cut0 = (q0 * 4294967296.0).to(tl.int64)  # T = floor(q·2^32): q ≥ 0, so truncation is floor
        cut1 = (q1 * 4294967296.0).to(tl.int64)
    sel = key < tl.where(pr, cut1[:, None, None], cut0[:, None, None])
    lw00, lw01, lw10, lw11 = _loss_weights(q0, q1, sig, lw_mode, HAS_LW)
    _write_views(t, valid, mk, pr, sel, ids_ptr, noisy_ptr, masked_ptr, labels_ptr, lw_ptr, T, mask_id,
                 lw00[:, None, None], lw01[:, None, None], lw10[:, None, None], lw11[:, None, None],
                 COMPLEMENT, HAS_LW)


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------
RUN_MAX_BLOCK = 256  # blocks up to this many positions are launched as runs of blocks per program
RUN_TOKENS = 1024  # a run of whole blocks covers at least this many tokens (full blocks)
RUN_STEP = 256  # positions per step of the run kernel (one per thread at 8 warps)


class LaunchSettings(NamedTuple):
    """``tile`` tokens per vector step (four per Philox call), ``chunk`` tokens per program, warps of
    the mask kernel, and warps of the stats kernel when it does no exact selection (it then only
    maps programs and counts the chunks of long segments).

    ``blocks_per_program`` > 0 (per block only) selects the run kernel: program p handles that
    many blocks from p·blocks_per_program on, ``tile / chunk`` per step, one block per row of a
    tile of ``tile`` positions (``chunk`` positions per row: ≥ K + 3, or ≥ K when K is a
    multiple of 4; all three powers of two). 0: one program per block (``0 < K <= chunk``) or
    chunks of blocks with launch 1 (``K > chunk``)."""

    tile: int
    chunk: int
    num_warps: int
    stats_warps: int = 1
    blocks_per_program: int = 0


def run_row_positions(block_size: int) -> int:
    """Positions per block row of the run kernel: a power of two ≥ K when K is a multiple of 4
    (every block then starts on a Philox group), else ≥ K + 3 (a block may start mid group)."""
    return max(4, triton.next_power_of_2(block_size + (3 if block_size % 4 else 0)))


def launch_settings(block_size: int) -> LaunchSettings:
    """Launch settings, from one place (like Liger's ``calculate_settings``).

    Per sequence (``block_size`` 0): 1024-token tiles in 4096-token chunks, so a 2048-token
    sequence is one program of two tiles and a longer one is split over several programs. Per
    block up to ``RUN_MAX_BLOCK`` (256) positions: runs of next_pow2(ceil(1024 / K)) whole blocks
    per program (≥ 1024 tokens of full blocks), in steps of a 256-position tile with one block
    per row of :func:`run_row_positions` positions, 8 warps, one position per thread (K = 32: four
    steps of 8 blocks; K = 33: rows of 64, eight steps of 4 blocks; K = 1: rows of 4, sixteen steps
    of 64 blocks). One position per thread keeps the per-row state (float64 rates, cuts, weights)
    at one row per thread: about 60 registers, against 140-180 with one Philox group per thread,
    at the price of each thread running its group's Philox call (4x the Philox arithmetic).
    Larger blocks: one program per block, with a tile that holds the block even when it starts
    mid Philox group (K + 3 positions) up to K = 1021 and 1024-token tiles in 4096-token chunks
    above, so blocks longer than 4096 positions take several programs and launch 1. One Philox
    group per thread: ``num_warps = tile / 128``.
    """
    if 0 < block_size <= RUN_MAX_BLOCK:
        row = run_row_positions(block_size)
        blocks = triton.next_power_of_2(-(-RUN_TOKENS // block_size))
        return LaunchSettings(max(RUN_STEP, row), row, 8, blocks_per_program=blocks)
    if block_size <= 0:
        tile, chunk = 1024, 4096
    else:
        tile = min(1024, max(64, triton.next_power_of_2(block_size + 3)))
        chunk = tile if block_size + 3 <= 1024 else 4096
    return LaunchSettings(tile, chunk, max(1, min(8, tile // 128)))


def _weight_mode(w: float) -> int:
    if w == 1.0:
        mode = W_ONE
    elif math.isinf(w):
        mode = W_INF
    elif w == 0.0:
        mode = W_ZERO
    else:
        mode = W_ABOVE_ONE if w > 1.0 else W_BELOW_ONE
    return int(mode.value)


def _segment_table(cu: torch.Tensor, T: int, K: int, S: int):
    """Start offsets [S+1] and sequences [S] of the blocks (sequence-major), without a host sync."""
    dev = cu.device
    B = cu.numel() - 1
    cu64 = cu.to(torch.int64)
    nblk = (cu64[1:] - cu64[:-1] - 1) // K + 1  # ceil(len / K), 0 for an empty sequence, without overflow
    seq = torch.repeat_interleave(torch.arange(B, device=dev, dtype=torch.int64), nblk, output_size=S)
    first_blk = torch.cumsum(nblk, 0) - nblk
    start = torch.empty(S + 1, dtype=torch.int64, device=dev)
    start[:S] = cu64[seq] + (torch.arange(S, device=dev, dtype=torch.int64) - first_blk[seq]) * K
    start[S] = T
    return start, seq


def _block_run_table(cu: torch.Tensor, K: int, S: int):
    """int32 [S] sequence of each block (sequence-major) and int32 [B] index of each sequence's
    first block, from ``cu_seqlens`` by three small torch ops without a host sync (8 bytes per
    block written and read back once)."""
    nblk = (cu[1:] - cu[:-1] - 1) // K + 1  # ceil(len / K), 0 for an empty sequence (floor division)
    blkseq = torch.repeat_interleave(nblk, output_size=S)
    firstblk = torch.cumsum(nblk, 0, dtype=torch.int32) - nblk
    return blkseq, firstblk


def _run_shape(st: LaunchSettings, K: int):
    """(blocks per step, steps per program) of the run kernel under ``st``; ValueError if ``st`` does
    not describe one for blocks of K."""
    bpp, tile, row = st.blocks_per_program, st.tile, st.chunk
    if any(x & (x - 1) for x in (bpp, tile, row)) or row < run_row_positions(K) or tile < row or bpp * row < tile:
        raise ValueError(f"settings: blocks_per_program ({bpp}), tile ({tile}) and chunk ({row}) must be powers of two "
                         f"with chunk >= {run_row_positions(K)} for block_size {K}, tile >= chunk and "
                         f"blocks_per_program * chunk >= tile")
    return tile // row, bpp * row // tile


def _launch_block_runs(ids, cu, sig, inputs, outputs, scalars, flags, K, st: LaunchSettings) -> None:
    """Per-block σ as runs of ``st.blocks_per_program`` blocks per program (one launch).
    ``inputs`` (prio, mk, plen, sid, rng), ``outputs`` (noisy, masked, labels, lw, rates),
    ``scalars`` (S, w_bits, w_mode, sigma_stride, has_sid, lw_mode, mask_id) and ``flags``
    (the constexprs shared with ``_mask_kernel``) as :func:`priority_mask_triton_out` prepares them."""
    R, steps = _run_shape(st, K)
    S = scalars[0]
    blkseq, firstblk = _block_run_table(cu, K, S)
    flags = {k: v for k, v in flags.items() if k not in ("CHUNK", "G", "SEG_IS_SEQ")}
    _block_runs_kernel[(triton.cdiv(S, R),)](ids, cu, blkseq, firstblk, sig, *inputs, *outputs, ids.numel(), S, K,
                                             *scalars[1:], R=R, G=st.chunk // 4, STEPS=steps, **flags,
                                             num_warps=st.num_warps, enable_fp_fusion=False)


def _empty_outputs(input_ids, num_segments, complementary, loss_weight_mode):
    dev = input_ids.device
    n = (2 if complementary else 1) * input_ids.numel()
    return (torch.empty(n, dtype=input_ids.dtype, device=dev), torch.empty(n, dtype=torch.bool, device=dev),
            torch.empty(n, dtype=torch.int64, device=dev),
            torch.empty(n if loss_weight_mode else 0, dtype=torch.float32, device=dev),
            torch.empty((int(num_segments), 2), dtype=torch.float64, device=dev))


def priority_mask_triton(input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng, weight,
                         block_size, num_segments, exact, complementary, loss_weight_mode, mask_token_id, *,
                         settings: Optional[LaunchSettings] = None):
    """Triton implementation of ``dllm_masks::priority_mask`` on the op's normalized arguments (see
    :func:`dllm_masks.reference.priority_mask_ref`); the same five outputs, bit for bit.

    No host sync and no data-dependent allocation: the grid and every buffer are sized from
    ``input_ids.numel()``, ``cu_seqlens.numel()`` and ``num_segments``; seed and offsets are read
    from ``rng`` on the device, so a CUDA graph replays with fresh numbers after ``rng`` changes.
    Two launches (plus a few small torch ops building the block table when ``block_size > 0``).
    ``settings`` replaces :func:`launch_settings` (tests use tiny tiles and chunks to reach the
    multi-chunk paths on short inputs).
    """
    outs = _empty_outputs(input_ids, num_segments, complementary, loss_weight_mode)
    priority_mask_triton_out(input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng, weight,
                             block_size, num_segments, exact, complementary, loss_weight_mode, mask_token_id,
                             noisy=outs[0], masked=outs[1], labels=outs[2], loss_weight=outs[3], rates=outs[4],
                             settings=settings)
    return outs


def priority_mask_triton_out(input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng, weight,
                             block_size, num_segments, exact, complementary, loss_weight_mode, mask_token_id, *,
                             noisy, masked, labels, loss_weight, rates,
                             settings: Optional[LaunchSettings] = None) -> None:
    """The out-variant ``dllm_masks::priority_mask.out``: writes the five outputs of
    :func:`priority_mask_triton` into the given contiguous buffers (flat [V·T], ``loss_weight``
    [V·T] or [0], ``rates`` [S, 2]; shapes and dtypes checked by :func:`dllm_masks.ops.check_out`)."""
    if priority is not None and priority.is_floating_point():
        # float32 importance weights (docs/importance.md): the weights kernel
        from .importance import priority_mask_weights_triton_out

        priority_mask_weights_triton_out(input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids,
                                         rng, weight, block_size, num_segments, exact, complementary,
                                         loss_weight_mode, mask_token_id, noisy=noisy, masked=masked, labels=labels,
                                         loss_weight=loss_weight, rates=rates)
        return
    dev = input_ids.device
    T = input_ids.numel()
    S = int(num_segments)
    K = int(block_size)
    if S == 0:  # no segment, hence no token
        return None

    ids = input_ids.contiguous()
    cu = cu_seqlens.to(torch.int32).contiguous()
    sig = sigma.to(torch.float32).contiguous()
    rng = rng.to(torch.int64).contiguous()
    st = settings or launch_settings(K)
    dummy = rng  # never read: its flag is off
    prio = priority.contiguous() if priority is not None else dummy
    prio = prio.view(torch.uint8) if prio.dtype == torch.bool else prio
    mk = maskable.contiguous().view(torch.uint8) if maskable is not None else dummy
    plen = prompt_lens.to(torch.int64).contiguous() if prompt_lens is not None else dummy
    sid = sample_ids.to(torch.int64).contiguous() if sample_ids is not None else dummy
    w = float(weight)
    w_bits = struct.unpack("<q", struct.pack("<d", w))[0]  # float64 bits: a float argument would be float32
    scalars = (S, w_bits, _weight_mode(w), 0 if sig.numel() == 1 else 1, int(sample_ids is not None))
    flags = dict(CHUNK=st.chunk, G=st.tile // 4, SEG_IS_SEQ=K == 0, HAS_PRIO=priority is not None,
                 HAS_MASKABLE=maskable is not None, HAS_PROMPT=prompt_lens is not None, EXACT=bool(exact))
    if K > 0 and st.blocks_per_program > 0:
        flags.update(COMPLEMENT=bool(complementary), HAS_LW=bool(loss_weight_mode))
        _launch_block_runs(ids, cu, sig, (prio, mk, plen, sid, rng),
                           (noisy, masked, labels, loss_weight if loss_weight_mode else dummy, rates),
                           (*scalars, int(loss_weight_mode), int(mask_token_id)), flags, K, st)
        return None
    segstart, segseq = _segment_table(cu, T, K, S) if K > 0 else (cu, cu)
    # Blocks no longer than a chunk are one chunk each: one program per segment, found from its
    # program id (no launch 1 and no binary search).
    per_program = 0 < K <= st.chunk
    grid = S if per_program else T // st.chunk + S
    prog_seg = dummy if per_program else torch.empty(grid, dtype=torch.int32, device=dev)
    partial = dummy if per_program else torch.empty(grid, dtype=torch.int64, device=dev)
    cut = torch.empty(2 * S if exact and not per_program else 1, dtype=torch.int64, device=dev)

    if not per_program:
        _stats_kernel[(grid,)](cu, segstart, segseq, sig, prio, mk, plen, sid, rng, prog_seg, partial, cut,
                               *scalars, **flags, num_warps=st.num_warps if exact else st.stats_warps,
                               enable_fp_fusion=False)
    _mask_kernel[(grid,)](ids, cu, segstart, segseq, sig, prio, mk, plen, sid, rng,
                          noisy, masked, labels, loss_weight if loss_weight_mode else dummy, rates, prog_seg, partial,
                          cut, T, *scalars, int(loss_weight_mode), int(mask_token_id),
                          **flags, COMPLEMENT=bool(complementary), HAS_LW=bool(loss_weight_mode),
                          SEG_PER_PROGRAM=per_program, num_warps=st.num_warps, enable_fp_fusion=False)
    return None


_PTR_TYPES = {"ids_ptr": "*i64", "cu_ptr": "*i32", "sigma_ptr": "*fp32", "prio_ptr": "*u8", "mk_ptr": "*u8",
              "plen_ptr": "*i64", "sid_ptr": "*i64", "rng_ptr": "*i64", "noisy_ptr": "*i64", "masked_ptr": "*i1",
              "labels_ptr": "*i64", "lw_ptr": "*fp32", "rates_ptr": "*fp64", "prog_seg_ptr": "*i32",
              "partial_ptr": "*i64", "cut_ptr": "*i64", "T": "i32", "S": "i32", "w_bits": "i64", "w_mode": "i32",
              "sigma_stride": "i32", "has_sid": "i32", "lw_mode": "i32", "mask_id": "i32"}


def compile_specialization(kernel: str = "mask", arch: int = 90, *, exact: bool = False, block_size: int = 0,
                           complementary: bool = True, loss_weight: bool = True, ids_dtype: torch.dtype = torch.int64,
                           has_priority: bool = True, has_maskable: bool = False, has_prompt: bool = True,
                           settings: Optional[LaunchSettings] = None):
    """Compile one specialization of ``kernel`` ("mask", "stats" or "blocks", the run kernel of
    per-block σ; :func:`kernels_launched` says which a call launches) ahead of time for
    ``sm_<arch>`` and return Triton's compiled kernel (``.asm``: ttir … ptx, cubin; ``.metadata``:
    shared memory, warps). The constexpr flags are those a call with these options launches with.

    Needs no GPU (Triton's bundled LLVM and ptxas), only a process without ``TRITON_INTERPRET=1``.
    The tests and ``benchmarks/gpu_check.py`` read the PTX: float64 arithmetic must be
    ``mul.rn``/``add.rn``/``sub.rn``/``div.rn``, never ``fma`` (docs/design.md §7).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = {"mask": _mask_kernel, "stats": _stats_kernel, "blocks": _block_runs_kernel}[kernel]
    st = settings or launch_settings(block_size)
    const = dict(CHUNK=st.chunk, G=st.tile // 4, SEG_IS_SEQ=block_size == 0, HAS_PRIO=has_priority,
                 HAS_MASKABLE=has_maskable, HAS_PROMPT=has_prompt, EXACT=exact, COMPLEMENT=complementary,
                 HAS_LW=loss_weight, SEG_PER_PROGRAM=0 < block_size <= st.chunk)
    seg = "*i32" if block_size == 0 else "*i64"
    ids = {torch.int32: "*i32", torch.int64: "*i64"}[ids_dtype]
    types = dict(_PTR_TYPES, segstart_ptr=seg, segseq_ptr=seg, ids_ptr=ids, noisy_ptr=ids, blkseq_ptr="*i32",
                 firstblk_ptr="*i32", K="i32")
    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    const = {k: v for k, v in const.items() if k in fn.arg_names}
    if kernel == "blocks":
        R, steps = _run_shape(st, block_size)
        const.update(R=R, G=st.chunk // 4, STEPS=steps)
    src = ASTSource(fn=fn, signature=signature, constexprs=const)
    warps = st.stats_warps if (kernel == "stats" and not exact) else st.num_warps
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "enable_fp_fusion": False})


def kernels_launched(block_size: int, settings: Optional[LaunchSettings] = None) -> tuple:
    """The kernels (names of :func:`compile_specialization`) a call with this ``block_size`` (0:
    σ per sequence) launches, in order."""
    st = settings or launch_settings(block_size)
    if block_size > 0 and st.blocks_per_program > 0:
        return ("blocks",)
    if 0 < block_size <= st.chunk:
        return ("mask",)
    return ("stats", "mask")


def compile_for_inspection(kernel: str = "mask", arch: int = 90, *, exact: bool = False, block_size: int = 0,
                           settings: Optional[LaunchSettings] = None) -> dict:
    """Compile one kernel ahead of time for ``sm_<arch>`` and return its ``asm`` dict (ttir … ptx):
    the specialization with priority, prompts, both views and loss weights (int64 ids).

    Needs no GPU (Triton's bundled LLVM and ptxas), only a process without ``TRITON_INTERPRET=1``.
    The tests and ``benchmarks/gpu_check.py`` read the PTX: float64 arithmetic must be
    ``mul.rn``/``add.rn``/``sub.rn``/``div.rn``, never ``fma`` (docs/design.md §7).
    """
    return compile_specialization(kernel, arch, exact=exact, block_size=block_size, settings=settings).asm
