"""Noise-level (σ) sampling for masked-diffusion training: i.i.d. draws from a generator
(:func:`sample_sigma`) or draws keyed by sample and segment (:func:`keyed_sigma`, which the
reference training loop uses so that σ does not depend on batch, rank or order), and noise
schedules α(t) with their loss weights (:class:`Schedule`: linear, cosine, polynomial)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import validation
from .rng import STREAM_SIGMA, philox4x32, split_seed

__all__ = ["sample_sigma", "keyed_sigma", "keyed_uniform", "STREAM_SIGMA", "Schedule", "SCHEDULE_KINDS", "schedule",
           "linear", "cosine", "polynomial"]


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
    S = validation.check_int("num_segments", num_segments, low=0)
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
    u = keyed_uniform(sample_ids, counts, seed=seed)
    return (low + (high - low) * u).clamp(low, high).to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Noise schedules α(t)
# ---------------------------------------------------------------------------------------------
SCHEDULE_KINDS = ("linear", "cosine", "polynomial")


class Schedule:
    """A masked-diffusion noise schedule α(t): the probability that a token is *kept* at time t.

    Conventions (MDLM, and dllm's ``alpha`` schedulers): t ∈ [0, 1], α(0) = 1 (clean),
    α(1) = 0 (all masked); the masking rate of a token at time t is σ(t) = 1 − α(t).

    ==============  ===========================  ==============================
    kind            α(t)                         −α′(t)/(1 − α(t))  (σ view)
    ==============  ===========================  ==============================
    ``linear``      1 − t                        1/t
    ``cosine``      1 − cos(π/2 · (1 − t))       (π/2)·sin(π/2·(1−t)) / cos(π/2·(1−t))
    ``polynomial``  1 − t^p                      p/t
    ==============  ===========================  ==============================

    Time is drawn as t = eps + (1 − eps)·u, u ~ U[0, 1] (LLaDA's p = (1 − eps)·t + eps for the
    linear schedule; dllm's ``time_epsilon``), so σ never reaches 0.

    Loss weights (derivation in docs/integrations.md): the σ view of a sequence drawn at time t
    weighs its masked tokens by ``weight(t) = −α′(t)/(1 − α(t))``; the complementary view (whose
    tokens are masked with probability α(t)) by ``complement_weight(t) = −α′(t)/α(t)``. For the
    linear schedule these are 1/σ and 1/(1 − σ), the op's ``loss_weight="sigma"``.

    Parameters
    ----------
    kind : {"linear", "cosine", "polynomial"}
    eps : float in [0, 1)
        Smallest time drawn (LLaDA uses 1e-3).
    power : float > 0
        p of the polynomial schedule (ignored otherwise; p = 1 is linear).
    """

    def __init__(self, kind: str = "linear", *, eps: float = 1e-3, power: float = 1.0):
        validation.check_choice("kind", kind, SCHEDULE_KINDS)
        for name, x in (("eps", eps), ("power", power)):
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise TypeError(f"{name}: expected a float, got {type(x).__name__}")
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps: must lie in [0, 1), got {eps}")
        if not power > 0.0:
            raise ValueError(f"power: must be > 0, got {power}")
        self.kind, self.eps, self.power = kind, float(eps), float(power)

    def __repr__(self) -> str:
        extra = f", power={self.power}" if self.kind == "polynomial" else ""
        return f"Schedule({self.kind!r}, eps={self.eps}{extra})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and (self.kind, self.eps, self.power) == (other.kind, other.eps, other.power)

    def state(self) -> dict:
        return {"kind": self.kind, "eps": self.eps, "power": self.power}

    @staticmethod
    def _t(t) -> torch.Tensor:
        return torch.as_tensor(t, dtype=torch.float64)

    def alpha(self, t) -> torch.Tensor:
        """α(t), float64, the shape of ``t``."""
        t = self._t(t)
        if self.kind == "linear":
            return 1.0 - t
        if self.kind == "cosine":
            return 1.0 - torch.cos(0.5 * math.pi * (1.0 - t))
        return 1.0 - t ** self.power

    def alpha_prime(self, t) -> torch.Tensor:
        """dα/dt, float64."""
        t = self._t(t)
        if self.kind == "linear":
            return -torch.ones_like(t)
        if self.kind == "cosine":
            return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))
        return -self.power * t ** (self.power - 1.0)

    def sigma(self, t) -> torch.Tensor:
        """Masking rate σ(t) = 1 − α(t), float64 (computed directly, exact near t = 0)."""
        t = self._t(t)
        if self.kind == "linear":
            return t.clone()
        if self.kind == "cosine":
            return torch.cos(0.5 * math.pi * (1.0 - t))
        return t ** self.power

    def weight(self, t) -> torch.Tensor:
        """Loss weight of the σ view's masked tokens, −α′(t)/(1 − α(t)), float64 (inf at t = 0)."""
        return -self.alpha_prime(t) / self.sigma(t)

    def complement_weight(self, t) -> torch.Tensor:
        """Loss weight of the complementary view's masked tokens, −α′(t)/α(t), float64."""
        return -self.alpha_prime(t) / self.alpha(t)

    def time_from_uniform(self, u) -> torch.Tensor:
        """t = eps + (1 − eps)·u for u ∈ [0, 1], float64."""
        return self.eps + (1.0 - self.eps) * self._t(u)

    def sample(self, n: int, *, generator: Optional[torch.Generator] = None, device=None):
        """Draw n times and their masking rates.

        Returns
        -------
        (t : torch.Tensor float64 [n], sigma : torch.Tensor float32 [n])
        """
        n = validation.check_int("n", n, low=0)
        u = torch.rand(n, generator=generator, dtype=torch.float64,
                       device=generator.device if generator is not None else device)
        t = self.time_from_uniform(u)
        return t, self.sigma(t).clamp(0.0, 1.0).to(torch.float32)


def schedule(kind: str = "linear", *, eps: float = 1e-3, power: float = 1.0) -> Schedule:
    """Shorthand for :class:`Schedule`."""
    return Schedule(kind, eps=eps, power=power)


def linear(eps: float = 1e-3) -> Schedule:
    """α(t) = 1 − t (MDLM, LLaDA)."""
    return Schedule("linear", eps=eps)


def cosine(eps: float = 1e-3) -> Schedule:
    """α(t) = 1 − cos(π/2 · (1 − t)) (dllm's ``CosineAlphaScheduler``)."""
    return Schedule("cosine", eps=eps)


def polynomial(power: float, eps: float = 1e-3) -> Schedule:
    """α(t) = 1 − t^p."""
    return Schedule("polynomial", eps=eps, power=power)


def keyed_uniform(keys: torch.Tensor, counts: torch.Tensor, *, seed: int) -> torch.Tensor:
    """u ∈ [0, 1) per segment from Philox keyed like :func:`keyed_sigma` (float64 [Σ counts]):
    ``counts[b]`` segments for key ``keys[b]``, segment j of key k drawing ``philox((j, k, 2))``."""
    dev = keys.device
    counts = counts.to(dev, torch.int64)
    words = _cpp_keyed_words()
    if words is not None and dev.type == "cpu" and isinstance(seed, int) and not torch.compiler.is_compiling():
        k0, k1 = split_seed(seed)  # the same words from the C++ Philox (one call per segment, no tensor ops)
        r = words(keys.to(torch.int64), counts, k0, k1, STREAM_SIGMA)
        return r.to(torch.float64) * (1.0 / 4294967296.0)
    return _keyed_uniform_torch(keys, counts, seed=seed)


def _cpp_keyed_words():
    """``dllm_masks._C.keyed_words`` when the C++ extension loaded (imported lazily: the extension
    is loaded by ``ops``)."""
    from . import ops
    return getattr(ops._cpp, "keyed_words", None)


def _keyed_uniform_torch(keys: torch.Tensor, counts: torch.Tensor, *, seed: int) -> torch.Tensor:
    """:func:`keyed_uniform` in plain torch integer ops (any device; the oracle of the C++ form)."""
    dev = keys.device
    counts = counts.to(dev, torch.int64)
    k = torch.repeat_interleave(keys.to(torch.int64), counts)
    starts = torch.cumsum(counts, 0) - counts
    seg = torch.arange(k.numel(), device=dev) - torch.repeat_interleave(starts, counts)
    k0, k1 = split_seed(seed)
    r = philox4x32(seg, k & 0xFFFFFFFF, (k >> 32) & 0xFFFFFFFF, torch.full_like(seg, STREAM_SIGMA), k0, k1)[0]
    return r.to(torch.float64) * (1.0 / 4294967296.0)
