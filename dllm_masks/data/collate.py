"""Masking packed batches for block-diffusion SFT, on the CPU in DataLoader workers or on the GPU in
the training step: both give the same masks (the op is bit-identical across backends for the
same seed and ``sample_ids``, and σ is drawn per sample key, not per batch)."""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import torch

from .. import validation
from ..buffers import OutputPool
from ..ops import priority_mask
from ..schedules import STREAM_SIGMA, keyed_sigma
from .pack import PackedBatch, StepPlan, pack
from .tokenize import TokenizedSample

__all__ = ["MaskConfig", "keyed_sigma", "TrainBatch", "mask_batch", "StepDataset", "STREAM_SIGMA",
           "PRIORITY_SOURCES", "MODEL_SOURCES"]

# Where the per-token priority of the masks comes from (``mask.priority``).
PRIORITY_SOURCES = ("rules", "none", "loss", "confidence", "mix")
# The sources whose weights come from the model being trained (float32 priority from the training loop).
MODEL_SOURCES = ("loss", "confidence", "mix")


def _check_float(name: str, x, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> float:
    """``x`` as a finite float in the interval; errors name ``name``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {type(x).__name__} {x!r}")
    x = float(x)
    below = x <= low if low_open else x < low
    above = x >= high if high_open else x > high
    if x != x or below or above or x in (float("inf"), float("-inf")):
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name}: must be a finite number in {lo}, {hi}, got {x!r}")
    return x


@dataclass
class MaskConfig:
    """How training batches are noised (the paper's defaults).

    Attributes
    ----------
    weight : float
        w: priority tokens are w times as likely to be masked (paper: 2; 1 = uniform baseline).
    complementary : bool
        Train the logical-NOT view in the same batch (paper: True).
    sigma_low, sigma_high : float
        σ_t ~ U[low, high] (paper and dFactory: [0.3, 0.8]).
    block_size : int
        Block-diffusion block size (paper: 32).
    sigma_per_block : bool
        One σ per block (BD3-LM's choice) rather than one per sequence (dFactory draws one σ
        per sample).
    sampling : {"bernoulli", "exact"}
    loss_weight : {"sigma", "token", None}
        Per-token loss weights from the op (1/σ and 1/(1−σ) by default).
    device : {"worker", "step"}
        Mask in the data pipeline on the CPU, or in the step on the training device. The model
        sources of ``priority`` need the step (the training loop switches to it and says so).
    priority : {"rules", "none", "loss", "confidence", "mix"}
        Source of the per-token priority. ``"rules"``: the samples' dense spans (bool priority,
        ``weight``). ``"none"``: no priority, uniform masking (spans ignored, ``weight`` unused).
        ``"loss"``: self-paced, from a running per-token loss of each sample;
        ``"confidence"``: from ``1 − p(correct token)`` of a no-grad pass with the whole answer
        masked; ``"mix"``: the loss weights times ``weight`` on the dense spans. The model
        sources give the op float32 weights (``dllm_masks.train.importance``).
    importance_gamma : float
        γ ≥ 0 of the bounded map ``w_i = clip((s_i / mean_s)^γ, importance_min, importance_max)``
        (0: uniform).
    importance_min, importance_max : float
        Bounds of the map: ``importance_min`` in (0, 1], ``importance_max`` in [1, 1e6].
    importance_every : int
        Update the per-token scores every this many steps (steps ``s`` with ``s % every == 0``);
        the other steps read the scores as last updated.
    importance_decay : float
        EMA factor in [0, 1) of the running loss: ``ℓ ← decay·ℓ + (1 − decay)·CE`` each time a
        token is scored (0: the last loss only).
    """

    weight: float = 2.0
    complementary: bool = True
    sigma_low: float = 0.3
    sigma_high: float = 0.8
    block_size: int = 32
    sigma_per_block: bool = True
    sampling: str = "bernoulli"
    loss_weight: Optional[str] = "sigma"
    device: str = "worker"
    priority: str = "rules"
    importance_gamma: float = 1.0
    importance_min: float = 0.25
    importance_max: float = 4.0
    importance_every: int = 1
    importance_decay: float = 0.5

    def __post_init__(self):
        validation.check_weight(self.weight)
        self.complementary = validation.check_bool("mask.complementary", self.complementary)
        self.sigma_per_block = validation.check_bool("mask.sigma_per_block", self.sigma_per_block)
        for name in ("sigma_low", "sigma_high"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
                raise ValueError(f"mask.{name}: must be a float in [0, 1], got {x!r}")
        if self.sigma_low > self.sigma_high:
            raise ValueError(f"mask.sigma_low: must be <= sigma_high, got {self.sigma_low} > {self.sigma_high}")
        validation.check_int("mask.block_size", self.block_size, low=1)
        validation.check_choice("mask.sampling", self.sampling, ("bernoulli", "exact"))
        validation.check_choice("mask.loss_weight", self.loss_weight, ("sigma", "token", None))
        validation.check_choice("mask.device", self.device, ("worker", "step"))
        validation.check_choice("mask.priority", self.priority, PRIORITY_SOURCES)
        self.importance_gamma = _check_float("mask.importance_gamma", self.importance_gamma, 0.0, 100.0)
        self.importance_min = _check_float("mask.importance_min", self.importance_min, 0.0, 1.0, low_open=True)
        self.importance_max = _check_float("mask.importance_max", self.importance_max, 1.0, 1e6)
        try:
            validation.check_int("mask.importance_every", self.importance_every, low=1)
        except TypeError as e:
            raise ValueError(str(e)) from None
        self.importance_decay = _check_float("mask.importance_decay", self.importance_decay, 0.0, 1.0,
                                             high_open=True)
        if self.priority == "mix" and self.weight == float("inf"):
            raise ValueError("mask.weight: must be finite with mask.priority='mix' (it multiplies float weights)")

    @property
    def model_based(self) -> bool:
        """Whether the priority comes from the model being trained (``loss``, ``confidence``, ``mix``)."""
        return self.priority in MODEL_SOURCES

    @property
    def views(self) -> int:
        return 2 if self.complementary else 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainBatch:
    """A masked micro-batch in the block-diffusion layout of :func:`dllm_masks.blockdiff.training_layout`.

    Attributes
    ----------
    input_ids : torch.Tensor, int64, [(V+1)·T]
        The V noisy views, then the clean sequence.
    cu_seqlens : torch.Tensor, int32, [B+1]
        Offsets of the clean documents.
    labels : torch.Tensor, int64, [V·T]
        Original id at masked positions of the noisy views, −100 elsewhere.
    loss_weight : torch.Tensor, float32, [V·T]
        The op's per-token weight (1 at masked positions when the op returns none, 0 elsewhere).
    maskable_per_seq : torch.Tensor, int64, [V·B]
        Maskable (answer + eos) tokens of each noisy sequence.
    seq_of_token : torch.Tensor, int64, [V·T]
        Noisy sequence (view-major) of each noisy token.
    views : int
    sample_ids : torch.Tensor, int64, [B]
    """

    input_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    labels: torch.Tensor
    loss_weight: torch.Tensor
    maskable_per_seq: torch.Tensor
    seq_of_token: torch.Tensor
    views: int
    sample_ids: torch.Tensor

    @property
    def num_masked(self) -> int:
        return int((self.labels != -100).sum())

    @property
    def num_maskable(self) -> int:
        return int(self.maskable_per_seq.sum())

    @property
    def num_seqs(self) -> int:
        return self.maskable_per_seq.numel()

    def to(self, device, non_blocking: bool = False) -> "TrainBatch":
        kw = {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
              for k, v in self.__dict__.items()}
        return TrainBatch(**kw)

    def pin_memory(self) -> "TrainBatch":
        """Page-locked copies (``DataLoader(pin_memory=True)`` calls this)."""
        return TrainBatch(**{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})


def mask_batch(batch: PackedBatch, cfg: MaskConfig, *, mask_token_id: int, seed: int,
               device=None, backend: Optional[str] = None, importance: Optional[torch.Tensor] = None,
               pool: Optional[OutputPool] = None) -> TrainBatch:
    """Noise one packed batch with complementary priority masking.

    Parameters
    ----------
    batch : PackedBatch
    cfg : MaskConfig
    mask_token_id : int
    seed : int
        The run's mask seed (σ draws and the op share it, on different Philox streams).
    device : torch.device, optional
        Where to mask (default: where ``batch`` is); the result lives there.
    backend : str, optional
        Force a ``priority_mask`` backend (tests).
    importance : torch.Tensor, float32, [T], optional
        Per-token weights of a model source (``cfg.priority`` in ``"loss"``, ``"confidence"``,
        ``"mix"``; required there, refused otherwise), from
        :class:`dllm_masks.train.importance.Importance`: the op's float priority (weight 1.0).
    pool : OutputPool, optional
        Write the op's outputs and the model input into this pool's reused buffers (no
        allocation once grown): the result is then overwritten by the next call with the same
        pool, so use one pool per micro-batch of a step, and never across a DataLoader queue.

    Returns
    -------
    TrainBatch
    """
    if cfg.priority in MODEL_SOURCES:
        if importance is None:
            raise ValueError(f"importance: mask.priority={cfg.priority!r} takes float32 weights from the training "
                             "loop (dllm_masks.train.importance); pass them as importance=")
        validation.check_tensor("importance", importance, dtypes=(torch.float32,), ndim=1)
        if importance.numel() != batch.num_tokens:
            raise ValueError(f"importance: expected {batch.num_tokens} weights, one per token, got {importance.numel()}")
        priority, weight = importance, 1.0
    elif importance is not None:
        raise ValueError(f"importance: mask.priority={cfg.priority!r} takes no float weights")
    elif cfg.priority == "none":
        priority, weight = None, 1.0
    else:
        priority, weight = batch.priority, cfg.weight
    if device is not None:
        batch = batch.to(device)
    if priority is not None:
        priority = priority.to(batch.input_ids.device)
    K = cfg.block_size if cfg.sigma_per_block else None
    sigma = keyed_sigma(batch.sample_ids, batch.cu_seqlens, low=cfg.sigma_low, high=cfg.sigma_high, seed=seed,
                        block_size=K)
    views = cfg.views
    ids, bufs, model_in = batch.input_ids, None, None
    if pool is not None:
        # the model input [(V+1)·T]: the op writes the V noisy views into its head, the clean
        # ids are copied behind them (no torch.cat)
        T = ids.numel()
        model_in = pool.buffer("model_input_ids", ((views + 1) * T,), torch.int64, ids.device)
        head = model_in[:views * T] if ids.dtype == torch.int64 else None  # else the op writes ids' dtype
        bufs = pool.take(ids, cu_seqlens=batch.cu_seqlens, block_size=K, complementary=cfg.complementary,
                         loss_weight=cfg.loss_weight, num_segments=sigma.numel(), noisy_ids=head)
    out = priority_mask(ids, sigma, mask_token_id=mask_token_id, cu_seqlens=batch.cu_seqlens,
                        prompt_lens=batch.prompt_lens, priority=priority, weight=weight,
                        sampling=cfg.sampling, complementary=cfg.complementary, block_size=K, seed=seed,
                        sample_ids=batch.sample_ids, loss_weight=cfg.loss_weight, backend=backend, out=bufs)
    if model_in is None:
        model_in = torch.cat([out.noisy_ids.to(torch.int64), ids])
    else:
        if head is None:
            model_in[:views * T].copy_(out.noisy_ids)
        model_in[views * T:].copy_(ids)
    lw = out.loss_weight if out.loss_weight is not None else out.masked.to(torch.float32)
    lens = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).to(torch.int64)
    maskable = (lens - batch.prompt_lens).repeat(views)
    seq = torch.repeat_interleave(torch.arange(views * batch.num_seqs, device=lens.device), lens.repeat(views))
    return TrainBatch(
        input_ids=model_in,
        cu_seqlens=batch.cu_seqlens,
        labels=out.labels,
        loss_weight=lw,
        maskable_per_seq=maskable,
        seq_of_token=seq,
        views=views,
        sample_ids=batch.sample_ids,
    )


class StepDataset(torch.utils.data.Dataset):
    """Item ``i`` = this rank's micro-batches of optimizer step ``start + i``.

    Use with ``DataLoader(ds, batch_size=None, num_workers=...)``: with ``cfg.device == "worker"``
    the masking runs in the workers on the CPU; with ``"step"`` the items are unmasked
    :class:`PackedBatch` es for :func:`mask_batch` on the training device.

    Parameters
    ----------
    seqs : list of TokenizedSample
    plan : StepPlan
    cfg : MaskConfig
    token_budget : int
        Most clean tokens per micro-batch.
    mask_token_id, seed : int
    start, stop : int
        Optimizer steps ``[start, stop)``.
    """

    def __init__(self, seqs: Sequence[TokenizedSample], plan: StepPlan, cfg: MaskConfig, *, token_budget: int,
                 mask_token_id: int, seed: int, start: int = 0, stop: int = 0):
        self.seqs, self.plan, self.cfg = seqs, plan, cfg
        self.token_budget, self.mask_token_id, self.seed = token_budget, mask_token_id, seed
        self.start, self.stop = start, max(start, stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def packed(self, step: int) -> List[PackedBatch]:
        """This rank's unmasked micro-batches of optimizer step ``step``."""
        pos, sid = self.plan.shard(step)
        return pack([self.seqs[p] for p in pos], sid, self.token_budget)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        step = self.start + i
        micro = self.packed(step)
        if self.cfg.device == "worker":
            micro = [mask_batch(b, self.cfg, mask_token_id=self.mask_token_id, seed=self.seed) for b in micro]
        return step, micro

