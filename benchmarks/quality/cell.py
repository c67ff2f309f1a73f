"""One cell of the ablation grid: train a tiny block-diffusion LM on the task with one masking
recipe (w, complement, annotated fraction, seed), then measure it on the held-out problems.

Training goes through the library's public entry point, :func:`dllm_masks.train.loop.train`, with
the records of :mod:`.task` as its data (annotated ones carry their spans, the rest ``None``), so
the cell trains exactly what a user of ``dllm-masks train`` would. Two measurements follow:

- **accuracy**: every held-out prompt decoded block by block (greedy, low-confidence remasking;
  :func:`dllm_masks.eval.generation.evaluate_generations`), math scored by final-answer exact
  match, code by its tests in the sandbox; ``avg`` is the mean of the two, like the paper's AVG.
- **masked-token cross-entropy** (lower variance): the held-out answers masked uniformly with
  exactly ``round(σ·N)`` tokens per block at each σ of a fixed grid, with masks that are the same
  for every cell (a fixed seed, independent of the cell's recipe), scored on the dense tokens and
  on the others separately. Every cell is measured on identical inputs, so differences between
  cells are differences between models.
"""
from __future__ import annotations

import copy
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from dllm_masks.extract.auto import selected

from dllm_masks.data import tiny_task as T

__all__ = ["SIZES", "Size", "cell_key", "weight_name", "task_stats", "train_records", "train_config", "run_cell", "measure_ce",
           "EVAL_SEED", "SIGMA_GRID"]

