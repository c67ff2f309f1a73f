"""Recipes for dllm-style and dFactory-style training code, on ``dm.Masker`` and
``dm.diffusion_loss`` (pure torch: no framework import).

dllm (``MDLMTrainer`` / ``BD3LMTrainer``, both ``transformers.Trainer``)
    Each sequence draws t = ε + (1 − ε)·u and masks its answer tokens with probability
    1 − α(t); masked tokens weigh −α′(t)/(1 − α(t)) (``loss_weight_type="scheduler"``) or 1
    (``"uniform"``); the sum is normalized by ``loss_normalization_type``: ``"batch"`` (/ B),
    ``"sequence"`` (/ the sequence's answer tokens, / B) or ``"token"`` (/ all answer tokens).
    BD3LM feeds ``[x_t | x_0]`` with the block-diffusion mask, one t per *sequence*. The same
    loss through this library: :func:`dllm_masker` + :func:`dllm_loss` (or
    ``DiffusionTrainer(masker=dllm_masker(...), loss_norm=DLLM_NORMS[...])``).

dFactory (per-example SFT transform)
    Each example is tokenized and padded to ``max_seq_len``; labels are −100 on the prompt and
    padding; one noise level per example, uniform in ``noise_range`` (0.3, 0.8), masks the answer
    tokens; labels stay only on masked tokens; with ``same_token_labels=False`` labels shift one
    position left (the logits at i predict token i + 1). The loss is the unweighted CE averaged
    over the micro-batch's labelled tokens, then averaged over micro-batches. The same with
    priority masking: :func:`dfactory_sft_transform` and ``diffusion_loss(norm="masked")``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from .. import validation
from ..blockdiff import attention_mask_4d, position_ids_4d
from ..loss import diffusion_loss
from ..masker import Masker
from ..ops import MaskedBatch
from ..schedules import Schedule

__all__ = ["DLLM_NORMS", "dllm_masker", "dllm_loss", "dfactory_sft_transform", "bidirectional_mask_4d", "model_inputs"]

#: dllm's ``loss_normalization_type`` → ``diffusion_loss(norm=...)``.
DLLM_NORMS = {"batch": "batch", "sequence": "sequence", "token": "maskable"}


def bidirectional_mask_4d(key_padding_mask: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Full (bidirectional) attention over real tokens, [B, 1, L, L]; a padding query attends
    itself only. ``dtype``: bool (True = attend) or floating (additive 0 / −inf)."""
    real = key_padding_mask != 0
    L = real.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=real.device)
    m = ((real[:, None, :] & real[:, :, None]) | (eye[None] & ~real[:, :, None]))[:, None]
    if dtype == torch.bool:
        return m
    return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))


