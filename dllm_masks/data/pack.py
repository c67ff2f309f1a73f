"""Packing tokenized samples into varlen micro-batches, and the seeded plan of which samples each
optimizer step trains on (the same on every rank, sharded per rank)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import List, Sequence, Tuple

import torch

from .. import validation
from .tokenize import TokenizedSample

__all__ = ["PackedBatch", "pack", "StepPlan"]


@dataclass
class PackedBatch:
    """B sequences packed into one varlen batch (flash-attn's convention).

    Attributes
    ----------
    input_ids : torch.Tensor, int64, [T]
    cu_seqlens : torch.Tensor, int32, [B+1]
    prompt_lens : torch.Tensor, int64, [B]
    priority : torch.Tensor, bool, [T]
    sample_ids : torch.Tensor, int64, [B]
        Mask keys (``epoch · N + index``): masks do not depend on packing, order or rank.
    indices : torch.Tensor, int64, [B]
        Positions of the sequences in the tokenized dataset.
    """

    input_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    prompt_lens: torch.Tensor
    priority: torch.Tensor
    sample_ids: torch.Tensor
    indices: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        return PackedBatch(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))

    def pin_memory(self) -> "PackedBatch":
        """Page-locked copies (``DataLoader(pin_memory=True)`` calls this)."""
        return PackedBatch(*(getattr(self, f.name).pin_memory() for f in fields(self)))


def _pack_one(seqs: Sequence[TokenizedSample], sample_ids: Sequence[int]) -> PackedBatch:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    cat = lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dt)  # noqa: E731
    return PackedBatch(
        input_ids=cat([s.ids for s in seqs], torch.int64),
        cu_seqlens=cu,
        prompt_lens=torch.tensor([s.prompt_len for s in seqs], dtype=torch.int64),
        priority=cat([s.priority for s in seqs], torch.bool),
        sample_ids=torch.tensor(list(sample_ids), dtype=torch.int64),
        indices=torch.tensor([s.index for s in seqs], dtype=torch.int64),
    )


def pack(seqs: Sequence[TokenizedSample], sample_ids: Sequence[int], token_budget: int) -> List[PackedBatch]:
    """Pack sequences into micro-batches of at most ``token_budget`` tokens (first-fit decreasing).

    Parameters
    ----------
    seqs : sequence of TokenizedSample
    sample_ids : sequence of int
        One mask key per sequence.
    token_budget : int
        Most tokens (of the clean sequences) per micro-batch.

    Returns
    -------
    list of PackedBatch; every sequence lands in exactly one. Deterministic for equal inputs.
    """
    budget = validation.check_int("token_budget", token_budget, low=1)
    if len(seqs) != len(sample_ids):
        raise ValueError(f"sample_ids: expected {len(seqs)} keys, one per sequence, got {len(sample_ids)}")
    order = sorted(range(len(seqs)), key=lambda k: (-len(seqs[k]), k))
    bins: List[List[int]] = []
    room: List[int] = []
    for k in order:
        n = len(seqs[k])
        if n > budget:
            raise ValueError(f"token_budget: a sequence of {n} tokens does not fit a budget of {budget} "
                             "(raise the budget or lower data.max_length)")
        for b, r in enumerate(room):
            if n <= r:
                bins[b].append(k)
                room[b] -= n
                break
        else:
            bins.append([k])
            room.append(budget - n)
    return [_pack_one([seqs[k] for k in b], [sample_ids[k] for k in b]) for b in bins]


class StepPlan:
    """The samples of every optimizer step: ``batch_size`` draws per step from a stream of seeded
    epoch permutations, identical on every rank and for every resume.

    Draw ``i = step · batch_size + k`` is dataset position ``perm_e[i mod N]`` of epoch
    ``e = i // N``, with mask key ``sample_id = e · N + position``, so a sample seen again in a
    later epoch gets fresh masks. Rank r of W takes draws ``k ≡ r (mod W)``.

    Parameters
    ----------
    num_samples : int
        N, the size of the tokenized dataset.
    batch_size : int
        Global samples per optimizer step.
    seed : int
    world_size, rank : int
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, *, world_size: int = 1, rank: int = 0):
        self.n = validation.check_int("num_samples", num_samples, low=1)
        self.batch_size = validation.check_int("batch_size", batch_size, low=1)
        self.seed = validation.check_int("seed", seed)
        self.world_size = validation.check_int("world_size", world_size, low=1)
        self.rank = validation.check_int("rank", rank, low=0, high=self.world_size - 1)
        if self.batch_size < self.world_size:
            raise ValueError(f"batch_size: {self.batch_size} samples per step cannot feed {self.world_size} ranks")

    @lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> torch.Tensor:
        """int64 [N]: the order of epoch ``epoch``."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (1 << 63))
        return torch.randperm(self.n, generator=g)

    def global_batch(self, step: int) -> Tuple[List[int], List[int]]:
        """(dataset positions, sample ids) of the ``batch_size`` draws of ``step``."""
        pos, sid = [], []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            e, j = divmod(i, self.n)
            p = int(self.permutation(e)[j])
            pos.append(p)
            sid.append(e * self.n + p)
        return pos, sid

    def shard(self, step: int) -> Tuple[List[int], List[int]]:
        """(dataset positions, sample ids) of this rank's share of ``step``."""
        pos, sid = self.global_batch(step)
        return pos[self.rank::self.world_size], sid[self.rank::self.world_size]

    def epoch_of(self, step: int) -> float:
        """Epochs completed at the start of ``step``."""
        return step * self.batch_size / self.n
