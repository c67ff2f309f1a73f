"""The masked-diffusion loss on any :class:`~dllm_masks.MaskedBatch`, padded ``[V·B, L]`` or
packed ``[V·T]``, with the normalizations of the trainers people use.

For the masked tokens i of the noisy views (``labels != -100``) with cross-entropy CE_i and loss
weight w_i (``batch.loss_weight``, or 1 where it is None), the loss is ``Σ_i c_i · CE_i / D``:

==============  ================================  =================================  ==========================
``norm``        c_i                               D                                  used by
==============  ================================  =================================  ==========================
``"masked"``    w_i                               masked tokens                      dFactory (with w = 1)
``"maskable"``  w_i                               maskable tokens of every view      LLaDA pre-training; dllm ``"token"``
``"sequence"``  w_i / maskable tokens of seq(i)   noisy sequences (V·B)              LLaDA SFT; dllm ``"sequence"`` (default)
``"batch"``     w_i                               noisy sequences (V·B)              dllm ``"batch"``
==============  ================================  =================================  ==========================

"Maskable" tokens are those a view could mask (the answer, not the prompt or padding), counted
once per view: a complementary batch masks each answer token exactly once over its two views, so
its ``"maskable"`` D is twice its ``"masked"`` D.

**Accumulation and data parallelism.** D is a count over the whole optimizer step. Pass
``normalizer=`` the step's D summed over every micro-batch and rank (each micro-batch contributes
:func:`loss_normalizer`), and multiply by the world size when the data-parallel wrapper averages
gradients over ranks: the summed gradients then equal one big batch's. Without ``normalizer``,
each call divides by its own D.

**dFactory's mean of micro-batch means.** dFactory averages unweighted CE over each micro-batch's
masked tokens, then averages over micro-batches: ``diffusion_loss(logits, b, norm="masked") / n_micro``
per micro-batch of a masked batch drawn with ``loss_weight=None``.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from . import validation
from .ops import MaskedBatch

__all__ = ["NORMS", "diffusion_loss", "loss_normalizer", "align_logits", "sequence_of_token", "weighted_ce_sum"]

NORMS = {
    "masked": "Σ w·CE / masked tokens (dFactory, with unweighted CE)",
    "maskable": "Σ w·CE / maskable tokens of every view (LLaDA pre-training; dllm 'token')",
    "sequence": "mean over noisy sequences of Σ_seq w·CE / maskable tokens of the sequence (LLaDA SFT; dllm 'sequence')",
    "batch": "Σ w·CE / noisy sequences (dllm 'batch')",
}


def _num_sequences(batch: MaskedBatch) -> int:
    return batch.labels.shape[0] if batch.labels.dim() == 2 else batch.cu_seqlens.numel() - 1


def _need_maskable(batch: MaskedBatch, norm: str) -> torch.Tensor:
    if batch.maskable is None:
        raise ValueError(f"batch: norm={norm!r} needs batch.maskable (dm.Masker fills it; for a priority_mask result "
                         "use batch._replace(maskable=...), the maskable tokens repeated per view)")
    return batch.maskable


def weighted_ce_sum(logits: torch.Tensor, targets: torch.Tensor, weight: Optional[torch.Tensor], *, norm: str,
                    seq: Optional[torch.Tensor] = None,
                    maskable_per_seq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Σ_i c_i · CE_i over M masked tokens (the numerator of every norm).

    Parameters
    ----------
    logits : torch.Tensor, floating, [M, vocab]
        Logits that predict the masked tokens (CE in float32).
    targets : torch.Tensor, int64, [M]
    weight : torch.Tensor, float, [M], or None (w = 1)
    norm : str
        One of :data:`NORMS`; ``"sequence"`` divides each term by its sequence's maskable count.
    seq : torch.Tensor, int64, [M], optional
        Noisy sequence of each token (``"sequence"`` only).
    maskable_per_seq : torch.Tensor, float or int, [sequences], optional
        Maskable tokens of each noisy sequence (``"sequence"`` only).

    Returns
    -------
    torch.Tensor, float32, scalar.
    """
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    coef = weight.float() if weight is not None else torch.ones_like(ce)
    if norm == "sequence":
        if seq is None or maskable_per_seq is None:
            raise ValueError("seq: norm='sequence' needs seq and maskable_per_seq")
        coef = coef / maskable_per_seq.to(coef.dtype).clamp(min=1.0)[seq]
    return (coef * ce).sum()


def loss_normalizer(batch: MaskedBatch, norm: str) -> float:
    """This micro-batch's share of the step's normalizer D (sum it over micro-batches and ranks).

    Parameters
    ----------
    batch : MaskedBatch
    norm : {"masked", "maskable", "sequence", "batch"}

    Returns
    -------
    float (reads the batch on the host).
    """
    validation.check_choice("norm", norm, tuple(NORMS))
    if norm == "masked":
        return float((batch.labels != -100).sum())
    if norm == "maskable":
        return float(_need_maskable(batch, norm).sum())
    return float(_num_sequences(batch))


def sequence_of_token(batch: MaskedBatch) -> torch.Tensor:
    """int64, the shape of ``batch.labels``: the noisy sequence (view-major) each token belongs to."""
    dev = batch.labels.device
    if batch.labels.dim() == 2:
        R, L = batch.labels.shape
        return torch.arange(R, device=dev)[:, None].expand(R, L)
    cu = batch.cu_seqlens.to(dev, torch.int64)
    return torch.repeat_interleave(torch.arange(cu.numel() - 1, device=dev), cu[1:] - cu[:-1],
                                   output_size=batch.labels.numel())


