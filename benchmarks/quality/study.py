#!/usr/bin/env python
"""The powered study: a few masking recipes ("arms"), many seeds, paired by seed.

    python benchmarks/quality/study.py                    # every arm × 8 seeds, 2 at a time; resumable
    python benchmarks/quality/study.py --seeds 8,9,10,11  # more seeds, appended
    python benchmarks/quality/study_report.py             # results/STUDY.md + results/study_study.png

Every arm trains the same tiny block-diffusion LM on the same task (``cell.py``'s model and
:mod:`dllm_masks.data.tiny_task`) through :func:`dllm_masks.train.loop.train`, with the
complementary view on unless said otherwise:

==================  =============================================================================
``uniform``         w = 1 (the baseline)
``rules10``         w = 2, rule spans on 10 % of the training problems (both domains)
``rules10_rho``     w = 2, the same 10 %, spans cut to the paper's density with ``data.target_rho``
                    (budgets calibrated so that the mean ρ over tokens is 0.25 for code and 0.31
                    for math; :func:`dllm_masks.extract.calibrate.calibrate`)
``loss``            ``mask.priority = "loss"``: self-paced weights from each token's running loss
``confidence``      ``mask.priority = "confidence"``: weights from 1 − p(correct token)
``hard``            w = ∞ with ``sampling = "exact"`` (the paper's Hard Sample), the same 10 %
``rules10_nocomp``  ``rules10`` without the complement, at twice the batch: the compute-matched
                    partner of ``rules10`` (see below)
==================  =============================================================================

**Pairing.** A seed fixes the model's initialization, the order of the training problems and every
σ draw (σ is keyed by sample id and seed, :func:`dllm_masks.schedules.keyed_sigma`), and which
problems are annotated; the arms of one seed differ only in their masks. Each cell records a
fingerprint of what it was fed — a hash of the initial parameters and a hash of every masked
batch's sample ids, offsets and σ, taken inside the loop — and the report refuses a seed whose
arms disagree on it (``rules10_nocomp`` draws twice the problems per step, so it shares only the
initialization).

**The compute-matched pair.** With the complement, each problem of a step is trained twice — at σ
and at 1 − σ — so a step supervises every answer token once and sees 2B noisy sequences.
Without it, a step of B problems supervises a share E[σ] = 0.55 of them and sees B noisy
sequences. ``rules10_nocomp`` therefore takes 2B problems per step: the same noisy sequences
(2B) and about the same supervised tokens (2 × 0.55 = 1.1 per answer token), at the same number
of optimizer steps and the same learning-rate schedule, so that the two differ in what the second
view is (the complement of the first, or another problem), not in how much is trained. (Twice the
steps would also match the tokens, but changes the schedule and doubles the updates.) The forward
pass costs 4B sequences against 3B, which favours the arm without the complement.

**Metrics.** Primary: held-out masked-token cross-entropy on dense tokens and on the others at
σ ∈ {0.25, 0.5, 0.75}, with one fixed set of uniform masks for every cell (:func:`cell.measure_ce`;
dense = the task's spans, the same for every arm). Secondary: accuracy on ``n_gen`` held-out
problems (greedy decoding). Mask statistics (:func:`dllm_masks.mask_stats`) of the training
masks, against the task's spans, every ``stats_every`` steps.

Resumable: cells already in the results file are skipped. An arm whose configuration keys this
version of the library lacks (``mask.priority``) is skipped and listed in the file.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from quality import cell as C  # noqa: E402
from quality import run_grid as G  # noqa: E402
from dllm_masks.data import tiny_task as T  # noqa: E402

__all__ = ["Arm", "ARMS", "StudySize", "SIZES", "study_cells", "calibration", "run_study_cell", "main", "FORMAT"]

FORMAT = 1
PAPER_RHO = {"code": 0.25, "math": 0.31}


@dataclass(frozen=True)
class Arm:
    """One masking recipe of the study.

    Attributes
    ----------
    name, label : str
    weight : float
        w (``math.inf``: Hard Sample, ``sampling="exact"``).
    complementary : bool
    annotate : float or None
        Share of the training problems (both domains) annotated with the rule extractors; None: no
        spans at all.
    calibrated : bool
        Cut the rule spans to the paper's density (``data.target_rho``).
    priority : str or None
        ``mask.priority`` (a model-based importance source); None: the library's default.
    importance : dict
        Other ``mask`` keys of the importance source.
    batch_mult : int
        Problems per step, as a multiple of the size's batch.
    """

    name: str
    label: str
    weight: float = 1.0
    complementary: bool = True
    annotate: Optional[float] = None
    calibrated: bool = False
    priority: Optional[str] = None
    importance: dict = field(default_factory=dict)
    batch_mult: int = 1

    def mask_overrides(self) -> dict:
        out = {"weight": self.weight, "complementary": self.complementary,
               "sampling": "exact" if math.isinf(self.weight) else "bernoulli"}
        if self.priority is not None:
            out["priority"] = self.priority
            out.update(self.importance)
        return out


ARMS: Dict[str, Arm] = {a.name: a for a in (
    Arm("uniform", "uniform (w = 1)", 1.0),
    Arm("rules10", "rules, w = 2, 10 % annotated", 2.0, annotate=0.1),
    Arm("rules10_rho", "rules, w = 2, 10 %, paper's ρ", 2.0, annotate=0.1, calibrated=True),
    # the model sources at the library's defaults (γ = 1, weights in [0.25, 4], scores every step,
    # running-loss decay 0.5); w is unused by them
    Arm("loss", "loss-based (self-paced), no annotation", 1.0, priority="loss"),
    Arm("confidence", "confidence-based, no annotation", 1.0, priority="confidence"),
    Arm("hard", "hard, w = ∞, 10 %", math.inf, annotate=0.1),
    Arm("rules10_nocomp", "rules, w = 2, 10 %, no complement, 2× batch", 2.0, complementary=False,
        annotate=0.1, batch_mult=2),
)}


@dataclass(frozen=True)
class StudySize(C.Size):
    """A :class:`cell.Size` with the study's own knobs.

    Attributes
    ----------
    n_gen : int
        Held-out problems decoded for the (secondary) accuracy; the cross-entropy uses all ``n_eval``.
    stats_every : int
        Mask statistics on every this-many-th masked training batch.
    """

    n_gen: int = 100
    stats_every: int = 8


SIZES: Dict[str, StudySize] = {
    # the test's end-to-end check: seconds
    "micro": StudySize(n_train=64, n_eval=8, steps=3, batch_size=8, d_model=32, n_layers=1, n_heads=2,
                       warmup_steps=1, gen_length=32, steps_per_block=8, seeds=(0, 1), n_gen=4, stats_every=1),
    # the study: 8 seeds × 7 arms in about 14 minutes on 2 idle CPU cores (56 cells of 27-33 CPU
    # seconds; the committed results add seeds 8-11: 84 cells, 41.5 CPU-minutes): cell.py's model and
    # task, 200 steps of 16 problems over 1600 training problems (two epochs, so the self-paced loss
    # source sees every problem a second time). 500 steps took 61 CPU-seconds a cell.
    "study": StudySize(n_train=1600, steps=200, warmup_steps=20, seeds=tuple(range(8)), n_gen=60,
                       steps_per_block=8, stats_every=4),
}


def arm_available(arm: Arm) -> Optional[str]:
    """None when this library accepts the arm's config keys, else why not."""
    if arm.priority is None:
        return None
    from dllm_masks.data.collate import MaskConfig

    try:
        MaskConfig(**{k: v for k, v in arm.mask_overrides().items()})
    except TypeError as e:
        return f"mask.priority={arm.priority!r}: not in this version of the library ({e})"
    except ValueError as e:
        return f"mask.priority={arm.priority!r}: {e}"
    return None


