"""The reference block-diffusion SFT loop: ``train(config) -> result``.

One optimizer step trains on ``data.batch_size`` samples drawn from seeded epoch permutations,
split across ranks and packed into micro-batches under ``data.token_budget``; each micro-batch
is noised with complementary priority masking (σ per block in [0.3, 0.8], w = 2 by default) and
fed in the block-diffusion layout ``[x_t views | x_0]``. The loss is normalized by the step's
global count (all micro-batches, all ranks), so gradient accumulation and DDP reproduce one big
batch. Everything random follows from ``seed`` and the step, so a resumed run continues
bit-identically on the same machine and thread count.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist

from ..data.collate import MaskConfig, StepDataset, TrainBatch, mask_batch
from ..data.dataset import SFTData, build_data
from ..data.pack import StepPlan, pack
from . import checkpoint as ck
from .config import TRAJECTORY_EXEMPT, TrainConfig
from .logs import RunLog, plot_loss
from .forward import autocast_for, eval_mode, masked_forward
from .importance import Importance
from .loss import loss_terms, normalizer
from .model import build_model

__all__ = ["train", "lr_at", "config_fingerprint", "heldout_metrics", "heldout_mask_config"]

log = logging.getLogger("dllm_masks")

EVAL_KEY_OFFSET = 1 << 40  # mask keys of held-out samples, apart from any training key


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to the floor."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, cfg.max_steps - o.warmup_steps)
    t = min(1.0, (step - o.warmup_steps) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "hf_config" and k != "annotate":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_fingerprint(cfg: TrainConfig) -> dict:
    """The config keys that shape the training trajectory (a resume must match them all)."""
    flat = _flatten(cfg.to_dict())
    out = {}
    for k, v in flat.items():
        if k in TRAJECTORY_EXEMPT or k.split(".")[0] in TRAJECTORY_EXEMPT:
            continue
        text = json.dumps(v, sort_keys=True, default=str)
        out[k] = v if len(text) <= 200 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return json.loads(json.dumps(out, default=str))


class _Env:
    """Rank, world size and device; joins a torchrun process group when launched by one."""

    def __init__(self, cfg: TrainConfig):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        want = cfg.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but CUDA is not available")
        self.device = torch.device(f"cuda:{local}" if want == "cuda" else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True
        if self.world > 1 and dist.get_world_size() != self.world:
            raise ValueError(f"WORLD_SIZE={self.world} but the process group has {dist.get_world_size()} ranks")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values):
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    def all_gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``rows`` (float64 [n_r, k], on the CPU) in rank order."""
        if self.world == 1:
            return rows
        x = rows.to(self.device)
        n = torch.tensor([x.shape[0]], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        m = max(int(t) for t in sizes)
        buf = torch.zeros((m,) + tuple(x.shape[1:]), dtype=x.dtype, device=self.device)
        buf[: x.shape[0]] = x
        outs = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(outs, buf)
        return torch.cat([o[: int(k)] for o, k in zip(outs, sizes)]).cpu()

    def same_everywhere(self, values) -> bool:
        """Whether every rank holds the same ``values`` (floats)."""
        if self.world == 1:
            return True
        hi = torch.tensor(values, dtype=torch.float64, device=self.device)
        lo = -hi
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MAX)
        return bool(torch.equal(hi, -lo))

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.owns_group:
            dist.destroy_process_group()


def _forward(model, b: TrainBatch, cfg: TrainConfig, device, block_size: int):
    return masked_forward(model, b, block_size=block_size, attention=cfg.model.attention,
                          autocast=autocast_for(device, cfg.bf16))


EVAL_SEED = 0x5EED  # held-out masks are the same for every run, whatever its seed or masking recipe


def heldout_mask_config(cfg: TrainConfig) -> MaskConfig:
    """The masking of the held-out metrics: the run's σ range and blocks, but uniform (w = 1) and
    complementary (every answer token is scored exactly once), so that runs with different
    weights, complement settings or seeds are measured on identical masks."""
    m = cfg.mask
    return MaskConfig(weight=1.0, complementary=True, sigma_low=m.sigma_low, sigma_high=m.sigma_high,
                      block_size=m.block_size, sigma_per_block=m.sigma_per_block, sampling="bernoulli",
                      loss_weight=m.loss_weight)


