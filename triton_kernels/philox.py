"""Philox4x32-10 in Triton, with the counter layout of docs/design.md §4 (shared by every Triton kernel).

Written out with ``tl.umulhi``, wrapping ``uint32`` multiplies and xors: ``tl.rand``/``tl.randint4x``
are not used, since their counter layout is Triton's and not the contract's. Every word is an
explicit ``tl.uint32`` and the 64-bit inputs (seed, sequence keys) are reinterpreted as
``tl.uint64`` before they are split, so signedness never changes a bit. The oracle is
:func:`dllm_masks.rng.philox4x32`.
"""
import triton
import triton.language as tl

PHILOX_A: tl.constexpr = tl.constexpr(0xD2511F53)  # multiplies c0
PHILOX_B: tl.constexpr = tl.constexpr(0xCD9E8D57)  # multiplies c2
PHILOX_W0: tl.constexpr = tl.constexpr(0x9E3779B9)  # key schedule
PHILOX_W1: tl.constexpr = tl.constexpr(0xBB67AE85)
STREAM_BERNOULLI: tl.constexpr = tl.constexpr(0)
STREAM_SELECT: tl.constexpr = tl.constexpr(1)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 counter words (broadcastable tensors) with key (k0, k1).

    Round: (c0, c1, c2, c3) <- (hi(B·c2) ^ c1 ^ k0, lo(B·c2), hi(A·c0) ^ c3 ^ k1, lo(A·c0)),
    then the key is bumped by (W0, W1).
    """
    a = tl.full([1], PHILOX_A, tl.uint32)
    b = tl.full([1], PHILOX_B, tl.uint32)
    for _ in tl.static_range(10):
        hi_b = tl.umulhi(c2, b)
        lo_b = tl.mul(c2, b, sanitize_overflow=False)  # wraps mod 2^32 by design
        hi_a = tl.umulhi(c0, a)
        lo_a = tl.mul(c0, a, sanitize_overflow=False)
        c0 = hi_b ^ c1 ^ k0
        c1 = lo_b
        c2 = hi_a ^ c3 ^ k1
        c3 = lo_a
        k0 = tl.add(k0, PHILOX_W0, sanitize_overflow=False)
        k1 = tl.add(k1, PHILOX_W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def split_u64(x):
    """(low, high) uint32 words of a 64-bit integer (int64 bits read as uint64)."""
    u = x.to(tl.uint64, bitcast=True)
    return u.to(tl.uint32), (u >> 32).to(tl.uint32)


@triton.jit
def philox_quads(quad, key_lo, key_hi, stream: tl.constexpr, k0, k1):
    """The four uint32 words of the Philox call that serves positions 4·quad .. 4·quad + 3.

    ``quad`` is j >> 2 (any integer tensor, < 2^32), ``key_lo``/``key_hi`` the sequence key's
    words, ``stream`` 0 (Bernoulli) or 1 (selection keys), (k0, k1) the seed's words (docs/design.md §4).
    """
    c0 = quad.to(tl.uint32)
    c1 = key_lo + tl.zeros_like(c0)
    c2 = key_hi + tl.zeros_like(c0)
    c3 = tl.full(c0.shape, stream, tl.uint32)
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


@triton.jit
def pick_word(w0, w1, w2, w3, lane):
    """Word ``lane`` (0..3, broadcast against the words) of each Philox output: the draw of j = 4q + lane."""
    return tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
