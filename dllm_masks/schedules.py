"""Noise-level (σ) sampling for masked-diffusion training: i.i.d. draws from a generator
(:func:`sample_sigma`) or draws keyed by sample and segment (:func:`keyed_sigma`, which the
reference training loop uses so that σ does not depend on batch, rank or order)."""
from __future__ import annotations

from typing import Optional

import torch

from . import validation as V
from .rng import STREAM_SIGMA, philox4x32, split_seed

__all__ = ["sample_sigma", "keyed_sigma", "STREAM_SIGMA"]


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


def keyed_sigma(sample_ids: torch.Tensor, cu_seqlens: torch.Tensor, *, low: float, high: float, seed: int,
                block_size: Optional[int] = None) -> torch.Tensor:
    """σ per segment, drawn from Philox keyed by the sample key and the segment's index in it.

    Segment j of sequence b draws ``philox((j, s_b lo, s_b hi, 2), key(seed))[0]`` and maps it to
    ``low + (high − low) · r / 2^32``: σ depends on the sample, not on its batch, rank or order.

    Parameters
    ----------
    sample_ids : torch.Tensor, int64, [B]
    cu_seqlens : torch.Tensor, int32/int64, [B+1]
    low, high : float
    seed : int
    block_size : int, optional
        One σ per block of this many positions (segments as in ``priority_mask``), else per sequence.

    Returns
    -------
    torch.Tensor, float32, [S] on the device of ``sample_ids``.
    """
    dev = sample_ids.device
    cu = cu_seqlens.to(dev, torch.int64)
    lens = cu[1:] - cu[:-1]
    if block_size is None:
        counts = torch.ones_like(lens)
    else:
        counts = (lens + block_size - 1) // block_size
    keys = torch.repeat_interleave(sample_ids.to(torch.int64), counts)
    starts = torch.cumsum(counts, 0) - counts
    seg = torch.arange(keys.numel(), device=dev) - torch.repeat_interleave(starts, counts)
    k0, k1 = split_seed(seed)
    r = philox4x32(seg, keys & 0xFFFFFFFF, (keys >> 32) & 0xFFFFFFFF, torch.full_like(seg, STREAM_SIGMA), k0, k1)[0]
    u = r.to(torch.float64) * (1.0 / 4294967296.0)
    return (low + (high - low) * u).clamp(low, high).to(torch.float32)