def align_logits(logits: torch.Tensor, batch: MaskedBatch) -> torch.Tensor:
    """Logits laid out like ``batch.labels`` plus a vocabulary axis.

    Accepts logits of the noisy views (``labels.shape + (vocab,)``), or of block-diffusion rows
    ``[view 0 | … | view V−1 | x_0]``: padded ``[B, (V+1)·L, vocab]`` (rows of
    :func:`dllm_masks.blockdiff.attention_mask_4d`) or packed ``[(V+1)·T, vocab]`` (the reference
    loop's layout); the x_0 part is dropped and padded views are put view-major.
    """
    validation.check_tensor("logits", logits, dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64))
    lab = batch.labels
    if tuple(logits.shape[:-1]) == tuple(lab.shape):
        return logits
    if lab.dim() == 2 and logits.dim() == 3:
        VB, L = lab.shape
        B = logits.shape[0]
        if B > 0 and VB % B == 0 and logits.shape[1] == (VB // B + 1) * L:
            nv = VB // B
            x = logits[:, : nv * L].reshape(B, nv, L, -1).transpose(0, 1)
            return x.reshape(VB, L, logits.shape[-1])
    if lab.dim() == 1 and logits.dim() == 2:
        n, clean = lab.numel(), logits.shape[0] - lab.numel()
        if clean > 0 and n % clean == 0:  # [V·T] labels, [(V+1)·T] rows
            return logits[:n]
    raise ValueError(f"logits: shape {tuple(logits.shape)} matches neither the noisy views {tuple(lab.shape)} + (vocab,) "
                     "nor block-diffusion rows [view 0 | ... | x_0]")


def diffusion_loss(
    logits: torch.Tensor,
    batch: MaskedBatch,
    *,
    norm: str,
    shift: bool = False,
    normalizer: Optional[Union[float, torch.Tensor]] = None,
) -> torch.Tensor:
    """Masked-diffusion loss ``Σ_i c_i · CE_i / D`` over the masked tokens of ``batch``.

    Parameters
    ----------
    logits : torch.Tensor, floating, ``batch.labels.shape + (vocab,)``
        The model's logits on the noisy views (or block-diffusion rows, see :func:`align_logits`).
        Cross-entropy is computed in float32.
    batch : MaskedBatch
        From ``dm.Masker`` or ``dm.priority_mask`` (padded ``[V·B, L]`` or packed ``[V·T]``).
    norm : {"masked", "maskable", "sequence", "batch"}
        See the module table (:data:`NORMS`). ``"maskable"`` and ``"sequence"`` need ``batch.maskable``.
    shift : bool
        Next-token-shifted outputs (Dream, DiffuCoder, dFactory ``same_token_labels=False``): the
        token at position j is predicted by the logits at position j − 1 of its sequence; the first
        position of a sequence by its own logits (Dream's convention; it is normally a prompt token,
        never masked).
    normalizer : float or scalar tensor, optional
        The step's D summed over micro-batches and ranks (see :func:`loss_normalizer`); default:
        this batch's own D. A D of 0 counts as 1 (the loss is then 0).

    Returns
    -------
    torch.Tensor, float32, scalar, differentiable w.r.t. ``logits``.
    """
    validation.check_choice("norm", norm, tuple(NORMS))
    if not isinstance(shift, bool):
        raise TypeError(f"shift: expected a bool, got {type(shift).__name__}")
    lg = align_logits(logits, batch)
    vocab = lg.shape[-1]
    flat_labels = batch.labels.reshape(-1)
    idx = torch.nonzero(flat_labels != -100).squeeze(1)
    src = idx
    if shift:
        seq = sequence_of_token(batch).reshape(-1)
        prev = (idx - 1).clamp(min=0)
        src = torch.where((idx > 0) & (seq[prev] == seq[idx]), prev, idx)
    weight = batch.loss_weight.reshape(-1)[idx] if batch.loss_weight is not None else None
    seq = per_seq = None
    if norm == "sequence":
        seq = sequence_of_token(batch).reshape(-1)
        per_seq = torch.zeros(_num_sequences(batch), dtype=torch.float32, device=lg.device)
        per_seq.index_add_(0, seq, _need_maskable(batch, norm).reshape(-1).to(torch.float32))
        seq = seq[idx]
    total = weighted_ce_sum(lg.reshape(-1, vocab)[src], flat_labels[idx], weight, norm=norm, seq=seq,
                            maskable_per_seq=per_seq)
    if normalizer is None:
        if norm == "masked":
            d = torch.tensor(float(idx.numel()), device=lg.device)
        elif norm == "maskable":
            d = _need_maskable(batch, norm).sum().to(torch.float32)
        else:
            d = torch.tensor(float(_num_sequences(batch)), device=lg.device)
    else:
        if isinstance(normalizer, bool) or not isinstance(normalizer, (int, float, torch.Tensor)):
            raise TypeError(f"normalizer: expected a number or a scalar tensor, got {type(normalizer).__name__}")
        d = torch.as_tensor(normalizer, dtype=torch.float32, device=lg.device).reshape(())
    d = d.to(torch.float32)
    return total / torch.where(d > 0, d, torch.ones_like(d))