def study_cells(seeds, arms) -> List[dict]:
    """The cells to run, seed-major (a partial run covers whole seeds)."""
    return [{"arm": a, "seed": s, "key": f"{a}|seed={s}"} for s in seeds for a in arms]


# --- calibration of ρ ---------------------------------------------------------------------------

def calibration(size: StudySize) -> dict:
    """Budgets per domain that give the paper's mean ρ on the training problems (tokens of the
    size's tokenizer), and the ρ the training pipeline then realizes.

    Returns
    -------
    dict: ``target_rho`` {domain: budget}; ``calibrate`` (the report of
    :func:`dllm_masks.extract.calibrate.calibrate`); ``realized`` {domain: mean share of dense
    answer tokens over the training problems, every rule span and under the budget, measured on
    the tokenized sequences the loop trains on}.
    """
    from dllm_masks.data.annotate import annotate_fraction
    from dllm_masks.data.samples import load_samples
    from dllm_masks.data.tokenize import load_tokenizer, tokenize_samples
    from dllm_masks.extract.calibrate import calibrate

    tok = load_tokenizer(size.tokenizer)
    train, _ = T.make_split(size.n_train, size.n_eval, 0, size.task)
    recs = [p.record(annotated=False) for p in train]
    rep = calibrate(recs, PAPER_RHO, tokenizer=tok)
    caps = {d: rep[d]["target_rho"] for d in PAPER_RHO if d in rep}
    samples = load_samples(recs)
    realized = {}
    for name, target in (("all_spans", None), ("budget", caps)):
        ann = annotate_fraction(samples, {"code": 1.0, "math": 1.0}, seed=0, progress=False, target_rho=target,
                                tokenizer=tok)
        seqs = tokenize_samples(ann, tok, progress=False)
        by: Dict[str, List[float]] = {}
        for s, smp in zip(seqs, ann):
            ans = s.ids[s.prompt_len:] != tok.eos_id
            n = int(ans.sum())
            by.setdefault(smp.domain, []).append(float(s.priority[s.prompt_len:][ans].sum()) / max(n, 1))
        realized[name] = {d: round(sum(v) / len(v), 4) for d, v in sorted(by.items())}
    return {"paper_rho": PAPER_RHO, "target_rho": caps, "calibrate": rep, "realized": realized}