def model_inputs(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], batch: MaskedBatch, *,
                 block_size: Optional[int] = None, dtype: torch.dtype = torch.bool) -> Dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` (4-D) / ``position_ids`` for an HF-style model.

    Parameters
    ----------
    input_ids : torch.Tensor, int64, [B, L]
        The clean batch.
    attention_mask : torch.Tensor, [B, L], optional
        1 on real tokens.
    batch : MaskedBatch
        Its padded views ``[V·B, L]``.
    block_size : int, optional
        None: MDLM, the V·B noisy rows with bidirectional attention ([V·B, L] inputs). K: block
        diffusion, B rows ``[view 0 | … | view V−1 | x_0]`` ([B, (V+1)·L] inputs).
    dtype : torch.dtype
        Mask dtype: bool (SDPA) or the model's floating dtype (eager attention).
    """
    B, L = input_ids.shape
    nv = batch.noisy_ids.shape[0] // max(B, 1)
    attn = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if block_size is None:
        return {"input_ids": batch.noisy_ids, "attention_mask": bidirectional_mask_4d(attn.repeat(nv, 1), dtype),
                "position_ids": torch.arange(L, device=input_ids.device)[None].expand(nv * B, L)}
    views = batch.noisy_ids.reshape(nv, B, L).transpose(0, 1).reshape(B, nv * L)
    return {"input_ids": torch.cat([views, input_ids], dim=1),
            "attention_mask": attention_mask_4d(B, L, block_size, views=nv, key_padding_mask=attn, dtype=dtype,
                                                device=input_ids.device),
            "position_ids": position_ids_4d(B, L, views=nv, device=input_ids.device)}


def dllm_masker(mask_token_id: int, *, scheduler: str = "linear", time_epsilon: float = 1e-3,
                loss_weight_type: str = "scheduler", weight: float = 1.0, complementary: bool = False,
                seed: int = 0, **kwargs) -> Masker:
    """A :class:`Masker` that draws dllm's noise: t = ε + (1 − ε)·u per sequence, σ = 1 − α(t).

    Parameters
    ----------
    scheduler : {"linear", "cosine"}
        dllm's ``LinearAlphaScheduler`` / ``CosineAlphaScheduler``.
    time_epsilon : float
        dllm's ``time_epsilon`` (the schedule's eps).
    loss_weight_type : {"scheduler", "uniform"}
        −α′(t)/(1 − α(t)) per masked token, or 1.
    weight : float
        Priority weight (1: dllm's uniform masking).
    **kwargs
        Passed to :class:`Masker` (``block_size`` for per-block σ, ``rank``, ...).
    """
    validation.check_choice("loss_weight_type", loss_weight_type, ("scheduler", "uniform"))
    sch = Schedule(scheduler, eps=time_epsilon)
    return Masker(mask_token_id, sigma=sch, loss_weight="sigma" if loss_weight_type == "scheduler" else None,
                  weight=weight, complementary=complementary, seed=seed, **kwargs)


def dllm_loss(model, inputs: Dict[str, torch.Tensor], masker: Masker, *, loss_normalization_type: str = "sequence",
              block_size: Optional[int] = None, right_shift_logits: bool = False,
              normalizer=None) -> torch.Tensor:
    """The body of a dllm ``compute_loss`` with the masker's masks.

    Parameters
    ----------
    model : callable(input_ids=, attention_mask=, position_ids=) → object with ``.logits``
    inputs : dict
        ``input_ids`` [B, L], ``labels`` [B, L] (−100 on prompt/padding), optional
        ``attention_mask`` and ``priority``.
    masker : Masker
    loss_normalization_type : {"batch", "sequence", "token"}
    block_size : int, optional
        BD3LM's attention block size (None: MDLM).
    right_shift_logits : bool
        dllm's ``right_shift_logits`` (next-token-shifted models).
    normalizer : optional
        The step's global normalizer (see ``dm.loss_normalizer``); default: this batch's.
    """
    validation.check_choice("loss_normalization_type", loss_normalization_type, tuple(DLLM_NORMS))
    ids = inputs["input_ids"]
    mb = masker(ids, labels=inputs["labels"], attention_mask=inputs.get("attention_mask"),
                priority=inputs.get("priority"))
    logits = model(**model_inputs(ids, inputs.get("attention_mask"), mb, block_size=block_size)).logits
    return diffusion_loss(logits, mb, norm=DLLM_NORMS[loss_normalization_type], shift=right_shift_logits,
                          normalizer=normalizer)


def dfactory_sft_transform(input_ids: Sequence[int], prompt_len: int, *, masker: Masker, max_seq_len: int,
                           pad_token_id: int, sample_id: int, same_token_labels: bool = True,
                           priority: Optional[Sequence[int]] = None) -> Dict[str, torch.Tensor]:
    """One SFT example the way dFactory's data transform shapes it, masked by ``masker``.

    Parameters
    ----------
    input_ids : sequence of int
        The tokenized conversation (prompt then answer).
    prompt_len : int
        Tokens of the prompt (never masked, never labelled).
    masker : Masker
        E.g. ``Masker(mask_id, sigma=(0.3, 0.8), loss_weight=None, weight=w)`` (dFactory's
        ``noise_range`` with priority weight w). Its σ is drawn per example from ``sample_id``.
    max_seq_len : int
        Truncate, then pad to this length (dFactory pads to ``max_seq_len``).
    pad_token_id : int
    sample_id : int
        The example's key: its masks depend on (masker seed, sample_id) only.
    same_token_labels : bool
        True: ``labels[i]`` is the target of position i. False: next-token shift, ``labels[i]``
        is the target of position i + 1 (the last position gets −100).
    priority : sequence of int, optional
        1 on information-dense tokens.

    Returns
    -------
    dict of tensors, each [V, max_seq_len] (V = 2 with a complementary masker, else 1):
    ``input_ids`` (noisy, int64), ``labels`` (int64, −100 where not masked), ``attention_mask``
    (int64), ``clean_input_ids`` (int64, for block-diffusion rows), ``loss_weight`` (float32, 0
    where not masked; 1 where the masker has ``loss_weight=None``).
    """
    n_max = validation.check_int("max_seq_len", max_seq_len, low=1)
    ids = list(input_ids)[:n_max]
    n = len(ids)
    p = min(validation.check_int("prompt_len", prompt_len, low=0), n)
    x = torch.full((1, n_max), validation.check_int("pad_token_id", pad_token_id), dtype=torch.int64)
    x[0, :n] = torch.tensor(ids, dtype=torch.int64)
    attn = torch.zeros(1, n_max, dtype=torch.int64)
    attn[0, :n] = 1
    maskable = attn.bool().clone()
    maskable[0, :p] = False
    prio = None
    if priority is not None:
        prio = torch.zeros(1, n_max, dtype=torch.bool)
        prio[0, :n] = torch.tensor([int(v) != 0 for v in list(priority)[:n]])
    out = masker(x, maskable=maskable, priority=prio, sample_ids=torch.tensor([sample_id]))
    labels = out.labels
    lw = out.loss_weight if out.loss_weight is not None else out.masked.to(torch.float32)
    if not same_token_labels:
        pad = torch.full_like(labels[:, :1], -100)
        labels = torch.cat([labels[:, 1:], pad], dim=1)
        lw = torch.cat([lw[:, 1:], torch.zeros_like(lw[:, :1])], dim=1)
    nv = out.noisy_ids.shape[0]
    return {"input_ids": out.noisy_ids, "labels": labels, "attention_mask": attn.repeat(nv, 1),
            "clean_input_ids": x.repeat(nv, 1), "loss_weight": lw}
