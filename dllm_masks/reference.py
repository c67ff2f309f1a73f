"""The pure-PyTorch reference of ``dllm_masks::priority_mask``: the oracle and the fallback.

Vectorized over tokens and segments (no Python loop over sequences or tokens), on any device.
It takes the op's normalized arguments (see :mod:`dllm_masks.ops`), so every backend is called
the same way and compared with ``torch.equal``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .importance import weighted_masks
from .rates import _solve, bernoulli_thresholds, exact_counts
from .rng import MASK32, STREAM_BERNOULLI, STREAM_SELECT, philox4x32, split_seed

__all__ = ["priority_mask_ref", "LOSS_WEIGHT_MODES"]

LOSS_WEIGHT_MODES = {None: 0, "sigma": 1, "token": 2}
IGNORE_INDEX = -100


def _token_layout(cu_seqlens: torch.Tensor, T: int):
    """Sequence index and in-sequence position of every token of a packed batch."""
    dev = cu_seqlens.device
    cu = cu_seqlens.to(torch.int64)
    tok = torch.arange(T, device=dev, dtype=torch.int64)
    seq = torch.searchsorted(cu[1:], tok, right=True)  # first b with cu[b+1] > t
    pos = tok - cu[seq]
    return cu, seq, pos


def _draws(cu: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, seq_keys: torch.Tensor, stream: int, rng: torch.Tensor) -> torch.Tensor:
    """uint32 draws (int64) of every token, one Philox call per group of four positions."""
    B = cu.numel() - 1
    T = pos.numel()
    lens = cu[1:] - cu[:-1]
    groups = (lens + 3) >> 2
    gstart = torch.zeros(B + 1, dtype=torch.int64, device=cu.device)
    torch.cumsum(groups, 0, out=gstart[1:])
    # Σ ceil(len/4) ≤ T/4 + B: a static bound, so no host sync to size the group array;
    # groups past the real count are computed and never read.
    G = T // 4 + B
    g = torch.arange(G, device=cu.device, dtype=torch.int64)
    gseq = torch.searchsorted(gstart[1:], g, right=True).clamp_(max=max(B - 1, 0))
    quad = g - gstart[gseq]
    keys = seq_keys[gseq]
    k0, k1 = split_seed(rng[0])
    words = torch.stack(
        philox4x32(quad, keys & MASK32, (keys >> 32) & MASK32, torch.full_like(quad, stream), k0, k1), dim=-1
    )
    return words.reshape(-1)[(gstart[seq] + (pos >> 2)) * 4 + (pos & 3)]


def _select_smallest(mk, seg, grp, r, k0, k1, S: int) -> torch.Tensor:
    """Exact sampling (docs/design.md): per (segment, group) the k smallest draws r, ties by
    position, among maskable tokens: one stable sort on a 64-bit key."""
    dev = mk.device
    T = mk.numel()
    gid = torch.where(mk, seg * 2 + grp, torch.full_like(seg, 2 * S))
    order = torch.sort((gid << 32) | r, stable=True).indices
    gcount = torch.zeros(2 * S + 1, dtype=torch.int64, device=dev).index_add_(0, gid, torch.ones_like(gid))
    gstart = torch.cumsum(gcount, 0) - gcount
    rank = torch.empty_like(order)
    rank[order] = torch.arange(T, device=dev, dtype=torch.int64)
    rank = rank - gstart[gid]
    kk = torch.stack([k0, k1], dim=-1).reshape(-1)
    kk = torch.cat([kk, kk.new_zeros(1)])
    return mk & (rank < kk[gid])


def priority_mask_ref(
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    sigma: torch.Tensor,
    priority: Optional[torch.Tensor],
    maskable: Optional[torch.Tensor],
    prompt_lens: Optional[torch.Tensor],
    sample_ids: Optional[torch.Tensor],
    rng: torch.Tensor,
    weight: float,
    block_size: int,
    num_segments: int,
    exact: bool,
    complementary: bool,
    loss_weight_mode: int,
    mask_token_id: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference implementation of ``dllm_masks::priority_mask`` on normalized arguments.

    Parameters
    ----------
    input_ids : int32/int64 [T]
    cu_seqlens : int32 [B+1]
    sigma : float32 [1] or [S]
    priority : bool/uint8 [T], float32 [T] (importance weights, docs/importance.md) or None
    maskable : bool [T] or None
    prompt_lens : int32/int64 [B] or None (never together with ``maskable``)
    sample_ids : int64 [B] or None
    rng : int64 [2], (seed, seq_offset), bits read as uint64 / int64
    weight : float in [0, inf] (1.0 with float32 priority)
    block_size : int, 0 for one segment per sequence
    num_segments : int, S
    exact, complementary : bool
    loss_weight_mode : int, 0 none, 1 sigma, 2 token
    mask_token_id : int

    Returns
    -------
    noisy_ids [V·T] (input dtype), masked bool [V·T], labels int64 [V·T],
    loss_weight float32 [V·T] (or [0] when mode 0), rates float64 [S, 2]; V = 2 if complementary.
    """
    T = input_ids.numel()
    S = num_segments
    cu, seq, pos = _token_layout(cu_seqlens, T)
    mk, seg = _maskable_and_segments(cu, seq, pos, maskable, prompt_lens, block_size)
    sig = sigma.to(torch.float32).expand(S) if sigma.numel() == 1 else sigma.to(torch.float32)
    if sample_ids is not None:
        seq_keys = sample_ids.to(torch.int64)
    else:
        seq_keys = rng[1].to(torch.int64) + torch.arange(cu.numel() - 1, device=cu.device, dtype=torch.int64)
    if priority is not None and priority.is_floating_point():  # importance weights: docs/importance.md
        r = _draws(cu, seq, pos, seq_keys, STREAM_SELECT if exact else STREAM_BERNOULLI, rng)
        seg_first = torch.full((S,), T, dtype=torch.int64, device=cu.device).scatter_reduce_(
            0, seg, torch.arange(T, device=cu.device, dtype=torch.int64), "amin")
        masked, q, rates = weighted_masks(
            priority.to(torch.float32), mk, seg, S, sig, exact, r, seg_first,
            lambda g, k0, k1: _select_smallest(mk, seg, g, r, k0, k1, S))
    else:
        masked, q, rates = _two_level_masks(cu, seq, pos, mk, seg, priority, sig, weight, exact, seq_keys, rng, S)
    if loss_weight_mode == LOSS_WEIGHT_MODES["sigma"]:
        q = sig.to(torch.float64)[seg]
    return _outputs(input_ids, masked, mk, q, complementary, loss_weight_mode, mask_token_id) + (rates,)