# --- what a cell is fed, and its masks -----------------------------------------------------------

class _Probe:
    """Taps the loop's masking call (``dllm_masks.data.collate.priority_mask``) and its model
    builder while one cell trains: hashes what each masked batch is made of (sample ids, offsets,
    σ) and the initial parameters, and every ``every``-th batch measures
    :func:`dllm_masks.mask_stats` against the task's spans (``truth``: the training sequences
    annotated in full, in dataset order)."""

    def __init__(self, truth, every: int, block_size: int):
        self.truth, self.every, self.K = truth, max(1, every), block_size
        self.batches = hashlib.sha256()
        self.init = None
        self.calls = 0
        self.stats: List[dict] = []

    def __enter__(self):
        import dllm_masks.data.collate as collate
        import dllm_masks.train.loop as loop

        self._collate, self._loop = collate, loop
        self._mask, self._build = collate.priority_mask, loop.build_model

        def build_model(*a, **k):
            model = self._build(*a, **k)
            h = hashlib.sha256()
            for name, p in sorted(model.state_dict().items()):
                h.update(name.encode())
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
            self.init = h.hexdigest()[:16]
            return model

        def priority_mask(input_ids, sigma, **kw):
            out = self._mask(input_ids, sigma, **kw)
            self._tap(input_ids, sigma, kw, out)
            return out

        collate.priority_mask, loop.build_model = priority_mask, build_model
        return self

    def __exit__(self, *exc):
        self._collate.priority_mask, self._loop.build_model = self._mask, self._build
        return False

    def _tap(self, input_ids, sigma, kw, out) -> None:
        import torch

        sid = kw["sample_ids"].detach().cpu().to(torch.int64)
        cu = kw["cu_seqlens"].detach().cpu().to(torch.int64)
        for t in (sid, cu, sigma.detach().cpu().to(torch.float32)):
            self.batches.update(t.contiguous().numpy().tobytes())
        self.calls += 1
        if (self.calls - 1) % self.every:
            return
        from dllm_masks.stats import mask_stats

        n = len(self.truth)
        seqs = [self.truth[int(s) % n] for s in sid]
        ids = torch.cat([s.ids for s in seqs])
        if not torch.equal(ids, input_ids.detach().cpu().to(torch.int64)):
            raise RuntimeError("probe: the batch's tokens are not the task's sequences (sample ids do not map)")
        dense = torch.cat([s.priority for s in seqs])
        pl = kw["prompt_lens"].detach().cpu().to(torch.int64)
        pos = torch.arange(ids.numel()) - torch.repeat_interleave(cu[:-1], cu[1:] - cu[:-1])
        maskable = pos >= torch.repeat_interleave(pl, cu[1:] - cu[:-1])
        views = mask_stats(out, block_size=self.K if kw.get("block_size") else None, priority=dense,
                           maskable=maskable)
        rec = {}
        for v, s in enumerate(views):
            lv = s.level_rate
            rec[f"v{v}"] = {"run_mean": s.run_mean, "full_blocks": s.full_blocks,
                            "dense_both_neighbours": s.dense_both_neighbours, "dense_spans_whole": s.dense_spans_whole,
                            "rate_dense": lv.get(1.0), "rate_other": lv.get(0.0)}
        self.stats.append(rec)

    def summary(self) -> dict:
        """Means over the measured batches (NaN-free), per view."""
        out = {"batches_measured": len(self.stats), "init": self.init, "batches": self.batches.hexdigest()[:16],
               "calls": self.calls}
        for v in ("v0", "v1"):
            rows = [r[v] for r in self.stats if v in r]
            if not rows:
                continue
            out[v] = {}
            for k in rows[0]:
                xs = [x for x in (r[k] for r in rows) if x is not None and not math.isnan(x)]
                out[v][k] = round(sum(xs) / len(xs), 5) if xs else None
        return out


