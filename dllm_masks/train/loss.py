"""The masked-diffusion loss: cross-entropy on the masked tokens of the noisy views, times the op's
``loss_weight``, normalized per masked token (dFactory), per maskable token (LLaDA) or per sequence.

A step may span several micro-batches and ranks; the normalizer is the *global* count of the
step, so gradient accumulation and data parallelism give the gradient of one big batch:
``loss_step = Σ_micro Σ_i c_i · CE_i / D`` with ``D`` summed over every micro-batch and rank.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .. import validation as V
from ..data.collate import TrainBatch
from .forward import masked_index

__all__ = ["NORMALIZATIONS", "loss_terms", "normalizer", "masked_index"]

NORMALIZATIONS = {
    "masked": "Σ w·CE / (masked tokens): each masked token counts once (dFactory)",
    "maskable": "Σ w·CE / (maskable tokens of every view): LLaDA's estimator of the NELBO per answer token",
    "sequence": "mean over noisy sequences of Σ_seq w·CE / (maskable tokens of the sequence) (LLaDA's SFT code)",
}


def normalizer(batch: TrainBatch, norm: str) -> float:
    """This micro-batch's share of the step's normalizer D (sum it over micro-batches and ranks)."""
    V.check_choice("train.loss_norm", norm, tuple(NORMALIZATIONS))
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
    norm : {"masked", "maskable", "sequence"}

    Returns
    -------
    (torch.Tensor, scalar float32, differentiable; int M)
    """
    V.check_choice("train.loss_norm", norm, tuple(NORMALIZATIONS))
    target = batch.labels[index]
    ce = F.cross_entropy(logits, target, reduction="none")
    coef = batch.loss_weight[index]
    if norm == "sequence":
        per_seq = batch.maskable_per_seq.clamp(min=1).to(coef.dtype)
        coef = coef / per_seq[batch.seq_of_token[index]]
    return (coef * ce).sum(), index.numel()
