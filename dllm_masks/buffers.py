"""``dm.OutputPool``: reused output buffers for ``priority_mask(..., out=...)`` when the shapes
change from call to call (packed batches of varying length, the usual case in training).

``out=`` needs a :class:`~dllm_masks.MaskedBatch` of exactly the call's shapes, and
:func:`~dllm_masks.empty_masked_batch` allocates one. A pool keeps one flat buffer per output
field that only grows, and hands out the leading part of each, viewed in the call's shape (a
prefix of a flat tensor is contiguous, as ``out=`` requires). After a few calls the buffers have
reached the largest batch and no call allocates or first-touches output memory again; that
first touch, not the kernel, set the CPU cost above about 2 MB of output (docs/performance.md).

A batch taken from a pool is overwritten by the next :meth:`OutputPool.take`: copy what must
outlive the step.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from .ops import MaskedBatch, output_layout

__all__ = ["OutputPool"]


class OutputPool:
    """Grow-only output buffers for ``priority_mask(..., out=pool.take(...))``.

    Parameters
    ----------
    growth : float ≥ 1
        A buffer that must grow is reallocated to ``growth`` × the size asked for, so that a
        slowly growing batch size reallocates a few times, not at every call.

    Examples
    --------
    >>> pool = dm.OutputPool()
    >>> for ids, cu, sigma in batches:                       # T changes every step
    ...     out = dm.priority_mask(ids, sigma, cu_seqlens=cu, mask_token_id=MASK, complementary=True,
    ...                            out=pool.take(ids, cu_seqlens=cu, complementary=True))
    """

    def __init__(self, growth: float = 1.25):
        if isinstance(growth, bool) or not isinstance(growth, (int, float)):
            raise TypeError(f"growth: expected a number, got {type(growth).__name__}")
        if not math.isfinite(growth) or growth < 1:
            raise ValueError(f"growth: must be a finite number >= 1, got {growth!r}")
        self.growth = float(growth)
        self._bufs: Dict[Tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
        self.allocations = 0  # buffers (re)allocated so far

    def buffer(self, name: str, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A contiguous tensor of ``shape`` and ``dtype`` from this pool's buffer ``name`` (grown
        as needed); the next request for ``name`` hands out the same memory. :meth:`take` uses
        the names of the :class:`~dllm_masks.MaskedBatch` fields; a caller may keep other names
        for its own per-step tensors."""
        n = math.prod(shape)
        key = (name, dtype, device)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n:
            cap = n if buf is None else max(n, int(n * self.growth))
            buf = torch.empty(cap, dtype=dtype, device=device)
            self._bufs[key] = buf
            self.allocations += 1
        return buf[:n].view(shape)

    def take(self, input_ids: torch.Tensor, *, cu_seqlens: Optional[torch.Tensor] = None,
             block_size: Optional[int] = None, complementary: bool = False, loss_weight: Optional[str] = None,
             num_segments: Optional[int] = None, noisy_ids: Optional[torch.Tensor] = None) -> MaskedBatch:
        """Buffers for one call, with :func:`~dllm_masks.empty_masked_batch`'s arguments and result
        layout (``noisy_ids`` of the input's dtype, ``labels`` int64, ``masked`` bool,
        ``loss_weight`` float32 or None, [V·T] or [V·B, L]; ``rates`` float64 [S, 2];
        ``cu_seqlens`` int32 [V·B + 1] and ``sigma`` float32 [S]).

        The tensors are views into this pool's buffers: the next ``take`` hands out the same
        memory. ``num_segments``: S, to skip counting blocks from ``cu_seqlens`` on the host.
        ``noisy_ids``: a buffer of the caller's to hand out for ``noisy_ids`` instead of one of the
        pool's (e.g. the head of a larger model-input buffer); ``out=`` checks its shape.
        """
        shape, nv, B, S = output_layout(input_ids, cu_seqlens=cu_seqlens, block_size=block_size,
                                        complementary=complementary, loss_weight=loss_weight,
                                        num_segments=num_segments)
        dev = input_ids.device
        return MaskedBatch(
            noisy_ids=self.buffer("noisy_ids", shape, input_ids.dtype, dev) if noisy_ids is None else noisy_ids,
            labels=self.buffer("labels", shape, torch.int64, dev),
            masked=self.buffer("masked", shape, torch.bool, dev),
            loss_weight=None if loss_weight is None else self.buffer("loss_weight", shape, torch.float32, dev),
            cu_seqlens=self.buffer("cu_seqlens", (nv * B + 1,), torch.int32, dev),
            rates=self.buffer("rates", (S, 2), torch.float64, dev),
            sigma=self.buffer("sigma", (S,), torch.float32, dev),
        )

    def nbytes(self) -> int:
        """Bytes held by the pool's buffers."""
        return sum(b.numel() * b.element_size() for b in self._bufs.values())

    def __repr__(self) -> str:
        return f"OutputPool(growth={self.growth}, buffers={len(self._bufs)}, bytes={self.nbytes()})"