@torch.no_grad()
def heldout_metrics(model, data: SFTData, cfg: TrainConfig, device, max_samples: Optional[int] = None) -> dict:
    """Held-out diffusion loss and masked-token accuracy on fixed masks (see :func:`heldout_mask_config`).

    Returns
    -------
    dict: ``loss`` (normalized like training, ``cfg.loss_norm``), ``acc`` (top-1 accuracy over the
    masked tokens), ``dense_acc`` / ``other_acc`` (the same over information-dense tokens / the
    rest; None where there are none), ``tokens``; empty without held-out data.
    """
    seqs = data.eval[: (max_samples or None)]
    if not seqs:
        return {}
    mcfg = heldout_mask_config(cfg)
    with eval_mode(model):
        keys = [EVAL_KEY_OFFSET + s.index for s in seqs]
        total, denom = 0.0, 0.0
        hits = torch.zeros(2, dtype=torch.int64)
        count = torch.zeros(2, dtype=torch.int64)
        for pb in pack(seqs, keys, cfg.data.token_budget):
            b = mask_batch(pb, mcfg, mask_token_id=data.tokenizer.mask_id, seed=EVAL_SEED, device=device)
            logits, idx = _forward(model, b, cfg, device, mcfg.block_size)
            s, _ = loss_terms(logits, b, idx, cfg.loss_norm)
            total += float(s)
            denom += normalizer(b, cfg.loss_norm)
            right = (logits.argmax(-1) == b.labels[idx]).cpu()
            dense = pb.priority.repeat(b.views)[idx.cpu()].long()
            hits += torch.bincount(dense[right], minlength=2)
            count += torch.bincount(dense, minlength=2)
        frac = lambda h, n: float(h) / float(n) if n else None  # noqa: E731
        return {"loss": total / max(denom, 1.0), "acc": frac(hits.sum(), count.sum()),
                "dense_acc": frac(hits[1], count[1]), "other_acc": frac(hits[0], count[0]),
                "tokens": int(count.sum())}


def _check_resume(state: dict, path: str, cfg: TrainConfig, data: SFTData) -> None:
    old = state.get("fingerprint")
    if not isinstance(old, dict):
        raise ck.CheckpointError(f"checkpoint {path}: has no config fingerprint (written by another program?)")
    new = config_fingerprint(cfg)
    # a key the checkpoint predates matches when it holds its default (options added later keep the
    # old behaviour at their defaults)
    default = config_fingerprint(TrainConfig())
    old = {**{k: default[k] for k in new if k not in old and k in default}, **old}
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k, "<absent>") != new.get(k, "<absent>")]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in diff[:6])
        raise ck.CheckpointError(f"checkpoint {path}: written by a run with another config ({shown}); "
                                 "resume with the same config, or use another run_dir")
    if state.get("data_digest") != data.digest:
        raise ck.CheckpointError(f"checkpoint {path}: the training data or tokenizer changed since it was written "
                                 "(digest mismatch); resume with the same data, or use another run_dir")


