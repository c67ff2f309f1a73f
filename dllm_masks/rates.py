"""Solving p_base with clipping (docs/design.md §3), vectorized over segments, in float64.

Every operation below is a separate torch op, so each is rounded on its own (no fused
multiply-add): the C++ and Triton kernels perform exactly the same sequence of operations.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["solve_rates", "exact_counts", "bernoulli_thresholds"]


def solve_rates(n, n1, sigma, weight: float) -> torch.Tensor:
    """Per-segment masking probabilities (q0, q1) that conserve the target rate σ.

    Solves n1·q1 + n0·q0 = σ·N with q1 = w·q0, clipping the larger of the two at 1 and
    re-solving the other (docs/design.md §3).

    Parameters
    ----------
    n : torch.Tensor (integer, [S]) or int
        Maskable tokens N per segment.
    n1 : torch.Tensor (integer, [S]) or int
        Maskable priority tokens per segment, 0 ≤ n1 ≤ N.
    sigma : torch.Tensor (floating, [S] or [1]) or float
        Target masking rate per segment in [0, 1]; rounded to float32 like the op's σ.
    weight : float
        Priority weight w in [0, inf].

    Returns
    -------
    torch.Tensor, float64, shape [S, 2]
        Column 0 is q0 (non-priority tokens, the paper's p_base), column 1 is q1 (priority tokens).

    Examples
    --------
    >>> solve_rates(100, 25, 0.5, 2.0)   # q0 = 50 / 125, q1 = 2 q0
    tensor([[0.4000, 0.8000]], dtype=torch.float64)
    """
    from . import validation

    w = validation.check_weight(weight)
    n = torch.as_tensor(n).reshape(-1)
    n1 = torch.as_tensor(n1, device=n.device).reshape(-1)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=n.device).reshape(-1)
    for name, x in (("n", n), ("n1", n1)):
        validation.check_tensor(name, x, dtypes=validation.INT_DTYPES)
        if bool((x < 0).any()):
            raise ValueError(f"{name}: counts must be >= 0")
    validation.check_sigma_values(sigma)
    try:
        n, n1, sigma = torch.broadcast_tensors(n, n1, sigma)
    except RuntimeError as e:
        raise ValueError(f"n, n1, sigma: lengths do not broadcast ({e})") from None
    if bool((n1 > n).any()):
        raise ValueError("n1: priority counts must not exceed n")
    return _solve(n, n1, sigma, w)


def _solve(n: torch.Tensor, n1: torch.Tensor, sigma: torch.Tensor, w: float) -> torch.Tensor:
    """:func:`solve_rates` without checks: n, n1 integer [S], sigma float32 [S], w a float."""
    return solve_two_level(n, n1, sigma, torch.full(sigma.shape, w, dtype=torch.float64, device=sigma.device))


def solve_two_level(n: torch.Tensor, n1: torch.Tensor, sigma: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The rate solve (docs/design.md §3) with one weight per segment, without checks.

    Every case (w = 1, inf, 0, above or below 1) is computed elementwise and the segment's own
    case is selected, so each segment's (q0, q1) comes from the same float64 operations in the
    same order whatever the other segments' weights are.

    n, n1: integer [S]; sigma: float32 [S]; w: float64 [S] in [0, inf]. Returns float64 [S, 2].
    """
    N = n.to(torch.float64)
    n1f = n1.to(torch.float64)
    n0 = N - n1f
    s = sigma.to(torch.float64)
    K = s * N
    one = torch.ones_like(s)
    zero = torch.zeros_like(s)
    # w = inf
    qi1 = torch.minimum(one, K / n1f)
    qi0 = torch.maximum(zero, (K - n1f) / n0)
    # w = 0
    qz0 = torch.minimum(one, K / n0)
    qz1 = torch.maximum(zero, (K - n0) / n1f)
    # 0 < w < inf, w != 1
    den = n1f * w + n0
    p = K / den
    wp = p * w
    keep_hi = wp <= 1.0
    qa0 = torch.where(keep_hi, p, (K - n1f) / n0)
    qa1 = torch.where(keep_hi, wp, one)
    keep_lo = p <= 1.0
    qb0 = torch.where(keep_lo, p, one)
    qb1 = torch.where(keep_lo, wp, (K - n0) / n1f)
    above = w > 1.0
    q0 = torch.where(above, qa0, qb0)
    q1 = torch.where(above, qa1, qb1)
    inf = torch.isinf(w)
    q0 = torch.where(inf, qi0, q0)
    q1 = torch.where(inf, qi1, q1)
    wz = w == 0.0
    q0 = torch.where(wz, qz0, q0)
    q1 = torch.where(wz, qz1, q1)
    w1 = w == 1.0
    q0 = torch.where(w1, s, q0)
    q1 = torch.where(w1, s, q1)
    uniform = (n1 == 0) | (n0 == 0)
    q0 = torch.where(uniform, s, q0)
    q1 = torch.where(uniform, s, q1)
    empty = N == 0
    q0 = torch.where(empty, zero, q0)
    q1 = torch.where(empty, zero, q1)
    return torch.stack([q0, q1], dim=-1)


def exact_counts(n: torch.Tensor, n1: torch.Tensor, sigma: torch.Tensor, rates: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token counts (k0, k1) that ``sampling="exact"`` masks per segment (docs/design.md §5).

    k = floor(σ·N + 0.5); k1 = clamp(floor(q1·n1 + 0.5), max(0, k − n0), min(n1, k)); k0 = k − k1.

    Returns
    -------
    (k0, k1) : two int64 tensors of shape [S].
    """
    N = n.to(torch.float64)
    n1f = n1.to(torch.float64)
    n0f = N - n1f
    K = sigma.to(torch.float64) * N
    k = torch.floor(K + 0.5)
    k1 = torch.floor(rates[:, 1] * n1f + 0.5)
    lo = torch.clamp(k - n0f, min=0.0)
    hi = torch.minimum(n1f, k)
    k1 = torch.minimum(torch.maximum(k1, lo), hi)
    k = k.to(torch.int64)
    k1 = k1.to(torch.int64)
    return k - k1, k1


def bernoulli_thresholds(rates: torch.Tensor) -> torch.Tensor:
    """Integer thresholds T = floor(q·2^32) (int64, same shape as ``rates``): r < T masks."""
    return torch.floor(rates * 4294967296.0).to(torch.int64)
