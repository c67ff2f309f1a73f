"""Philox4x32-10 in plain torch integer ops, with the counter layout of docs/design.md §4.

Every value is a uint32 held in an int64 tensor, so the arithmetic never overflows and runs on
any device. The kernels (C++ and Triton) implement the same function; this module is their oracle.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

__all__ = ["philox4x32", "split_seed", "sequence_draws", "STREAM_BERNOULLI", "STREAM_SELECT", "STREAM_SIGMA"]

PHILOX_M0 = 0xD2511F53  # A: multiplies c0
PHILOX_M1 = 0xCD9E8D57  # B: multiplies c2
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
MASK32 = 0xFFFFFFFF
STREAM_BERNOULLI = 0
STREAM_SELECT = 1
STREAM_SIGMA = 2  # keyed σ draws of training (dllm_masks.schedules.keyed_sigma)

IntOrTensor = Union[int, torch.Tensor]


def _mulhilo(a: int, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a·x, with a a uint32 constant and x uint32s.

    The product is split at 16 bits so that no intermediate exceeds 2^49 (no int64 overflow).
    """
    a_lo, a_hi = a & 0xFFFF, a >> 16
    p = x * a_hi  # < 2^48
    q = x * a_lo  # < 2^48
    hi = (p + (q >> 16)) >> 16
    lo = (q + ((p & 0xFFFF) << 16)) & MASK32
    return hi, lo


def philox4x32(c0, c1, c2, c3, k0: IntOrTensor, k1: IntOrTensor, rounds: int = 10):
    """Philox4x32-R on broadcastable int64 tensors holding uint32 values.

    Parameters
    ----------
    c0, c1, c2, c3 : torch.Tensor, int64, any broadcastable shape
        Counter words, each in [0, 2^32).
    k0, k1 : int or torch.Tensor (int64, broadcastable)
        Key words, each in [0, 2^32).

    Returns
    -------
    tuple of four int64 tensors in [0, 2^32), the output words.
    """
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def split_seed(seed: IntOrTensor) -> Tuple[IntOrTensor, IntOrTensor]:
    """Key (k0, k1) = (seed & 0xffffffff, seed >> 32) of a uint64 seed.

    ``seed`` is a Python int (negative values are taken mod 2^64) or an int64 tensor whose bits
    are read as a uint64.
    """
    if isinstance(seed, torch.Tensor):
        seed = seed.to(torch.int64)
        return seed & MASK32, (seed >> 32) & MASK32
    seed = int(seed) % (1 << 64)
    return seed & MASK32, seed >> 32


def sequence_draws(seq_keys: torch.Tensor, positions: torch.Tensor, stream: int, seed: IntOrTensor) -> torch.Tensor:
    """uint32 draws (as int64) for tokens at ``positions`` of sequences with keys ``seq_keys``.

    This is the per-token definition of docs/design.md §4 (one Philox call per token): the reference
    itself draws once per group of four tokens (see :mod:`dllm_masks.reference`); this form is for
    tests and small inputs.

    Parameters
    ----------
    seq_keys : torch.Tensor, int64, shape [...]
        The sequence key s_b of each token (its bits read as a uint64).
    positions : torch.Tensor, int64, same shape
        Position j of each token counted from its sequence's first token.
    stream : int
        0 for Bernoulli draws, 1 for the selection keys of ``sampling="exact"``.
    seed : int or int64 tensor
    """
    k0, k1 = split_seed(seed)
    positions = positions.to(torch.int64)
    seq_keys = seq_keys.to(torch.int64)
    c0 = positions >> 2
    c1 = seq_keys & MASK32
    c2 = (seq_keys >> 32) & MASK32
    c3 = torch.full_like(c0, stream)
    words = torch.stack(philox4x32(c0, c1, c2, c3, k0, k1), dim=-1)
    return torch.gather(words, -1, (positions & 3).unsqueeze(-1)).squeeze(-1)
