"""One forward pass of a diffusion LM on a masked batch, shared by training, held-out evaluation,
the fill-in example and the quality harness: batch → block-diffusion layout → attention → model
logits at the masked positions."""
from __future__ import annotations

import contextlib
from contextlib import nullcontext
from typing import Iterator, Tuple

import torch

from ..blockdiff import BlockDiffAttention, training_layout
from ..data.collate import TrainBatch

__all__ = ["masked_index", "masked_forward", "eval_mode", "autocast_for"]


def masked_index(batch: TrainBatch) -> torch.Tensor:
    """int64 [M]: indices (into ``batch.input_ids``) of the masked tokens of the noisy views."""
    return torch.nonzero(batch.labels != -100).squeeze(1)


def autocast_for(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked for, else a no-op context."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def masked_forward(model, batch: TrainBatch, *, block_size: int, attention: str,
                   autocast=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits of ``model`` at the masked tokens of ``batch``.

    Parameters
    ----------
    model : callable ``model(input_ids, attention, index) -> logits`` (DiffusionLM, HFDiffusionLM)
    batch : TrainBatch
        Packed ``[x_t views | x_0]`` rows with their ``cu_seqlens`` and ``views``.
    block_size : int
        Block-diffusion block size K of the layout.
    attention : str
        Attention implementation (``dllm_masks.blockdiff.ATTENTION_MODES``).
    autocast : context manager, optional
        Entered around the model call (e.g. :func:`autocast_for`).

    Returns
    -------
    (logits : float, [M, vocab]; index : int64, [M]) with ``index = masked_index(batch)``.
    """
    layout = training_layout(batch.cu_seqlens, block_size, views=batch.views)
    idx = masked_index(batch)
    with autocast if autocast is not None else nullcontext():
        logits = model(batch.input_ids, BlockDiffAttention(layout, attention), idx)
    return logits, idx


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model.eval()`` inside the block, the model's previous train/eval mode restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
