"""Run configuration: nested dataclasses read from JSON (or a dict), every key checked.

A config file is JSON with the sections below; any key left out takes its default, an unknown
key is an error, and keys that start with ``_`` are comments. ``--set section.key=value`` on the command line overrides one (the value is
read as JSON when it parses, else as a string).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Union

from .. import validation
from ..data.collate import MaskConfig
from .loss import NORMALIZATIONS
from .model import ModelConfig

__all__ = ["DataConfig", "OptimConfig", "EvalConfig", "TrainConfig", "load_config", "apply_overrides",
           "TRAJECTORY_EXEMPT"]


@dataclass
class DataConfig:
    """Where the samples come from and how they become packed batches.

    Attributes
    ----------
    source : str or list
        ``"path.jsonl"``, ``"hf:PATH"`` (a ``datasets`` folder saved to disk), ``"bundled"`` or a
        list of records (``prompt``, ``answer``, optional ``spans``, ``domain``).
    split : str, optional
        Split of a ``datasets`` source.
    eval_source : str or list, optional
        Held-out samples; else ``eval_fraction`` of ``source`` is held out.
    eval_fraction : float
        Share of ``source`` held out for evaluation (seeded), when there is no ``eval_source``.
    tokenizer : str
        ``"deepseek"``, a ``tokenizer.json`` path or folder, or ``"hf:PATH"``.
    eos_token, mask_token : str, optional
        Override the detected special tokens.
    compact_vocab : bool
        Keep only the token ids the data uses (tiny models on a CPU).
    max_length : int
        Longest sequence (prompt + answer + eos, after rounding); longer samples are dropped.
    round_to_block : bool
        Pad each sequence with ``<eos>`` up to a multiple of ``mask.block_size`` (LLaDA 2.0).
    token_budget : int
        Most clean tokens per packed micro-batch (the model sees (V+1)× as many).
    batch_size : int
        Samples per optimizer step, over all ranks (micro-batches accumulate gradients).
    num_workers : int
        DataLoader workers (masking runs there with ``mask.device="worker"``).
    annotate : dict, optional
        ``{"code": 0.1, "math": 0.5}``: annotate that seeded fraction of each domain with the
        rule extractors (:mod:`dllm_masks.extract`), and drop the spans of the other samples.
        None: use the spans the data carries.
    target_rho : float or dict, optional
        Density budget of the annotated samples' rule spans, measured in answer tokens
        (:mod:`dllm_masks.extract.budget`): a share in (0, 1], or ``{"code": .., "math": ..}``.
        Needs ``annotate``. ``python -m dllm_masks.extract.calibrate`` finds the budget that
        reproduces a mean ρ. None: every rule span.
    """

    source: Union[str, List[Any]] = "bundled"
    split: Optional[str] = None
    eval_source: Optional[Union[str, List[Any]]] = None
    eval_fraction: float = 0.0
    tokenizer: str = "deepseek"
    eos_token: Optional[str] = None
    mask_token: Optional[str] = None
    compact_vocab: bool = False
    max_length: int = 2048
    round_to_block: bool = True
    token_budget: int = 4096
    batch_size: int = 16
    num_workers: int = 0
    annotate: Optional[Dict[str, float]] = None
    target_rho: Optional[Union[float, Dict[str, float]]] = None

    def __post_init__(self):
        if not 0.0 <= float(self.eval_fraction) < 1.0:
            raise ValueError(f"data.eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        validation.check_int("data.max_length", self.max_length, low=1)
        validation.check_int("data.token_budget", self.token_budget, low=1)
        validation.check_int("data.batch_size", self.batch_size, low=1)
        validation.check_int("data.num_workers", self.num_workers, low=0)
        if self.token_budget < self.max_length:
            raise ValueError(f"data.token_budget: {self.token_budget} is below data.max_length = {self.max_length}; "
                             "the longest sequence must fit a micro-batch")
        if self.annotate is not None:
            if not isinstance(self.annotate, dict):
                raise TypeError(f"data.annotate: expected a dict domain -> fraction, got {type(self.annotate).__name__}")
            for k, v in self.annotate.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise ValueError(f"data.annotate: fraction of {k!r} must be in [0, 1], got {v!r}")
        if self.target_rho is not None:
            from ..extract.budget import target_for

            if self.annotate is None:
                raise ValueError("data.target_rho: needs data.annotate (the budget selects among rule spans)")
            for dom in ("code", "math"):
                target_for(self.target_rho, dom, "data.target_rho")


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay; gradient clipping.

    Attributes
    ----------
    lr : float
        Peak learning rate.
    min_lr_ratio : float
        Cosine floor as a fraction of ``lr``.
    warmup_steps : int
    weight_decay : float
        On matrices only (not norms).
    betas : list of two floats
    eps : float
    clip_grad : float
        Max global gradient norm; 0 disables clipping.
    """

    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: float = 1.0

    def __post_init__(self):
        for name in ("lr", "eps"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"optim.{name}: must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        validation.check_int("optim.warmup_steps", self.warmup_steps, low=0)
        if self.weight_decay < 0 or self.clip_grad < 0:
            raise ValueError("optim.weight_decay / optim.clip_grad: must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas: expected two floats in [0, 1), got {self.betas}")


@dataclass
class EvalConfig:
    """What to measure on the held-out samples.

    Attributes
    ----------
    every : int
        Held-out diffusion loss every this many steps (0: only at the end, when there is data).
    max_samples : int
        Held-out samples in the loss (0: all).
    generate : int
        Held-out samples to decode at the end and score (math exact match, code pass@1).
    generate_train : int
        Training samples to decode and score as well (what the model memorized; reported apart).
    gen_length : int
        Most answer tokens to generate.
    steps_per_block : int
        Denoising steps T per block (the paper: 32).
    temperature : float
        0: greedy (LLaDA's default for evaluation).
    code_timeout : float
        Seconds per HumanEval program in the sandbox.
    show : int
        Generations printed at the end.
    """

    every: int = 0
    max_samples: int = 64
    generate: int = 0
    generate_train: int = 0
    gen_length: int = 128
    steps_per_block: int = 32
    temperature: float = 0.0
    code_timeout: float = 5.0
    show: int = 3

    def __post_init__(self):
        for name in ("every", "max_samples", "generate", "generate_train", "show"):
            validation.check_int(f"eval.{name}", getattr(self, name), low=0)
        validation.check_int("eval.gen_length", self.gen_length, low=1)
        validation.check_int("eval.steps_per_block", self.steps_per_block, low=1)
        if self.temperature < 0 or self.code_timeout <= 0:
            raise ValueError("eval.temperature must be >= 0 and eval.code_timeout > 0")


@dataclass
class TrainConfig:
    """A whole run.

    Attributes
    ----------
    run_dir : str
        Logs (``log.csv``, ``loss.png``, TensorBoard when installed), checkpoints, ``result.json``.
    seed : int
        Model init, data order, σ and masks all follow from it.
    max_steps : int
        Optimizer steps (the cosine schedule ends there).
    loss_norm : {"masked", "maskable", "sequence", "batch"}
    device : {"auto", "cpu", "cuda"}
    bf16 : bool
        bf16 autocast on CUDA (ignored on CPU).
    threads : int
        ``torch.set_num_threads`` (0: leave torch's default).
    log_every : int
        Progress-bar refresh and TensorBoard cadence (the CSV gets every step).
    ckpt_every : int
        Checkpoint every this many steps (0: only at the end); the last one is always written.
    keep_ckpts : int
        Complete checkpoints kept on disk.
    progress : bool
    data, mask, model, optim, eval : the sections above.
    """

    run_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 100
    loss_norm: str = "masked"
    device: str = "auto"
    bf16: bool = True
    threads: int = 0
    log_every: int = 1
    ckpt_every: int = 0
    keep_ckpts: int = 2
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if not isinstance(self.run_dir, str) or not self.run_dir:
            raise TypeError("run_dir: expected a non-empty string")
        validation.check_int("seed", self.seed)
        validation.check_int("max_steps", self.max_steps, low=1)
        validation.check_choice("loss_norm", self.loss_norm, tuple(NORMALIZATIONS))
        validation.check_choice("device", self.device, ("auto", "cpu", "cuda"))
        for name in ("threads", "ckpt_every"):
            validation.check_int(name, getattr(self, name), low=0)
        validation.check_int("log_every", self.log_every, low=1)
        validation.check_int("keep_ckpts", self.keep_ckpts, low=1)
        if self.data.max_length > self.model.max_position:
            raise ValueError(f"model.max_position: {self.model.max_position} is below data.max_length = "
                             f"{self.data.max_length}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build and check a config from a (possibly partial) nested dict."""
        return _build(cls, d, "")


# Keys that do not change the training trajectory: a resumed run may differ in them.
TRAJECTORY_EXEMPT = {"run_dir", "log_every", "ckpt_every", "keep_ckpts", "progress", "threads", "eval",
                     "data.num_workers", "mask.device", "data.eval_source", "device", "bf16"}

_SECTIONS = {"data": DataConfig, "mask": MaskConfig, "model": ModelConfig, "optim": OptimConfig, "eval": EvalConfig}


def _build(cls, d, prefix: str):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise TypeError(f"{prefix or 'config'}: expected a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in d.items() if not (isinstance(k, str) and k.startswith("_"))}  # "_comment" keys
    unknown = sorted(set(d) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ValueError(f"{where}{unknown[0]}: unknown config key (known: {', '.join(sorted(names))})")
    kw = {}
    for k, v in d.items():
        if cls is TrainConfig and k in _SECTIONS:
            v = _build(_SECTIONS[k], v, k)
        kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise TypeError(f"{prefix or 'config'}: {e}") from None


def apply_overrides(d: dict, overrides: List[str]) -> dict:
    """Apply ``section.key=value`` strings to a config dict (values parsed as JSON when possible)."""
    d = copy.deepcopy(d)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        node = d
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set: {key!r} goes through a non-section")
        node[parts[-1]] = val
    return d


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> TrainConfig:
    """Read a JSON config file (or start from the defaults), apply overrides, check everything."""
    d: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"--config: no such file {path!r}")
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"--config: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return TrainConfig.from_dict(apply_overrides(d, overrides or []))