def train(config, *, stop_after: Optional[int] = None, resume: bool = True, progress: Optional[bool] = None,
          echo: Optional[Callable[[str], None]] = None, evaluate: bool = True,
          evaluators: Sequence[Callable[..., dict]] = ()) -> dict:
    """Train (or resume) a block-diffusion SFT run.

    Parameters
    ----------
    config : TrainConfig, dict or str
        A config object, a (partial) nested dict, or a JSON file path.
    stop_after : int, optional
        Leave after this many optimizer steps in total (with a checkpoint), as if interrupted;
        the schedule still runs to ``max_steps``. Resuming continues from there.
    resume : bool
        Continue from the newest complete checkpoint in ``run_dir/checkpoints`` if there is one
        (a checkpoint from another config or other data is refused). False: start afresh
        (existing checkpoints of the run dir are removed).
    progress : bool, optional
        Progress bars (default: ``config.progress``).
    echo : callable, optional
        Receives status lines (default: ``print`` on rank 0 when progress is on, else nothing).
    evaluate : bool
        Run the held-out loss at the end, then each of ``evaluators``.
    evaluators : sequence of callables ``f(model, data, cfg, device, *, progress) -> dict``
        Run on rank 0 after a finished run; their dicts update the result. The generation
        evaluation of ``config.eval`` is :func:`dllm_masks.eval.generation.after_training`
        (the training loop does not import the evaluation package).

    Returns
    -------
    dict
        ``final_loss`` (mean training loss of the last ≤ 10 steps), ``last_loss``, ``steps``,
        ``start_step``, ``losses`` (per step, this invocation), ``eval_loss``, ``heldout`` (the
        dict of :func:`heldout_metrics`: loss, masked-token accuracy overall, on dense tokens and on
        the rest), ``metrics``
        (``math_accuracy``, ``code_pass@1``, counts), ``generations``, ``wall_s``,
        ``train_s``, ``tokens_per_s``, ``run_dir``, ``log_csv``, ``plot``, ``checkpoint``,
        ``dropped_samples``, ``world_size``, ``priority`` (``mask.priority``), ``importance`` (None,
        or for a model source the dict of
        :meth:`dllm_masks.train.importance.Importance.summary`: ``source``, ``ms_per_step``,
        ``store_bytes``, ``peak_bytes``, ``every``, ``scored_tokens``, ``tokens``).
    """
    from tqdm.auto import tqdm

    if isinstance(config, str):
        from .config import load_config

        cfg = load_config(config)
    else:
        cfg = TrainConfig.from_dict(config) if isinstance(config, dict) else config
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, dict or path, got {type(config).__name__}")
    if stop_after is not None and not 1 <= stop_after:
        raise ValueError(f"stop_after: must be >= 1, got {stop_after}")
    t_wall = time.perf_counter()
    show = cfg.progress if progress is None else progress
    env = _Env(cfg)
    show = show and env.main
    say = echo or (print if show else (lambda *_: None))
    if not env.main:
        say = lambda *_: None  # noqa: E731
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        run = _setup(cfg, env, resume=resume, stop_after=stop_after, show=show, say=say)
        run.t_wall = t_wall
        losses, t_train = _run_steps(run, tqdm)
        return _finish(run, losses, t_train, t_wall, evaluators=evaluators if evaluate else None)
    finally:
        env.close()


@dataclass
class _Run:
    """What set-up builds for the steps and the finish of one :func:`train` call."""

    cfg: TrainConfig
    env: "_Env"
    data: SFTData
    model: torch.nn.Module
    ddp: torch.nn.Module
    opt: torch.optim.Optimizer
    plan: StepPlan
    loader: torch.utils.data.DataLoader
    start: int
    end: int
    n_params: int
    ckpt_dir: str
    show: bool
    say: Callable[[str], None]
    importance: Optional[Importance] = None  # the model-based priority (mask.priority loss/confidence/mix)
    t_wall: float = 0.0  # perf_counter() when train() was called
    last_path: Optional[str] = None  # the newest checkpoint written
    tokens: int = 0  # tokens trained on by this call


def _build_model_and_optimizer(cfg: TrainConfig, data: SFTData, device):
    mcfg = cfg.model
    tok = data.tokenizer
    if mcfg.vocab_size == 0:
        from dataclasses import replace

        mcfg = replace(mcfg, vocab_size=tok.vocab_size)
    elif mcfg.vocab_size < tok.vocab_size:
        raise ValueError(f"model.vocab_size: {mcfg.vocab_size} is below the tokenizer's {tok.vocab_size} ids")
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    return mcfg, model, opt