_TRUTH: Dict[tuple, object] = {}


def _truth(size: StudySize, cfg_dict: dict):
    """The training sequences annotated in full with the task's spans, tokenized as the loop does."""
    key = (size.n_train, size.n_eval, size.task, size.block_size)
    if key not in _TRUTH:
        from dllm_masks.data.dataset import build_data
        from dllm_masks.train.config import DataConfig

        train, held = G._problems(size)
        d = dict(cfg_dict["data"])
        d["source"] = [p.record(annotated=True) for p in train]
        d.pop("annotate", None)
        d.pop("target_rho", None)
        _TRUTH[key] = build_data(DataConfig(**d), size.block_size, 0, progress=False).train
    return _TRUTH[key]


def study_config(size: StudySize, arm: Arm, seed: int, calib: Optional[dict], run_dir: str, device: str = "cpu") -> dict:
    """The training config of one cell: :func:`cell.train_config` with the arm's masking and
    annotation (through ``data.annotate`` and ``data.target_rho``, as a user would)."""
    train, held = G._problems(size)
    cfg = C.train_config(size, weight=arm.weight, complementary=arm.complementary, fraction=1.0, seed=seed,
                         train_problems=train, eval_problems=held, run_dir=run_dir, device=device)
    d = cfg["data"]
    d["source"] = [p.record(annotated=False) for p in train]
    if arm.annotate is not None:
        d["annotate"] = {"code": arm.annotate, "math": arm.annotate}
        if arm.calibrated:
            if not calib:
                raise ValueError(f"{arm.name}: needs the ρ calibration")
            d["target_rho"] = dict(calib["target_rho"])
    d["batch_size"] *= arm.batch_mult
    d["token_budget"] *= arm.batch_mult
    cfg["mask"].update(arm.mask_overrides())
    cfg["eval"]["generate"] = size.n_gen
    return cfg


