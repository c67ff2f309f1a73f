"""Noise-level (σ) sampling for masked-diffusion training."""
from __future__ import annotations

from typing import Optional

import torch

from . import validation as V

__all__ = ["sample_sigma"]


def sample_sigma(
    num_segments: int,
    low: float = 0.0,
    high: float = 1.0,
    *,
    antithetic: bool = False,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """Draw one masking rate σ per segment, uniform in [low, high].

    Parameters
    ----------
    num_segments : int
        S, e.g. ``dm.num_segments(cu_seqlens, block_size)``.
    low, high : float
        Bounds, 0 ≤ low ≤ high ≤ 1 (the paper and dFactory use 0.3 and 0.8).
    antithetic : bool
        Stratified (low-discrepancy) draws as in MDLM / BD3-LM: the S draws fall one into each of
        S equal strata of [low, high], assigned to segments in a random order, which lowers the
        variance of the batch's loss estimate without changing each σ's marginal distribution.
    generator : torch.Generator, optional
        Source of randomness (a CPU generator unless ``device`` matches it).
    device : torch.device, optional

    Returns
    -------
    torch.Tensor, float32, [S]
    """
    S = V.check_int("num_segments", num_segments, low=0)
    for name, x in (("low", low), ("high", high)):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"{name}: expected a float, got {type(x).__name__}")
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"{name}: must lie in [0, 1], got {x}")
    if low > high:
        raise ValueError(f"low: must be <= high, got low={low}, high={high}")
    gdev = generator.device if generator is not None else device
    u = torch.rand(S, generator=generator, dtype=torch.float64, device=gdev)
    if antithetic and S > 0:
        perm = torch.randperm(S, generator=generator, device=gdev).to(torch.float64)
        u = (perm + u) / S
    sigma = (low + (high - low) * u).clamp_(low, high).to(torch.float32)
    return sigma.to(device) if device is not None else sigma