def _check_folders(run_dir: str, ckpt_dir: str) -> None:
    """Refuse at start-up a run dir or checkpoint folder that exists as something else than a folder
    (it would fail at the first checkpoint otherwise)."""
    for name, path in (("run_dir", run_dir), ("checkpoints", ckpt_dir)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ck.CheckpointError(f"{name}: {path} exists and is not a folder; move it away or choose another run_dir")


def _resume_point(cfg: TrainConfig, env: "_Env", data: SFTData, model, opt, ckpt_dir: str, resume: bool, say,
                  importance: Optional[Importance] = None) -> int:
    """Clean the checkpoint folder, load the newest checkpoint when resuming; the step to start at."""
    _check_folders(cfg.run_dir, ckpt_dir)
    if env.main:
        os.makedirs(cfg.run_dir, exist_ok=True)
        stale = ck.remove_stale_temporaries(ckpt_dir)
        if stale:
            say(f"removed {len(stale)} incomplete checkpoint write(s) left by a killed run")
        if not resume:
            for _, p in ck.list_checkpoints(ckpt_dir):
                os.unlink(p)
    env.barrier()
    found = ck.latest_checkpoint(ckpt_dir) if resume else None
    if found is None:
        return 0
    _, path = found
    state = ck.load_checkpoint(path, map_location=env.device)
    _check_resume(state, path, cfg, data)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    if importance is not None:
        if "importance" not in state:
            raise ck.CheckpointError(f"checkpoint {path}: has no importance score store (mask.priority="
                                     f"{cfg.mask.priority!r} needs one)")
        try:
            importance.load_state_dict(state["importance"])
        except ValueError as e:
            raise ck.CheckpointError(f"checkpoint {path}: {e}") from None
    say(f"resuming from {path} (step {int(state['step'])})")
    return int(state["step"])


def _setup(cfg: TrainConfig, env: "_Env", *, resume: bool, stop_after: Optional[int], show: bool, say) -> _Run:
    """Data, model, optimizer, resume point and the step loader of a run."""
    device = env.device
    if cfg.mask.model_based and cfg.mask.device != "step":
        cfg = replace(cfg, mask=replace(cfg.mask, device="step"))
        log.info("dllm_masks: mask.priority=%r: masking runs in the training step (mask.device='step'), "
                 "where the importance scores live", cfg.mask.priority)
        say(f"mask.priority={cfg.mask.priority!r}: masking in the training step (mask.device='step'), "
            "where the importance scores live")
    data = build_data(cfg.data, cfg.mask.block_size, cfg.seed, progress=show, log=say)
    tok = data.tokenizer
    mcfg, model, opt = _build_model_and_optimizer(cfg, data, device)
    importance = None
    if cfg.mask.model_based:
        importance = Importance(cfg.mask, [len(s) for s in data.train], device, tok.mask_id,
                                all_gather=env.all_gather_rows if env.world > 1 else None)
    ckpt_dir = os.path.join(cfg.run_dir, "checkpoints")
    start = _resume_point(cfg, env, data, model, opt, ckpt_dir, resume, say, importance)
    if env.main:
        with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)
    env.barrier()

    plan = StepPlan(len(data.train), cfg.data.batch_size, cfg.seed, world_size=env.world, rank=env.rank)
    end = cfg.max_steps if stop_after is None else min(cfg.max_steps, stop_after)
    ds = StepDataset(data.train, plan, cfg.mask, token_budget=cfg.data.token_budget, mask_token_id=tok.mask_id,
                     seed=cfg.seed, start=start, stop=end)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=cfg.data.num_workers,
                                         pin_memory=device.type == "cuda")
    ddp = model
    if env.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    n_params = sum(p.numel() for p in model.parameters())
    if start == 0:
        say(f"model: {n_params / 1e6:.2f}M parameters ({mcfg.n_layers} layers, d={mcfg.d_model}), vocab "
            f"{tok.vocab_size}; data: {len(data.train)} train / {len(data.eval)} held-out sequences"
            + (f", {data.dropped} longer than {cfg.data.max_length} dropped" if data.dropped else "")
            + f"; {env.world} rank(s) on {device.type}")
    return _Run(cfg, env, data, model, ddp, opt, plan, loader, start, end, n_params, ckpt_dir, show, say,
                importance=importance)


