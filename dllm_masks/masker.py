"""``dm.Masker``: the object a trainer holds to mask every batch correctly.

:func:`dllm_masks.priority_mask` is a pure function of its keys: called every step with the same
``seed`` and ``seq_offset`` it returns the same mask pattern every step and on every rank. A
:class:`Masker` owns the keys instead. Each call draws fresh masks: sequence b of call c on rank
r is keyed ``(c · world_size + r) · 2^24 + b``, so no two calls and no two ranks share a key
(up to 2^24 sequences per call). With ``sample_ids`` the keys are the sample ids, and masks are
functions of (seed, sample id) alone, whatever the batch, rank or order. ``state_dict()`` holds
the call counter, so a resumed run draws the masks the uninterrupted run would have drawn.

σ per segment (a sequence, or a block of ``block_size`` positions) is drawn from Philox with the
same keys: uniform in ``sigma=(low, high)``, or from a noise schedule
(:class:`dllm_masks.schedules.Schedule`: t = eps + (1 − eps)·u, σ = 1 − α(t)). Loss weights follow
the σ distribution (docs/integrations.md derives them): with bounds, ``"sigma"`` gives 1/σ and
1/(1 − σ); with a schedule every weight is multiplied by dσ/dt = −α′(t), so ``"sigma"`` gives
−α′(t)/(1 − α(t)) and −α′(t)/α(t) (1/σ and 1/(1 − σ) for the linear schedule), and ``"token"``
gives −α′(t)/q_i and −α′(t)/(1 − q_i).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from . import validation
from .buffers import OutputPool
from .ops import MaskedBatch, priority_mask
from .schedules import Schedule, keyed_uniform

__all__ = ["Masker"]

KEY_STRIDE = 1 << 24  # sequences per call before two calls' keys could meet


def _dist_default(name: str) -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() if name == "rank" else dist.get_world_size()
    return 0 if name == "rank" else 1


class Masker:
    """Stateful masking for a training loop: fresh, rank-distinct, resumable masks.

    Parameters
    ----------
    mask_token_id : int
    weight : float
        Priority weight w (1 = uniform masking; see :func:`dllm_masks.priority_mask`).
    complementary : bool
        Also return the complementary view (maskable tokens not masked in view 0).
    block_size : int, optional
        One σ per block of this many positions (BD3-LM's per-block σ); None: one σ per sequence
        (dFactory, LLaDA, MDLM).
    sigma : (float, float) or Schedule, optional
        σ bounds, drawn uniformly (dFactory: (0.3, 0.8)), or a noise schedule. Default: the linear
        schedule with eps = 1e-3 (MDLM / LLaDA: σ uniform in [1e-3, 1]).
    sampling : {"bernoulli", "exact"}
    loss_weight : {None, "sigma", "token"} or Schedule
        Per-token weights to return (see the module docstring). A Schedule means ``"sigma"`` under
        that schedule and must be the one given as ``sigma``.
    seed : int
    rank, world_size : int, optional
        Default: from ``torch.distributed`` when initialized (read at each call), else 0 and 1.
    backend : str, optional
        Force a ``priority_mask`` backend.
    reuse_outputs : bool
        Write every call's outputs into buffers this masker keeps (a :class:`~dllm_masks.OutputPool`)
        instead of new tensors: no allocation and no first-touch page faults once the buffers have
        grown to the largest batch. The batch a call returns is then **overwritten by the next
        call**; keep it only for the step it was made for (copy what must live longer), and do
        not use it in a collator whose batches a DataLoader prefetches.
    """

    def __init__(self, mask_token_id: int, *, weight: float = 1.0, complementary: bool = False,
                 block_size: Optional[int] = None, sigma: Union[None, Tuple[float, float], Schedule] = None,
                 sampling: str = "bernoulli", loss_weight: Union[None, str, Schedule] = "sigma", seed: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None, backend: Optional[str] = None,
                 reuse_outputs: bool = False):
        self.mask_token_id = validation.check_int("mask_token_id", mask_token_id)
        self.weight = validation.check_weight(weight)
        if not isinstance(complementary, bool):
            raise TypeError(f"complementary: expected a bool, got {type(complementary).__name__}")
        self.complementary = complementary
        self.block_size = None if block_size is None else validation.check_int("block_size", block_size, low=1)
        if sigma is None:
            sigma = Schedule("linear", eps=1e-3)
        if isinstance(sigma, Schedule):
            self.schedule, self.low, self.high = sigma, None, None
        else:
            if not isinstance(sigma, (tuple, list)) or len(sigma) != 2:
                raise TypeError(f"sigma: expected (low, high) or a Schedule, got {sigma!r}")
            low, high = (float(x) for x in sigma)
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"sigma: expected 0 <= low <= high <= 1, got {sigma}")
            self.schedule, self.low, self.high = None, low, high
        validation.check_choice("sampling", sampling, ("bernoulli", "exact"))
        self.sampling = sampling
        if isinstance(loss_weight, Schedule):
            if self.schedule is None or loss_weight != self.schedule:
                raise ValueError("loss_weight: a Schedule must be the one σ is drawn from (pass it as sigma= too)")
            loss_weight = "sigma"
        validation.check_choice("loss_weight", loss_weight, (None, "sigma", "token"))
        self.loss_weight = loss_weight
        self.seed = validation.check_int("seed", seed)
        self._rank = None if rank is None else validation.check_int("rank", rank, low=0)
        self._world = None if world_size is None else validation.check_int("world_size", world_size, low=1)
        if self._rank is not None and self._world is not None and self._rank >= self._world:
            raise ValueError(f"rank: must be < world_size={self._world}, got {self._rank}")
        self.backend = backend
        self.pool = OutputPool() if validation.check_bool("reuse_outputs", reuse_outputs) else None
        self.step = 0

    # -- configuration -----------------------------------------------------------------------
    @property
    def views(self) -> int:
        """V: 2 with ``complementary=True``, else 1."""
        return 2 if self.complementary else 1

    @property
    def rank(self) -> int:
        return self._rank if self._rank is not None else _dist_default("rank")

    @property
    def world_size(self) -> int:
        return self._world if self._world is not None else _dist_default("world_size")

    def state_dict(self) -> dict:
        """``{"step": calls so far, "seed": seed}``: enough to continue the same mask stream."""
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (the seed must match this masker's)."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"state: saved with seed {state['seed']}, this masker has seed {self.seed}")
        self.step = validation.check_int("state['step']", int(state["step"]), low=0)

    def __repr__(self) -> str:
        src = repr(self.schedule) if self.schedule is not None else f"({self.low}, {self.high})"
        return (f"Masker(mask_token_id={self.mask_token_id}, weight={self.weight}, complementary={self.complementary}, "
                f"block_size={self.block_size}, sigma={src}, loss_weight={self.loss_weight!r}, step={self.step})")

    # -- masking -----------------------------------------------------------------------------
    def __call__(self, input_ids: torch.Tensor, *, attention_mask: Optional[torch.Tensor] = None,
                 labels: Optional[torch.Tensor] = None, prompt_lens: Optional[torch.Tensor] = None,
                 maskable: Optional[torch.Tensor] = None, priority: Optional[torch.Tensor] = None,
                 sample_ids: Optional[torch.Tensor] = None,
                 cu_seqlens: Optional[torch.Tensor] = None) -> MaskedBatch:
        """Mask one (micro-)batch; advances the call counter.

        Parameters
        ----------
        input_ids : torch.Tensor, int32/int64, [B, L] (padded) or [T] (packed with ``cu_seqlens``)
        attention_mask : torch.Tensor, bool/int, like ``input_ids``, optional
            HF padding mask (0 = padding): padding is never masked.
        labels : torch.Tensor, int64, like ``input_ids``, optional
            HF labels: tokens with −100 (prompt, padding) are never masked.
        prompt_lens : torch.Tensor, integer, [B], optional
            The first ``prompt_lens[b]`` tokens of sequence b are never masked.
        maskable : torch.Tensor, bool, like ``input_ids``, optional
            Tokens that may be masked. At most one of labels / prompt_lens / maskable.
        priority : torch.Tensor, bool/int, like ``input_ids``, optional
            Information-dense tokens (masked ``weight`` times as likely).
        sample_ids : torch.Tensor, integer, [B], optional
            Per-sample keys: masks then depend on (seed, sample id) only.
        cu_seqlens : torch.Tensor, int32/int64, [B+1], optional
            Offsets of a packed batch.

        Returns
        -------
        MaskedBatch with ``maskable`` filled; padded [V·B, L] (view-major) or packed [V·T].
        """
        validation.check_tensor("input_ids", input_ids, dtypes=validation.ID_DTYPES, ndim=(1, 2))
        dev = input_ids.device
        padded = input_ids.dim() == 2
        if padded:
            B, L = input_ids.shape
            cu = torch.arange(B + 1, device=dev, dtype=torch.int64) * L
        else:
            if cu_seqlens is None:
                cu = torch.tensor([0, input_ids.numel()], device=dev, dtype=torch.int64)
            else:
                validation.check_tensor("cu_seqlens", cu_seqlens, dtypes=validation.INT_DTYPES, ndim=1, device=dev)
                cu = cu_seqlens.to(torch.int64)
            B = cu.numel() - 1
        given = [n for n, x in (("labels", labels), ("prompt_lens", prompt_lens), ("maskable", maskable)) if x is not None]
        if len(given) > 1:
            raise ValueError(f"{given[1]}: give at most one of labels, prompt_lens and maskable (got {', '.join(given)})")
        # Prompt lengths go to the op as they are (no [T] mask to build); with the complement the
        # maskable tokens are then read off the result: the two views partition them.
        direct = prompt_lens is not None and attention_mask is None and self.complementary
        if direct:
            validation.check_tensor("prompt_lens", prompt_lens, dtypes=validation.INT_DTYPES, device=dev)
            m = None
        else:
            m = self._maskable(input_ids, cu, padded, attention_mask, labels, prompt_lens, maskable)

        keys, seq_offset, counts, t, sigma = self._draw(cu, B, sample_ids, dev)
        K = self.block_size
        cu32 = None if padded else cu.to(torch.int32)
        bufs = None if self.pool is None else self.pool.take(
            input_ids, cu_seqlens=cu32, block_size=K, complementary=self.complementary,
            loss_weight=self.loss_weight, num_segments=sigma.numel())
        out = priority_mask(input_ids, sigma, mask_token_id=self.mask_token_id, cu_seqlens=cu32, maskable=m,
                            prompt_lens=prompt_lens if direct else None, priority=priority, weight=self.weight,
                            sampling=self.sampling, complementary=self.complementary, block_size=K, seed=self.seed,
                            seq_offset=seq_offset,
                            sample_ids=keys if sample_ids is not None else None, loss_weight=self.loss_weight,
                            backend=self.backend, out=bufs)
        self.step += 1
        lw = out.loss_weight
        if lw is not None and t is not None:
            # dσ/dt = −α′(t) per segment, broadcast to tokens of every view (in place: lw is this call's).
            factor = (-self.schedule.alpha_prime(t)).to(torch.float32)
            seg = self._segment_of_token(cu, counts, input_ids.shape, padded, dev)
            lw = lw.mul_(factor[seg].repeat((self.views,) + (1,) * (seg.dim() - 1)).reshape(lw.shape))
        if direct:
            n = out.masked.shape[0] // 2
            m = out.masked[:n] | out.masked[n:]
        mv = m.repeat((self.views,) + (1,) * (m.dim() - 1))
        return out._replace(loss_weight=lw, maskable=mv)

    def _draw(self, cu: torch.Tensor, B: int, sample_ids: Optional[torch.Tensor], dev):
        """This call's sequence keys, ``seq_offset``, segments per sequence, times t (None
        without a schedule) and σ per segment (float32 [S])."""
        if sample_ids is not None:
            validation.check_tensor("sample_ids", sample_ids, dtypes=validation.INT_DTYPES, device=dev)
            if sample_ids.numel() != B:
                raise ValueError(f"sample_ids: expected {B} ids (one per sequence), got {sample_ids.numel()}")
            keys, seq_offset = sample_ids.reshape(-1).to(torch.int64), 0
        else:
            if B > KEY_STRIDE:
                raise ValueError(f"input_ids: at most {KEY_STRIDE} sequences per call, got {B}")
            seq_offset = (self.step * self.world_size + self.rank) * KEY_STRIDE
            keys = seq_offset + torch.arange(B, device=dev, dtype=torch.int64)
        lens = cu[1:] - cu[:-1]
        K = self.block_size
        counts = torch.ones_like(lens) if K is None else (lens + K - 1) // K
        u = keyed_uniform(keys, counts, seed=self.seed)
        if self.schedule is not None:
            t = self.schedule.time_from_uniform(u)
            return keys, seq_offset, counts, t, self.schedule.sigma(t).clamp(0.0, 1.0).to(torch.float32)
        sigma = (self.low + (self.high - self.low) * u).clamp(self.low, self.high).to(torch.float32)
        return keys, seq_offset, counts, None, sigma

    def _maskable(self, input_ids, cu, padded, attention_mask, labels, prompt_lens, maskable) -> torch.Tensor:
        dev, shape = input_ids.device, input_ids.shape
        if labels is not None:
            validation.check_tensor("labels", labels, dtypes=validation.INT_DTYPES, device=dev)
            validation.check_shape("labels", labels, tuple(shape))
            m = labels != -100
        elif maskable is not None:
            validation.check_tensor("maskable", maskable, dtypes=(torch.bool,) + validation.INT_DTYPES, device=dev)
            validation.check_shape("maskable", maskable, tuple(shape))
            m = maskable != 0
        elif prompt_lens is not None:
            validation.check_tensor("prompt_lens", prompt_lens, dtypes=validation.INT_DTYPES, device=dev)
            pl = prompt_lens.reshape(-1).to(torch.int64)
            if pl.numel() != cu.numel() - 1:
                raise ValueError(f"prompt_lens: expected {cu.numel() - 1} values (one per sequence), got {pl.numel()}")
            if validation.host_readable(pl):
                validation.check_prompt_lens(pl, cu)  # as the op does when it gets them
            if padded:
                m = torch.arange(shape[1], device=dev)[None, :] >= pl[:, None]
            else:
                lens = cu[1:] - cu[:-1]
                seq = torch.repeat_interleave(torch.arange(lens.numel(), device=dev), lens, output_size=shape[0])
                pos = torch.arange(shape[0], device=dev) - cu[:-1][seq]
                m = pos >= pl[seq]
        else:
            m = torch.ones(shape, dtype=torch.bool, device=dev)
        if attention_mask is not None:
            validation.check_tensor("attention_mask", attention_mask, dtypes=(torch.bool,) + validation.INT_DTYPES, device=dev)
            validation.check_shape("attention_mask", attention_mask, tuple(shape))
            m = m & (attention_mask != 0)
        return m

    def _segment_of_token(self, cu, counts, shape, padded, dev) -> torch.Tensor:
        """int64 like ``input_ids``: the σ segment of each token."""
        K = self.block_size
        if padded:
            B, L = shape
            if K is None:
                return torch.arange(B, device=dev)[:, None].expand(B, L)
            return (torch.arange(B, device=dev)[:, None] * ((L + K - 1) // K)
                    + torch.arange(L, device=dev)[None, :] // K)
        lens = cu[1:] - cu[:-1]
        seq = torch.repeat_interleave(torch.arange(lens.numel(), device=dev), lens, output_size=shape[0])
        if K is None:
            return seq
        first = torch.cumsum(counts, 0) - counts
        pos = torch.arange(shape[0], device=dev) - cu[:-1][seq]
        return first[seq] + pos // K
