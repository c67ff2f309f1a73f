"""The masked-diffusion loss of the reference loop's packed :class:`TrainBatch`: cross-entropy on
the masked tokens of the noisy views, times the op's ``loss_weight``, with the norms of
:data:`dllm_masks.loss.NORMS` (the numerator is :func:`dllm_masks.loss.weighted_ce_sum`, shared
with :func:`dllm_masks.diffusion_loss`).

A step may span several micro-batches and ranks; the normalizer is the *global* count of the
step, so gradient accumulation and data parallelism give the gradient of one big batch:
``loss_step = Σ_micro Σ_i c_i · CE_i / D`` with ``D`` summed over every micro-batch and rank.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import validation
from ..data.collate import TrainBatch
from ..loss import NORMS, weighted_ce_sum
from .forward import masked_index

__all__ = ["NORMALIZATIONS", "loss_terms", "normalizer", "masked_index"]

NORMALIZATIONS = NORMS


def normalizer(batch: TrainBatch, norm: str) -> float:
    """This micro-batch's share of the step's normalizer D (sum it over micro-batches and ranks)."""
    validation.check_choice("train.loss_norm", norm, tuple(NORMALIZATIONS))
    if norm == "masked":
        return float(batch.num_masked)
    if norm == "maskable":
        return float(batch.num_maskable)
    return float(batch.num_seqs)


def loss_terms(logits: torch.Tensor, batch: TrainBatch, index: torch.Tensor, norm: str) -> Tuple[torch.Tensor, int]:
    """Σ_i c_i · CE_i over the masked tokens of a micro-batch (divide by the step's normalizer).

    Parameters
    ----------
    logits : torch.Tensor, float32, [M, V]
        The model's logits at ``index``.
    batch : TrainBatch
    index : torch.Tensor, int64, [M]
        From :func:`masked_index`.
    norm : {"masked", "maskable", "sequence", "batch"}

    Returns
    -------
    (torch.Tensor, scalar float32, differentiable; int M)
    """
    validation.check_choice("train.loss_norm", norm, tuple(NORMALIZATIONS))
    total = weighted_ce_sum(logits, batch.labels[index], batch.loss_weight[index], norm=norm,
                            seq=batch.seq_of_token[index], maskable_per_seq=batch.maskable_per_seq)
    return total, index.numel()