def _step(run: _Run, step: int, micro: list) -> dict:
    """One optimizer step over the micro-batches of ``step``; its loss and counts (summed over ranks)."""
    cfg, env, device = run.cfg, run.env, run.env.device
    mask_id = run.data.tokenizer.mask_id
    imp, packed = run.importance, micro
    if imp is not None:
        imp.begin_step(step, micro, run.model, lambda m, b: _forward(m, b, cfg, device, cfg.mask.block_size))
    if cfg.mask.device == "step":
        micro = [mask_batch(b, cfg.mask, mask_token_id=mask_id, seed=cfg.seed, device=device,
                            importance=imp.weights(b) if imp is not None else None) for b in micro]
    else:
        micro = [b.to(device, non_blocking=True) for b in micro]
    lr = lr_at(step, cfg)
    for g in run.opt.param_groups:
        g["lr"] = lr
    local = [sum(normalizer(b, cfg.loss_norm) for b in micro), sum(b.num_masked for b in micro),
             sum(b.cu_seqlens.numel() - 1 for b in micro), sum(int(b.cu_seqlens[-1]) for b in micro)]
    denom, n_masked, n_seqs, n_tok = env.all_sum(local)
    denom = max(denom, 1.0)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, b in enumerate(micro):
        sync = i == len(micro) - 1
        ctx = run.ddp.no_sync() if (env.world > 1 and not sync) else nullcontext()
        with ctx:
            logits, idx = _forward(run.ddp, b, cfg, device, cfg.mask.block_size)
            s, _ = loss_terms(logits, b, idx, cfg.loss_norm)
            (s * (env.world / denom)).backward()
        if imp is not None:
            imp.observe(packed[i], b, logits, idx)
        del logits
        loss_sum += s.detach().double()
    if imp is not None:
        imp.end_step()
    params = run.model.parameters
    gnorm = (torch.nn.utils.clip_grad_norm_(params(), cfg.optim.clip_grad) if cfg.optim.clip_grad > 0 else
             torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params() if p.grad is not None])))
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    loss = env.all_sum([float(loss_sum)])[0] / denom
    if not math.isfinite(loss):
        raise FloatingPointError(f"step {step + 1}: the loss is {loss}; lower optim.lr or check the data")
    out = {"loss": loss, "lr": lr, "grad_norm": float(gnorm), "tokens": int(n_tok), "masked": int(n_masked),
           "seqs": int(n_seqs), "micro_batches": len(micro)}
    if imp is not None:
        out.update(imp.cost())
    return out


def _run_steps(run: _Run, tqdm):
    """The step loop: log, evaluate and checkpoint on schedule. Returns (losses, training seconds)."""
    cfg, env, plan = run.cfg, run.env, run.plan
    runlog = RunLog(cfg.run_dir, run.start, tensorboard=True) if env.main else None
    losses, tokens, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=run.end - run.start, desc="train", disable=not run.show, unit="step", dynamic_ncols=True)
    run.model.train()
    try:
        for step, micro in run.loader:
            m = _step(run, step, micro)
            losses.append(m["loss"])
            tokens += m["tokens"]
            done = step + 1
            ev = {}
            if cfg.eval.every and done % cfg.eval.every == 0 and run.data.eval and env.main:
                ev = heldout_metrics(run.model, run.data, cfg, env.device, cfg.eval.max_samples)
            if runlog is not None:
                runlog.write({"step": done, "loss": f"{m['loss']:.6f}",
                              "eval_loss": f"{ev['loss']:.6f}" if ev else None,
                              "eval_acc": f"{ev['acc']:.4f}" if ev else None,
                              "lr": f"{m['lr']:.6g}", "grad_norm": f"{m['grad_norm']:.4f}", "tokens": m["tokens"],
                              "masked": m["masked"], "seqs": m["seqs"], "micro_batches": m["micro_batches"],
                              "epoch": f"{plan.epoch_of(done):.3f}",
                              "elapsed_s": f"{time.perf_counter() - run.t_wall:.2f}",
                              "importance_ms": f"{m['importance_ms']:.3f}" if "importance_ms" in m else None,
                              "importance_store_bytes": m.get("importance_store_bytes"),
                              "importance_peak_bytes": m.get("importance_peak_bytes")})
            bar.update(1)
            if done % cfg.log_every == 0 or done == run.end:
                bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}", epoch=f"{plan.epoch_of(done):.1f}")
            if done == run.end or (cfg.ckpt_every and done % cfg.ckpt_every == 0):
                run.last_path = _save(cfg, env, run.model, run.opt, done, run.data, run.ckpt_dir, run.importance)
    finally:
        bar.close()
        if runlog is not None:
            runlog.close()
    run.tokens = tokens
    return losses, time.perf_counter() - t0


