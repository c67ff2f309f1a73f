"""Importance weights from the model being trained (``mask.priority`` = ``"loss"``,
``"confidence"`` or ``"mix"``): priority without an annotator.

Every source keeps a **per-token score** ``s_i`` for each training sample in a :class:`TokenScores`
store, keyed by the sample's dataset position (``sample_id mod N``: the key of keyed σ without
its epoch), so the scores follow a sample across reshuffles, epochs and ranks:

* ``"loss"`` (self-paced): ``s_i`` is a running loss, updated from the cross-entropy of every
  masked token (both complementary views) each time the sample is trained:
  ``s_i ← decay·s_i + (1 − decay)·CE_i`` (the first observation is taken as is).
* ``"confidence"``: ``s_i = 1 − p(correct token_i)`` from one extra no-grad forward pass of the
  step's batch with **every answer token masked** (one noisy view; in the block-diffusion layout
  each block is then predicted from the clean blocks before it: the first decoding step of
  every block). Later passes replace the score.
* ``"mix"``: the ``"loss"`` store; the weight below is multiplied by ``mask.weight`` on the
  rule-dense tokens (``w_i = w_model,i · (mask.weight if dense_i else 1)``).

Scores become weights with the **bounded map**, per sample::

    w_i = clip((s_i / mean_s)^γ, w_min, w_max)

the mean over the sample's scored tokens; tokens never scored (and samples with no score, or a
mean of 0) get weight 1. The weights go to ``dm.priority_mask`` as float32 priority (water-filling
per segment, docs/importance.md), so only their ratios within a block matter.

Schedule: the scores are updated on steps ``s`` with ``s % mask.importance_every == 0`` (0-based);
on the other steps the masks read the scores as last updated (no extra pass, no gather).

Ranks: the store is replicated. On an update step every rank all-gathers the (position, score)
pairs of all ranks and applies the same update, so every rank holds the same store; a checksum
is compared across ranks at each checkpoint (a mismatch raises), and rank 0 saves it.

Cost (per step, in ``log.csv`` and the result's ``importance`` dict): ``importance_ms`` (the map,
the store update with its gather, and the confidence pass), ``importance_store_bytes`` and
``importance_peak_bytes`` (the extra forward's peak on CUDA, measured; on the CPU an estimate: the
float32 ``[M, vocab]`` log-probabilities of the extra pass or the per-token CE).
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence

import torch

from ..data.collate import MaskConfig, TrainBatch
from ..data.pack import PackedBatch

__all__ = ["bounded_weights", "TokenScores", "Importance", "fully_masked"]


def bounded_weights(scores: torch.Tensor, lengths: torch.Tensor, *, gamma: float, w_min: float,
                    w_max: float) -> torch.Tensor:
    """The bounded map of per-token scores to importance weights, per sequence.

    ``w_i = clip((s_i / mean_s)^γ, w_min, w_max)`` with the mean over the sequence's scored tokens
    (those that are not NaN). Unscored tokens, and every token of a sequence with no scored token
    or a mean of 0, get 1.

    Parameters
    ----------
    scores : torch.Tensor, float32, [T]
        Per-token scores ≥ 0 of B packed sequences; NaN = never scored.
    lengths : torch.Tensor, int64, [B]
        Sequence lengths (sum T).
    gamma : float
        γ ≥ 0 (0 gives 1 everywhere).
    w_min, w_max : float
        0 < w_min ≤ 1 ≤ w_max.

    Returns
    -------
    torch.Tensor, float32, [T]: finite, in [w_min, w_max] where scored, 1 elsewhere.
    """
    if scores.dim() != 1 or lengths.dim() != 1 or int(lengths.sum()) != scores.numel():
        raise ValueError(f"lengths: must sum to the {scores.numel()} scores, got {int(lengths.sum())}")
    B = lengths.numel()
    seq = torch.repeat_interleave(torch.arange(B, device=scores.device), lengths.to(scores.device))
    s = scores.double()
    seen = ~torch.isnan(s)
    s0 = torch.where(seen, s, torch.zeros_like(s))
    total = torch.zeros(B, dtype=torch.float64, device=s.device).index_add_(0, seq, s0)
    count = torch.zeros(B, dtype=torch.float64, device=s.device).index_add_(0, seq, seen.double())
    mean = (total / count.clamp(min=1.0))[seq]
    ok = seen & (mean > 0)
    ratio = torch.where(ok, s0 / torch.where(ok, mean, torch.ones_like(mean)), torch.ones_like(s))
    w = ratio.pow(gamma).clamp(w_min, w_max)
    return torch.where(ok, w, torch.ones_like(w)).to(torch.float32)


class TokenScores:
    """A per-sample, per-token score store over a fixed training set (float32, NaN = never scored).

    Parameters
    ----------
    lengths : sequence of int
        Token count of each training sequence (dataset position order).
    decay : float
        EMA factor of :meth:`update` (0: replace).

    Attributes
    ----------
    offsets : torch.Tensor, int64, [N+1]
        Sequence ``p``'s tokens are ``scores[offsets[p]:offsets[p+1]]``.
    scores : torch.Tensor, float32, [Σ lengths]
    """

    def __init__(self, lengths: Sequence[int], decay: float):
        lens = torch.as_tensor(list(lengths), dtype=torch.int64)
        self.n = lens.numel()
        self.lengths = lens
        self.offsets = torch.zeros(self.n + 1, dtype=torch.int64)
        self.offsets[1:] = torch.cumsum(lens, 0)
        self.scores = torch.full((int(self.offsets[-1]),), float("nan"), dtype=torch.float32)
        self.decay = float(decay)

    @property
    def nbytes(self) -> int:
        """Bytes held by the store (scores and offsets)."""
        return self.scores.numel() * 4 + self.offsets.numel() * 8

    def positions(self, batch: PackedBatch) -> torch.Tensor:
        """int64 [T] (CPU): the store position of every token of ``batch``, keyed by ``sample_ids mod N``."""
        cu = batch.cu_seqlens.cpu().to(torch.int64)
        lens = cu[1:] - cu[:-1]
        keys = batch.sample_ids.cpu() % self.n
        if not torch.equal(lens, self.lengths[keys]):
            raise ValueError("batch: its sequence lengths differ from the stored samples' (another data set?)")
        T = int(cu[-1])
        local = torch.arange(T, dtype=torch.int64) - torch.repeat_interleave(cu[:-1], lens)
        return torch.repeat_interleave(self.offsets[keys], lens) + local

    def read(self, pos: torch.Tensor) -> torch.Tensor:
        """float32 scores at store positions ``pos`` (NaN where never scored)."""
        return self.scores[pos]

    def update(self, pos: torch.Tensor, values: torch.Tensor) -> None:
        """Fold observations into the store: per position, the mean of this update's values ``v``,
        then ``s ← v`` where unscored, else ``s ← decay·s + (1 − decay)·v`` (float64, stored float32).
        Independent of the order of the pairs up to rounding of repeated positions."""
        if pos.numel() == 0:
            return
        uniq, inv = torch.unique(pos, return_inverse=True)
        total = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, values.double())
        count = torch.bincount(inv, minlength=uniq.numel()).double()
        v = total / count
        old = self.scores[uniq].double()
        new = torch.where(torch.isnan(old), v, self.decay * old + (1.0 - self.decay) * v)
        self.scores[uniq] = new.to(torch.float32)

    def checksum(self) -> List[float]:
        """Two numbers that differ between stores that differ in practice (sum and scored count)."""
        seen = ~torch.isnan(self.scores)
        pos = torch.arange(self.scores.numel(), dtype=torch.float64)
        s = self.scores.double().nan_to_num(0.0)
        return [float((s * (1.0 + pos % 7)).sum()), float(seen.sum())]

    def state_dict(self) -> dict:
        return {"scores": self.scores.clone(), "offsets": self.offsets.clone()}

    def load_state_dict(self, state: dict) -> None:
        offsets, scores = state.get("offsets"), state.get("scores")
        if not isinstance(offsets, torch.Tensor) or not torch.equal(offsets.cpu(), self.offsets):
            raise ValueError("importance: the checkpoint's score store has other sequences than this data")
        if not isinstance(scores, torch.Tensor) or scores.shape != self.scores.shape:
            raise ValueError("importance: the checkpoint's score store has the wrong shape")
        self.scores = scores.detach().cpu().to(torch.float32).clone()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Importance:
    """The model-based priority of one training run (``mask.priority`` in ``loss``, ``confidence``, ``mix``).

    Per step: :meth:`begin_step` (the confidence pass on update steps), :meth:`weights` per
    micro-batch (float32 [T] for ``mask_batch(..., importance=)``), :meth:`observe` after each
    micro-batch's forward (the loss sources record the masked tokens' CE on update steps),
    :meth:`end_step` (gather over ranks, update the store) and :meth:`cost` for the log.

    Parameters
    ----------
    cfg : MaskConfig
    lengths : sequence of int
        Token counts of the training sequences.
    device : torch.device
        The training device.
    mask_token_id : int
        The [MASK] id (the confidence pass).
    all_gather : callable, optional
        ``f(tensor [n, 2] float64) -> tensor [Σn, 2]``: concatenation over ranks in rank order
        (None: one process).
    """

    def __init__(self, cfg: MaskConfig, lengths: Sequence[int], device: torch.device, mask_token_id: int,
                 all_gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if not cfg.model_based:
            raise ValueError(f"mask.priority: {cfg.priority!r} is not a model source")
        self.cfg, self.device, self.all_gather = cfg, device, all_gather
        self.mask_token_id = int(mask_token_id)
        self.store = TokenScores(lengths, cfg.importance_decay if cfg.priority != "confidence" else 0.0)
        self._pending: List[torch.Tensor] = []
        self._updating = False
        self.reset_cost()
        self.total_ms, self.steps, self.peak_max = 0.0, 0, 0

    @property
    def source(self) -> str:
        return self.cfg.priority

    def reset_cost(self) -> None:
        self.ms, self.peak = 0.0, 0

    def updates_at(self, step: int) -> bool:
        """Whether the scores are updated at (0-based) ``step``."""
        return step % self.cfg.importance_every == 0

    # ---- per step -------------------------------------------------------------------------------
    def begin_step(self, step: int, micro: Sequence[PackedBatch], model, forward) -> None:
        """Start ``step``: on update steps of ``"confidence"``, score ``micro`` with one no-grad pass.

        ``forward(model, batch) -> (logits [M, vocab], index [M])`` is the loop's masked forward.
        """
        self.reset_cost()
        self._pending = []
        self._updating = self.updates_at(step)
        if self.source == "confidence" and self._updating:
            t0 = time.perf_counter()
            self._confidence_pass(micro, model, forward)
            self._flush()
            _sync(self.device)
            self.ms += (time.perf_counter() - t0) * 1e3

    def weights(self, batch: PackedBatch) -> torch.Tensor:
        """float32 [T] (CPU) importance weights of ``batch``'s tokens from the store as it is now."""
        t0 = time.perf_counter()
        cu = batch.cu_seqlens.cpu().to(torch.int64)
        c = self.cfg
        w = bounded_weights(self.store.read(self.store.positions(batch)), cu[1:] - cu[:-1],
                            gamma=c.importance_gamma, w_min=c.importance_min, w_max=c.importance_max)
        if self.source == "mix":
            w = torch.where(batch.priority.cpu(), w * torch.tensor(c.weight, dtype=torch.float32), w)
        self.ms += (time.perf_counter() - t0) * 1e3
        return w

    @torch.no_grad()
    def observe(self, packed: PackedBatch, batch: TrainBatch, logits: torch.Tensor, index: torch.Tensor) -> None:
        """Record the CE of ``batch``'s masked tokens (``"loss"``, ``"mix"``, on update steps)."""
        if self.source == "confidence" or not self._updating:
            return
        t0 = time.perf_counter()
        ce = torch.nn.functional.cross_entropy(logits.detach().float(), batch.labels[index], reduction="none")
        self.peak = max(self.peak, self._peak_estimate(logits))
        T = packed.num_tokens
        pos = self.store.positions(packed)[index.cpu() % T]
        self._pending.append(torch.stack([pos.double(), ce.double().cpu()], 1))
        _sync(self.device)
        self.ms += (time.perf_counter() - t0) * 1e3

    def end_step(self) -> None:
        """Gather this step's observations over ranks and fold them into the store."""
        if self.source == "confidence" or not self._updating:
            self._finish_cost()
            return
        t0 = time.perf_counter()
        self._flush()
        self.ms += (time.perf_counter() - t0) * 1e3
        self._finish_cost()

    def _finish_cost(self) -> None:
        self.total_ms += self.ms
        self.steps += 1
        self.peak_max = max(self.peak_max, self.peak)

    def _flush(self) -> None:
        local = torch.cat(self._pending) if self._pending else torch.zeros(0, 2, dtype=torch.float64)
        self._pending = []
        both = self.all_gather(local) if self.all_gather is not None else local
        self.store.update(both[:, 0].to(torch.int64), both[:, 1])

    def _peak_estimate(self, logits: torch.Tensor) -> int:
        """CPU: bytes of a float32 [M, vocab] tensor (the log-probabilities); CUDA: measured elsewhere."""
        return logits.shape[0] * logits.shape[-1] * 4

    @torch.no_grad()
    def _confidence_pass(self, micro: Sequence[PackedBatch], model, forward) -> None:
        from .forward import eval_mode

        cuda = self.device.type == "cuda"
        if cuda:
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        with eval_mode(model):
            for pb in micro:
                b = fully_masked(pb, self.mask_token_id).to(self.device)
                logits, idx = forward(model, b)
                lp = logits.float().log_softmax(-1).gather(1, b.labels[idx].unsqueeze(1)).squeeze(1)
                if not cuda:
                    self.peak = max(self.peak, self._peak_estimate(logits))
                score = (1.0 - lp.exp()).clamp(min=0.0)
                pos = self.store.positions(pb)[idx.cpu() % pb.num_tokens]
                self._pending.append(torch.stack([pos.double(), score.double().cpu()], 1))
                del logits, lp
        if cuda:
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) - base)

    # ---- reporting, checkpoints -----------------------------------------------------------------
    def cost(self) -> dict:
        """This step's cost: ``importance_ms``, ``importance_store_bytes``, ``importance_peak_bytes``."""
        return {"importance_ms": self.ms, "importance_store_bytes": self.store.nbytes,
                "importance_peak_bytes": self.peak}

    def summary(self) -> dict:
        """The run's cost (mean ms per step, store bytes, largest extra peak) and how much is scored."""
        seen = int((~torch.isnan(self.store.scores)).sum())
        return {"source": self.source, "ms_per_step": self.total_ms / self.steps if self.steps else None,
                "store_bytes": self.store.nbytes, "peak_bytes": self.peak_max, "every": self.cfg.importance_every,
                "scored_tokens": seen, "tokens": self.store.scores.numel()}

    def state_dict(self) -> dict:
        return {"source": self.source, **self.store.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise ValueError("importance: the checkpoint has no score store")
        self.store.load_state_dict(state)


def fully_masked(batch: PackedBatch, mask_token_id: int) -> TrainBatch:
    """One noisy view of ``batch`` with every answer token (maskable: past the prompt) masked, in
    the layout of :class:`TrainBatch` (``[x_t | x_0]``, labels at the answer tokens)."""
    cu = batch.cu_seqlens.to(torch.int64)
    lens = cu[1:] - cu[:-1]
    T = batch.num_tokens
    dev = batch.input_ids.device
    seq = torch.repeat_interleave(torch.arange(batch.num_seqs, device=dev), lens)
    local = torch.arange(T, device=dev) - torch.repeat_interleave(cu[:-1], lens)
    answer = local >= batch.prompt_lens[seq]
    ids = batch.input_ids.to(torch.int64)
    noisy = torch.where(answer, torch.full_like(ids, mask_token_id), ids)
    return TrainBatch(input_ids=torch.cat([noisy, ids]), cu_seqlens=batch.cu_seqlens,
                      labels=torch.where(answer, ids, torch.full_like(ids, -100)),
                      loss_weight=answer.to(torch.float32), maskable_per_seq=lens - batch.prompt_lens,
                      seq_of_token=seq, views=1, sample_ids=batch.sample_ids)