def run_study_cell(size: StudySize, arm: Arm, seed: int, calib: Optional[dict], work_dir: str,
                   device: str = "cpu") -> dict:
    """Train and measure one (arm, seed); its JSON record."""
    import torch

    from dllm_masks.eval.generation import evaluate_generations
    from dllm_masks.train.config import TrainConfig
    from dllm_masks.train.loop import train

    if size.threads:
        torch.set_num_threads(size.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    run_dir = os.path.join(work_dir, f"{arm.name}_seed{seed}")
    cfg_dict = study_config(size, arm, seed, calib, run_dir, device)
    cfg = TrainConfig.from_dict(copy.deepcopy(cfg_dict))
    truth = _truth(size, cfg_dict)
    t1 = time.perf_counter()
    with _Probe(truth, size.stats_every, size.block_size) as probe:
        res = train(cfg, resume=False, progress=False, evaluate=False)
    t_train = time.perf_counter() - t1
    dev = torch.device("cpu" if device == "cpu" else "cuda")
    model, data = C._load_trained(res["checkpoint"], cfg, dev)
    t2 = time.perf_counter()
    ce = C.measure_ce(model, data, cfg, dev)
    t_ce = time.perf_counter() - t2
    gens = evaluate_generations(model, data, cfg, dev, progress=False)
    m = gens["metrics"]
    acc = {"math": m.get("math_accuracy"), "code": m.get("code_pass@1"), "math_n": m.get("math_n", 0),
           "code_n": m.get("code_n", 0)}
    parts = [v for v in (acc["math"], acc["code"]) if v is not None]
    acc["avg"] = sum(parts) / len(parts) if parts else None
    shutil.rmtree(run_dir, ignore_errors=True)
    mask = cfg.mask.to_dict()  # every key, defaults included
    mask["weight"] = C.weight_name(arm.weight)
    return {
        "key": f"{arm.name}|seed={seed}", "arm": arm.name, "seed": seed, "ce": ce, "accuracy": acc,
        "mask_stats": probe.summary(),
        "train": {"final_loss": res["final_loss"], "steps": res["steps"], "params": res["params"],
                  "train_s": round(t_train, 2), "tokens_per_s": res["tokens_per_s"],
                  "batch_size": cfg_dict["data"]["batch_size"], "importance": res.get("importance")},
        "ce_s": round(t_ce, 2), "eval_s": round(time.perf_counter() - t2, 2),
        "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
        "config": {"mask": mask, "annotate": cfg_dict["data"].get("annotate"),
                   "target_rho": cfg_dict["data"].get("target_rho"), "seed": seed},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _worker(size, arm_name, seed, calib, work_dir, device):
    return run_study_cell(size, ARMS[arm_name], seed, calib, work_dir, device)


# --- the runner ---------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="study")
    ap.add_argument("--out", help="results JSON (default: benchmarks/quality/results/study_<size>.json)")
    ap.add_argument("--arms", help=f"comma-separated arms (default: all of {','.join(ARMS)})")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the size's)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a size field (pilots: steps=400, lr=0.003; a results file of its own)")
    ap.add_argument("--jobs", type=int, default=2, help="cells trained at once, each in its own process")
    ap.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells")
    ap.add_argument("--work-dir", help="run directories (default: a temporary folder, removed)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _open(out: Path, size_name: str, size: StudySize, arms) -> Optional[dict]:
    size_cfg = {k: v for k, v in size.to_dict().items() if k not in ("seeds", "threads")}
    if out.exists():
        doc = G.load_results(out)
        return doc if doc.get("format") == FORMAT and doc.get("size_config") == size_cfg else None
    return {"format": FORMAT, "size": size_name, "size_config": size_cfg,
            "arms": {a.name: {**asdict(a), "weight": C.weight_name(a.weight)} for a in ARMS.values()},
            "metrics": {"sigma_grid": list(C.SIGMA_GRID), "eval_seed": C.EVAL_SEED},
            "runs": [], "cells": [], "skipped": {}}


def main(argv: Optional[List[str]] = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    size = SIZES[args.size]
    if args.seeds:
        size = replace(size, seeds=tuple(int(s) for s in args.seeds.split(",")))
    for item in args.set:
        k, _, v = item.partition("=")
        if k not in StudySize.__dataclass_fields__ or k in ("task", "seeds"):
            ap.error(f"--set: unknown size field {k!r}")
        typ = type(getattr(size, k))
        size = replace(size, **{k: typ(v)})
    names = args.arms.split(",") if args.arms else list(ARMS)
    bad = [a for a in names if a not in ARMS]
    if bad:
        ap.error(f"--arms: unknown {bad} (known: {', '.join(ARMS)})")
    if args.jobs < 1:
        ap.error("--jobs: must be >= 1")
    out = Path(args.out) if args.out else HERE / "results" / f"study_{args.size}.json"
    doc = _open(out, args.size, size, names)
    if doc is None:
        print(f"{out}: written with another size config; use another --out", file=sys.stderr)
        return 2
    for a in names:
        why = arm_available(ARMS[a])
        if why:
            doc["skipped"][a] = why
            print(f"skipping arm {a}: {why}", file=sys.stderr)
        else:
            doc["skipped"].pop(a, None)
    names = [a for a in names if a not in doc["skipped"]]
    if any(ARMS[a].calibrated for a in names) and "calibration" not in doc:
        doc["calibration"] = calibration(size)
    G._write(out, doc)
    todo = G.pending(doc, study_cells(size.seeds, names), args.max_cells, out,
                     f"{args.jobs} at a time, {size.threads or 'default'} thread(s) each")
    if not todo:
        return 0
    calib = doc.get("calibration")
    run = G.run_cells(doc, out, todo, jobs=args.jobs, desc=f"study {args.size}",
                      task_of=lambda c, wd: (_worker, (size, c["arm"], c["seed"], calib, wd, "cpu")),
                      run_info={"size": args.size, "jobs": args.jobs, "threads_per_cell": size.threads},
                      postfix=lambda rec: (f"{rec['key']} ce_dense={rec['ce']['dense']:.3f} "
                                           f"ce_other={rec['ce']['other']:.3f} {rec['wall_s']:.0f}s"),
                      work_dir=args.work_dir, progress=not args.no_progress)
    return 1 if run["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