EVAL_SEED = 0x0A11CE  # masks of the cross-entropy metric: one fixed draw for every cell
SIGMA_GRID = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Size:
    """Everything that is the same in every cell of a grid.

    Attributes
    ----------
    n_train, n_eval : int
        Training problems (one pass is ``n_train / batch_size`` steps) and held-out problems.
    steps, batch_size : int
    d_model, n_layers, n_heads : int
    lr, warmup_steps : float, int
    block_size : int
        Block-diffusion block (the paper: 32).
    gen_length, steps_per_block : int
        Decoding: most answer tokens, denoising steps per block (the paper: T = block size).
    seeds : tuple of int
    threads : int
        Torch threads per cell.
    tokenizer : str
        Base tokenizer, restricted to the ids the task uses (a compact vocabulary of ~175 ids).
    task : TaskConfig
    """

    n_train: int = 4000
    n_eval: int = 400
    steps: int = 800
    batch_size: int = 16
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    lr: float = 6e-3
    warmup_steps: int = 30
    block_size: int = 32
    gen_length: int = 96
    steps_per_block: int = 32
    seeds: tuple = (0, 1, 2)
    threads: int = 1
    tokenizer: str = "deepseek"
    task: T.TaskConfig = field(default_factory=T.TaskConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["task"] = self.task.to_dict()
        return d


SIZES: Dict[str, Size] = {
    # a 1-cell end-to-end check (tests): seconds
    "micro": Size(n_train=64, n_eval=8, steps=3, batch_size=8, d_model=32, n_layers=1, n_heads=2, warmup_steps=1,
                  gen_length=32, steps_per_block=8, seeds=(0,)),
    # the reduced grid: under an hour on 2 CPU cores
    "reduced": Size(),
    # the full grid, for a GPU: larger numbers, a bigger model, more steps and seeds (untested: no GPU yet)
    "full": Size(n_train=24000, n_eval=1000, steps=3000, batch_size=64, d_model=256, n_layers=6, n_heads=8,
                 lr=1e-3, warmup_steps=100, seeds=(0, 1, 2, 3, 4), threads=0,
                 task=T.TaskConfig(max_operand=19, max_factor=9)),
}


def task_stats(size: Size) -> dict:
    """Per domain of the training problems: count and ρ, the mean share of dense answer tokens
    (with the size's tokenizer; a token is dense when it overlaps a span) and of dense characters."""
    from dllm_masks.data.tokenize import load_tokenizer
    from dllm_masks.extract.align import priority_bits

    tok = load_tokenizer(size.tokenizer)
    train, _ = T.make_split(size.n_train, size.n_eval, 0, size.task)
    out = {}
    for dom in ("math", "code"):
        probs = [p for p in train if p.domain == dom]
        rho_t, rho_c = [], []
        for p in probs:
            _, offs = tok.encode(p.answer)
            bits = priority_bits(offs, p.spans)
            rho_t.append(sum(bool(b) for b in bits) / max(1, len(bits)))
            rho_c.append(sum(b - a for a, b in p.spans) / len(p.answer))
        out[dom] = {"n": len(probs), "rho_tokens": round(sum(rho_t) / max(1, len(probs)), 4),
                    "rho_chars": round(sum(rho_c) / max(1, len(probs)), 4)}
    return out


def weight_name(w: float) -> str:
    """``"2"``, ``"0.5"``, ``"inf"``: the weight as it is written in keys and JSON."""
    if math.isinf(w):
        return "inf"
    return f"{w:g}"


def cell_key(weight: float, complementary: bool, fraction: float, seed: int) -> str:
    """Identity of a cell in the results (``w=2|comp=1|frac=0.1|seed=0``)."""
    return f"w={weight_name(weight)}|comp={int(bool(complementary))}|frac={fraction:g}|seed={seed}"


def train_records(problems: Sequence[T.Problem], fraction: float, seed: int) -> List[dict]:
    """Training records with a seeded ``fraction`` annotated (the rule of ``dllm-masks extract
    --fraction`` and ``data.annotate``: a function of the sample id and the seed)."""
    out = []
    for p in problems:
        rec = p.record(annotated=True)
        if not selected(rec, fraction, seed):
            rec["spans"] = None
        out.append(rec)
    return out


def train_config(size: Size, *, weight: float, complementary: bool, fraction: float, seed: int,
                 train_problems: Sequence[T.Problem], eval_problems: Sequence[T.Problem], run_dir: str,
                 device: str = "cpu") -> dict:
    """The :class:`dllm_masks.train.config.TrainConfig` dict of a cell; only ``mask`` and the
    annotated subset differ between the cells of a seed."""
    lens = [len(p.prompt) + len(p.answer) + 1 for p in list(train_problems) + list(eval_problems)]
    K = size.block_size
    max_len = -(-max(lens) // K) * K
    hard = math.isinf(weight)
    return {
        "run_dir": run_dir, "seed": seed, "max_steps": size.steps, "threads": size.threads, "progress": False,
        "device": device, "log_every": 10, "ckpt_every": 0, "keep_ckpts": 1,
        "data": {"source": train_records(train_problems, fraction, seed),
                 "eval_source": [p.record(annotated=True) for p in eval_problems],
                 "tokenizer": size.tokenizer, "compact_vocab": True, "max_length": max_len,
                 "token_budget": max(max_len, size.batch_size * max_len), "batch_size": size.batch_size},
        # the paper's Hard Sample: w -> inf with exactly round(σ·N) tokens masked per block
        "mask": {"weight": weight, "complementary": complementary, "sampling": "exact" if hard else "bernoulli",
                 "sigma_low": 0.3, "sigma_high": 0.8, "block_size": K, "sigma_per_block": True,
                 "loss_weight": "sigma"},
        "model": {"d_model": size.d_model, "n_layers": size.n_layers, "n_heads": size.n_heads,
                  "max_position": max_len + size.gen_length + K},
        "optim": {"lr": size.lr, "warmup_steps": size.warmup_steps, "min_lr_ratio": 0.1, "weight_decay": 0.1,
                  "clip_grad": 1.0},
        "eval": {"generate": len(eval_problems), "generate_train": 0, "gen_length": size.gen_length,
                 "steps_per_block": size.steps_per_block, "temperature": 0.0, "code_timeout": 5.0, "show": 0},
    }


@torch.no_grad()
def measure_ce(model, data, cfg, device, sigmas: Sequence[float] = SIGMA_GRID) -> dict:
    """Held-out masked-token cross-entropy (nats) at each σ, on dense tokens and on the others.

    Each block of each held-out answer has exactly ``round(σ·N)`` of its N maskable tokens masked,
    uniformly (w = 1), one view, with :data:`EVAL_SEED`: the same masks for every cell. Scored on
    the answer's own tokens (``<eos>`` and the ``<eos>`` padding of the last block left out).

    Returns
    -------
    dict: ``by_sigma`` {σ: {dense, other, all, n_dense, n_other}}, ``dense``/``other``/``all``
    (means over the σ grid), ``by_domain`` {domain: {dense, other}} (means over the grid).
    """
    from dllm_masks.data.collate import MaskConfig, mask_batch
    from dllm_masks.data.pack import pack
    from dllm_masks.train.forward import eval_mode, masked_forward

    seqs = data.eval
    doms = sorted({data.eval_samples[s.index].domain for s in seqs})
    K = cfg.mask.block_size
    out = {"by_sigma": {}, "by_domain": {}}
    sums = {d: torch.zeros(2, dtype=torch.float64) for d in doms}
    cnts = {d: torch.zeros(2, dtype=torch.float64) for d in doms}
    with eval_mode(model):
        for sigma in sigmas:
            mcfg = MaskConfig(weight=1.0, complementary=False, sigma_low=sigma, sigma_high=sigma, block_size=K,
                              sigma_per_block=True, sampling="exact", loss_weight=None)
            s_sum = torch.zeros(2, dtype=torch.float64)
            s_cnt = torch.zeros(2, dtype=torch.float64)
            for pb in pack(seqs, [s.index for s in seqs], cfg.data.token_budget):
                b = mask_batch(pb, mcfg, mask_token_id=data.tokenizer.mask_id, seed=EVAL_SEED, device=device)
                logits, idx = masked_forward(model, b, block_size=K, attention=cfg.model.attention)
                ce = F.cross_entropy(logits.float(), b.labels[idx], reduction="none").double().cpu()
                idx = idx.cpu()
                answer = b.labels[idx].cpu() != data.tokenizer.eos_id  # <eos> and its block padding left out
                ce, idx = ce[answer], idx[answer]
                dense = pb.priority[idx].long()
                seq_of = torch.repeat_interleave(torch.arange(pb.num_seqs),
                                                 (pb.cu_seqlens[1:] - pb.cu_seqlens[:-1]).long())[idx]
                s_sum += torch.bincount(dense, weights=ce, minlength=2)
                s_cnt += torch.bincount(dense, minlength=2).double()
                for d in doms:
                    mine = torch.tensor([data.eval_samples[int(i)].domain == d for i in pb.indices])[seq_of]
                    sums[d] += torch.bincount(dense[mine], weights=ce[mine], minlength=2)
                    cnts[d] += torch.bincount(dense[mine], minlength=2).double()
            mean = lambda s, n: float(s / n) if n > 0 else None  # noqa: E731
            out["by_sigma"][f"{sigma:g}"] = {"dense": mean(s_sum[1], s_cnt[1]), "other": mean(s_sum[0], s_cnt[0]),
                                             "all": mean(s_sum.sum(), s_cnt.sum()),
                                             "n_dense": int(s_cnt[1]), "n_other": int(s_cnt[0])}
    for part in ("dense", "other", "all"):
        vals = [v[part] for v in out["by_sigma"].values() if v[part] is not None]
        out[part] = sum(vals) / len(vals) if vals else None
    for d in doms:
        out["by_domain"][d] = {"dense": float(sums[d][1] / cnts[d][1]) if cnts[d][1] else None,
                               "other": float(sums[d][0] / cnts[d][0]) if cnts[d][0] else None}
    return out


def _load_trained(ckpt_path: str, cfg, device):
    """The trained model and the held-out data, tokenized as in training.

    The tokenizer is rebuilt from the checkpoint (the base tokenizer restricted to the ids it
    records), so only the held-out problems are tokenized again, not the training set.
    """
    from dllm_masks.data.dataset import SFTData
    from dllm_masks.data.samples import load_samples
    from dllm_masks.data.tokenize import CompactTokenizer, load_tokenizer, tokenize_samples
    from dllm_masks.train import checkpoint as ck
    from dllm_masks.train.model import build_model

    state = ck.load_checkpoint(ckpt_path, map_location=device)
    tok = load_tokenizer(cfg.data.tokenizer, eos_token=cfg.data.eos_token, mask_token=cfg.data.mask_token)
    if cfg.data.compact_vocab:
        tok = CompactTokenizer(tok, state["tokenizer"]["used_ids"])
    if tok.vocab_size != state["tokenizer"]["vocab_size"]:
        raise RuntimeError(f"{ckpt_path}: rebuilt tokenizer has {tok.vocab_size} ids, training had "
                           f"{state['tokenizer']['vocab_size']}")
    eval_samples = load_samples(cfg.data.eval_source)
    K = cfg.mask.block_size if cfg.data.round_to_block else None
    ev = tokenize_samples(eval_samples, tok, block_size=K, max_length=cfg.data.max_length, progress=False)
    if len(ev) != len(eval_samples):
        raise RuntimeError(f"data.max_length: {len(eval_samples) - len(ev)} held-out problems were dropped")
    data = SFTData(tok, [], ev, [], eval_samples, "", 0)
    model = build_model(replace(cfg.model, vocab_size=cfg.model.vocab_size or tok.vocab_size)).to(device)
    model.load_state_dict(state["model"])
    return model, data


def run_cell(size: Size, *, weight: float, complementary: bool, fraction: float, seed: int,
             train_problems: Sequence[T.Problem], eval_problems: Sequence[T.Problem], work_dir: str,
             device: str = "cpu", keep_run: bool = False) -> dict:
    """Train and measure one cell; returns its JSON record (config included).

    Parameters
    ----------
    size : Size
    weight : float
        w (``math.inf``: the Hard Sample, with ``sampling="exact"``).
    complementary : bool
    fraction : float
        Share of the training problems that carry spans (both domains).
    seed : int
    train_problems, eval_problems : sequences of task.Problem
    work_dir : str
        The run directory is made under it (removed afterwards unless ``keep_run``).
    device : str
    keep_run : bool
        Keep the run directory (checkpoint, ``log.csv``, ``loss.png``).
    """
    from dllm_masks.train.config import TrainConfig
    from dllm_masks.eval.generation import evaluate_generations
    from dllm_masks.train.loop import train

    key = cell_key(weight, complementary, fraction, seed)
    run_dir = os.path.join(work_dir, key.replace("|", "_").replace("=", ""))
    cfg_dict = train_config(size, weight=weight, complementary=complementary, fraction=fraction, seed=seed,
                            train_problems=train_problems, eval_problems=eval_problems, run_dir=run_dir,
                            device=device)
    cfg = TrainConfig.from_dict(copy.deepcopy(cfg_dict))
    t0 = time.perf_counter()
    res = train(cfg, resume=False, progress=False, evaluate=False)
    t_train = time.perf_counter() - t0
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    model, data = _load_trained(res["checkpoint"], cfg, dev)
    t1 = time.perf_counter()
    ce = measure_ce(model, data, cfg, dev)
    gens = evaluate_generations(model, data, cfg, dev, progress=False)
    t_eval = time.perf_counter() - t1
    m = gens["metrics"]
    acc = {"math": m.get("math_accuracy"), "code": m.get("code_pass@1"),
           "math_n": m.get("math_n", 0), "code_n": m.get("code_n", 0), "code_status": m.get("code_status")}
    parts = [v for v in (acc["math"], acc["code"]) if v is not None]
    acc["avg"] = sum(parts) / len(parts) if parts else None
    n_annot = sum(r["spans"] is not None for r in cfg_dict["data"]["source"])
    examples = [{k: g[k] for k in ("domain", "prompt", "generated", "correct")} for g in gens["generations"][:2]]
    if not keep_run:
        shutil.rmtree(run_dir, ignore_errors=True)
    mask = dict(cfg_dict["mask"])
    mask["weight"] = weight_name(weight)
    return {
        "key": key, "weight": weight_name(weight), "complementary": bool(complementary), "fraction": fraction,
        "seed": seed, "accuracy": acc, "ce": ce,
        "train": {"final_loss": res["final_loss"], "steps": res["steps"], "params": res["params"],
                  "train_s": round(t_train, 2), "tokens_per_s": res["tokens_per_s"],
                  "annotated": n_annot, "n_train": len(cfg_dict["data"]["source"]),
                  "vocab": data.tokenizer.vocab_size},
        "eval_s": round(t_eval, 2),
        "config": {"mask": mask, "model": cfg_dict["model"], "optim": cfg_dict["optim"],
                   "eval": cfg_dict["eval"], "seed": seed, "max_steps": cfg_dict["max_steps"],
                   "threads": cfg_dict["threads"], "batch_size": cfg_dict["data"]["batch_size"],
                   "max_length": cfg_dict["data"]["max_length"], "annotated_fraction": fraction},
        "examples": examples,
    }