def _maskable_and_segments(cu, seq, pos, maskable, prompt_lens, block_size: int):
    """Per token: maskable (bool [T]) and segment index (int64 [T], sequence-major blocks)."""
    if maskable is not None:
        mk = maskable.to(torch.bool)
    elif prompt_lens is not None:
        mk = pos >= prompt_lens.to(torch.int64)[seq]
    else:
        mk = torch.ones(pos.numel(), dtype=torch.bool, device=pos.device)
    if block_size <= 0:
        return mk, seq
    lens = cu[1:] - cu[:-1]
    nblk = (lens - 1) // block_size + 1  # ceil(len / K), 0 for an empty sequence, without overflow
    bstart = torch.zeros(cu.numel(), dtype=torch.int64, device=cu.device)
    torch.cumsum(nblk, 0, out=bstart[1:])
    return mk, bstart[seq] + pos // block_size


def _two_level_masks(cu, seq, pos, mk, seg, priority, sig, weight: float, exact: bool, seq_keys, rng, S: int):
    """View 0's mask (bool [T]), each token's rate (float64 [T]) and the rates [S, 2] of a
    boolean priority (docs/design.md §3, §5)."""
    pr = priority.to(torch.bool) & mk if priority is not None else torch.zeros_like(mk)
    n = torch.zeros(S, dtype=torch.int64, device=mk.device).index_add_(0, seg, mk.to(torch.int64))
    n1 = torch.zeros(S, dtype=torch.int64, device=mk.device).index_add_(0, seg, pr.to(torch.int64))
    rates = _solve(n, n1, sig, float(weight))
    grp = pr.to(torch.int64)  # 0: other, 1: priority
    if exact:
        k0, k1 = exact_counts(n, n1, sig, rates)
        r = _draws(cu, seq, pos, seq_keys, STREAM_SELECT, rng)
        masked = _select_smallest(mk, seg, grp, r, k0, k1, S)
    else:
        thr = bernoulli_thresholds(rates)  # [S, 2]
        r = _draws(cu, seq, pos, seq_keys, STREAM_BERNOULLI, rng)
        masked = mk & (r < thr[seg, grp])
    return masked, rates[seg, grp], rates


def _outputs(input_ids, masked, mk, q, complementary: bool, loss_weight_mode: int, mask_token_id: int):
    """(noisy_ids, masked, labels, loss_weight) over the views, from view 0's mask and the
    per-token rate q (float64 [T]) that the loss weights invert."""
    views = [masked, mk & ~masked] if complementary else [masked]
    masked_all = torch.cat(views)
    ids_all = input_ids.repeat(len(views))
    noisy = torch.where(masked_all, torch.full_like(ids_all, mask_token_id), ids_all)
    labels = torch.where(masked_all, ids_all.to(torch.int64), torch.full_like(ids_all, IGNORE_INDEX, dtype=torch.int64))
    if loss_weight_mode == LOSS_WEIGHT_MODES[None]:
        return noisy, masked_all, labels, torch.empty(0, dtype=torch.float32, device=input_ids.device)
    parts = [torch.where(views[0], 1.0 / q, 0.0)]
    if complementary:
        parts.append(torch.where(views[1], 1.0 / (1.0 - q), 0.0))
    return noisy, masked_all, labels, torch.cat(parts).to(torch.float32)