def _finish(run: _Run, losses: list, t_train: float, t_wall: float, *, evaluators) -> dict:
    """The result dict; held-out loss and ``evaluators`` (None: no evaluation) after a finished run;
    ``result.json`` and the loss plot."""
    cfg, env, data, model = run.cfg, run.env, run.data, run.model
    result = {"run_dir": cfg.run_dir, "start_step": run.start, "steps": run.start + len(losses), "losses": losses,
              "final_loss": (sum(losses[-10:]) / len(losses[-10:])) if losses else None,
              "last_loss": losses[-1] if losses else None, "params": run.n_params, "world_size": env.world,
              "train_s": t_train, "tokens_per_s": run.tokens / t_train if t_train > 0 else None,
              "dropped_samples": data.dropped, "checkpoint": run.last_path,
              "log_csv": os.path.join(cfg.run_dir, "log.csv"), "eval_loss": None, "heldout": {}, "metrics": {},
              "generations": [], "fill_in": "", "plot": None, "priority": cfg.mask.priority,
              "importance": run.importance.summary() if run.importance is not None else None}
    finished = run.start + len(losses) >= cfg.max_steps
    if env.main and evaluators is not None and finished:
        result["heldout"] = heldout_metrics(model, data, cfg, env.device, cfg.eval.max_samples)
        result["eval_loss"] = result["heldout"].get("loss")
        for evaluator in evaluators:
            result.update(evaluator(model, data, cfg, env.device, progress=run.show))
    if env.main:
        result["plot"] = plot_loss(result["log_csv"], os.path.join(cfg.run_dir, "loss.png"),
                                   title=f"{os.path.basename(os.path.normpath(cfg.run_dir))}: "
                                         + (f"w={cfg.mask.weight}" if cfg.mask.priority == "rules"
                                            else f"priority={cfg.mask.priority}")
                                         + f", complementary={cfg.mask.complementary}, K={cfg.mask.block_size}")
        result["wall_s"] = time.perf_counter() - t_wall
        with open(os.path.join(cfg.run_dir, "result.json"), "w") as f:
            json.dump({k: v for k, v in result.items() if k != "losses"}, f, indent=1, default=str)
    env.barrier()
    result["wall_s"] = time.perf_counter() - t_wall
    return result


def _save(cfg, env, model, opt, step, data, ckpt_dir, importance: Optional[Importance] = None):
    path = ck.checkpoint_path(ckpt_dir, step)
    if importance is not None and not env.same_everywhere(importance.store.checksum()):
        raise RuntimeError(f"step {step}: the importance score store differs between ranks")
    if env.main:
        state = {"format": 1, "step": step, "model": model.state_dict(), "optim": opt.state_dict(),
                 "config": json.loads(json.dumps(cfg.to_dict())), "fingerprint": config_fingerprint(cfg),
                 "data_digest": data.digest, "tokenizer": data.tokenizer.state()}
        if importance is not None:
            state["importance"] = importance.state_dict()
        ck.save_checkpoint(path, state, step=step)
        ck.prune_checkpoints(ckpt_dir, cfg.keep_ckpts)
    env.barrier()
    return path
