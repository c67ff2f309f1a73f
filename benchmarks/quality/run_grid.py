#!/usr/bin/env python
"""Run the ablation grid: w × complement × annotated fraction × seed, every cell the same data,
steps and model; results appended to a JSON file, one record per cell with its config.

    python benchmarks/quality/run_grid.py --size reduced            # 2 CPU cores, under an hour
    python benchmarks/quality/run_grid.py --size full --device cuda # a GPU: bigger model, 5 seeds
    python benchmarks/quality/report.py                             # table + plot from the JSON

The grid: w ∈ {1, 2, 0.5, 5, ∞} (∞ is the paper's Hard Sample: ``sampling="exact"``), with and
without the complementary view, with 10% and 100% of the training problems annotated, for each
seed. w = 1 masks uniformly whatever the priority bits say, so it does not depend on the
annotated fraction: it runs once per (complement, seed) as ``frac=any`` and the report uses it in
both fraction rows.

Resumable: cells already in the output file are skipped, so an interrupted run continues where it
stopped. A file written with another size config is refused (use another ``--out``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from quality import cell as C  # noqa: E402
from dllm_masks.data import tiny_task as T  # noqa: E402

__all__ = ["grid_cells", "main", "load_results", "execute", "run_cells", "WEIGHTS", "FRACTIONS", "FORMAT"]

WEIGHTS = (1.0, 2.0, 0.5, 5.0, math.inf)
FRACTIONS = (0.1, 1.0)
FORMAT = 1
ANY = "any"  # the fraction of the w = 1 cells


def _parse_weight(s: str) -> float:
    s = s.strip().lower()
    w = math.inf if s in ("inf", "infinity", "hard") else float(s)
    if math.isnan(w) or w < 0:
        raise argparse.ArgumentTypeError(f"weight: must be in [0, inf], got {s!r}")
    return w


def grid_cells(seeds, weights=WEIGHTS, fractions=FRACTIONS, complements=(True, False)) -> List[dict]:
    """The cells to run, seed-major (a partial run covers whole seeds), then complement, weight, fraction.

    Returns
    -------
    list of dict with ``weight`` (float), ``complementary`` (bool), ``fraction`` (float, or
    ``"any"`` for w = 1), ``seed`` and ``key``.
    """
    out = []
    for seed in seeds:
        for comp in complements:
            for w in weights:
                for frac in ([ANY] if w == 1.0 else fractions):
                    out.append({"weight": w, "complementary": comp, "fraction": frac, "seed": seed,
                                "key": _key(w, comp, frac, seed)})
    return out


def _key(w, comp, frac, seed) -> str:
    if frac == ANY:
        return f"w={C.weight_name(w)}|comp={int(bool(comp))}|frac={ANY}|seed={seed}"
    return C.cell_key(w, comp, frac, seed)


def load_results(path) -> dict:
    """The results file (strict JSON: no NaN or Infinity)."""
    def refuse(c):
        raise ValueError(f"{path}: non-standard JSON constant {c}")
    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=refuse)


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


# --- workers ----------------------------------------------------------------------------------

_DATA: Dict[tuple, tuple] = {}


def _problems(size: C.Size):
    k = (size.n_train, size.n_eval, size.task)
    if k not in _DATA:
        _DATA[k] = T.make_split(size.n_train, size.n_eval, 0, size.task)
    return _DATA[k]


def _run_one(size: C.Size, cell: dict, work_dir: str, device: str) -> dict:
    import torch

    if size.threads:
        torch.set_num_threads(size.threads)
    train, held = _problems(size)
    frac = 1.0 if cell["fraction"] == ANY else cell["fraction"]
    t0 = time.perf_counter()
    rec = C.run_cell(size, weight=cell["weight"], complementary=cell["complementary"], fraction=frac,
                     seed=cell["seed"], train_problems=train, eval_problems=held, work_dir=work_dir, device=device)
    rec["key"] = cell["key"]
    rec["fraction"] = cell["fraction"]
    rec["config"]["annotated_fraction"] = cell["fraction"]
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    rec["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return rec


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(C.SIZES), default="reduced")
    ap.add_argument("--out", help="results JSON (default: benchmarks/quality/results/grid_<size>.json)")
    ap.add_argument("--jobs", type=int, default=None, help="cells trained at once, each in its own process "
                    "(default: 2 on the CPU, 1 on a GPU)")
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None,
                    help="default: cuda for --size full when available, else cpu")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the size's)")
    ap.add_argument("--weights", help="comma-separated w (inf = Hard Sample); default 1,2,0.5,5,inf")
    ap.add_argument("--fractions", help="comma-separated annotated fractions; default 0.1,1")
    ap.add_argument("--complement", choices=("both", "on", "off"), default="both")
    ap.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells")
    ap.add_argument("--work-dir", help="run directories (default: a temporary folder, removed)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _plan(ap: argparse.ArgumentParser, args) -> dict:
    """The grid the arguments ask for: size, device, jobs, cells' axes and the results path."""
    import torch

    size = C.SIZES[args.size]
    if args.seeds:
        size = replace(size, seeds=tuple(int(s) for s in args.seeds.split(",")))
    device = args.device or ("cuda" if args.size == "full" and torch.cuda.is_available() else "cpu")
    jobs = args.jobs or (1 if device == "cuda" else 2)
    if jobs < 1:
        ap.error("--jobs: must be >= 1")
    weights = tuple(_parse_weight(s) for s in args.weights.split(",")) if args.weights else WEIGHTS
    fractions = tuple(float(s) for s in args.fractions.split(",")) if args.fractions else FRACTIONS
    if any(not 0.0 < f <= 1.0 for f in fractions):
        ap.error("--fractions: each must be in (0, 1]")
    comps = {"both": (True, False), "on": (True,), "off": (False,)}[args.complement]
    out = Path(args.out) if args.out else HERE / "results" / f"grid_{args.size}.json"
    return dict(size=size, device=device, jobs=jobs, weights=weights, fractions=fractions, comps=comps, out=out)


def _open_results(out: Path, size_name: str, size) -> Optional[dict]:
    """The results document at ``out`` (new, or read to resume); None when it holds another size config."""
    size_cfg = {k: v for k, v in size.to_dict().items() if k not in ("seeds", "threads")}
    if out.exists():
        doc = load_results(out)
        if doc.get("format") != FORMAT or doc.get("size_config") != size_cfg:
            return None
    else:
        doc = {"format": FORMAT, "size": size_name, "size_config": size_cfg,
               "task": {"description": "two-step GSM8K-style arithmetic and small Python functions with tests",
                        "n_train": size.n_train, "n_eval": size.n_eval},
               "metrics": {"sigma_grid": list(C.SIGMA_GRID), "eval_seed": C.EVAL_SEED},
               "runs": [], "cells": []}
    if "task_stats" not in doc:  # density of the spans, as the paper reports ρ
        doc["task_stats"] = C.task_stats(size)
        if out.exists():
            _write(out, doc)
    return doc


def execute(todo: list, jobs: int, task_of, finish) -> None:
    """Run ``fn(*args)`` for ``fn, args = task_of(cell)`` of each cell of ``todo``, ``jobs`` at a time
    (each in its own spawned process when ``jobs > 1``); ``finish(cell, rec=None, err=None)`` after
    each, in the order they end. A failing cell is reported to ``finish`` and the others go on."""
    if jobs == 1:
        for cell in todo:
            fn, args = task_of(cell)
            try:
                rec = fn(*args)
            except Exception as e:  # noqa: BLE001 - record the failure, keep the grid going
                finish(cell, err=f"{type(e).__name__}: {e}")
            else:
                finish(cell, rec)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {}
        for cell in todo:
            fn, args = task_of(cell)
            futs[pool.submit(fn, *args)] = cell
        try:
            for fut in as_completed(futs):
                cell = futs[fut]
                try:
                    rec = fut.result()
                except Exception as e:  # noqa: BLE001
                    finish(cell, err=f"{type(e).__name__}: {e}")
                else:
                    finish(cell, rec)
        except BaseException:
            for f in futs:
                f.cancel()
            raise


def pending(doc: dict, cells: list, max_cells: Optional[int], out: Path, how: str) -> list:
    """The cells of ``cells`` not yet in ``doc`` (at most ``max_cells``), announced with ``how``
    (how they will run)."""
    done = {c["key"] for c in doc["cells"]}
    todo = [c for c in cells if c["key"] not in done]
    if max_cells is not None:
        todo = todo[:max(0, max_cells)]
    print(f"{len(done)} cells in {out}, {len(todo)} to run ({how})", flush=True)
    return todo


def run_cells(doc: dict, out: Path, todo: list, *, jobs: int, task_of, desc: str, run_info: dict,
              postfix, work_dir: Optional[str] = None, progress: bool = True) -> dict:
    """Run ``todo`` (:func:`execute`; ``task_of(cell, work_dir) -> (fn, args)``), appending each
    record to ``doc["cells"]`` and rewriting ``out`` after every cell, with a progress bar
    (``postfix(rec)`` describes a finished cell); returns this invocation's ``run`` entry (also
    appended to ``doc["runs"]``: times, machine, load average, failures)."""
    from tqdm.auto import tqdm

    run = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), **run_info, "machine": _machine(),
           "loadavg_start": list(os.getloadavg()), "load_1m_samples": [], "cells_run": 0, "failed": []}
    doc["runs"].append(run)
    t0 = time.perf_counter()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spawned workers: no spinning on shared cores
    tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="dllm-quality-")
    bar = tqdm(total=len(todo), desc=desc, unit="cell", disable=not progress, dynamic_ncols=True)

    def finish(cell, rec=None, err=None):
        run["load_1m_samples"].append(round(os.getloadavg()[0], 2))
        if err is not None:
            run["failed"].append({"key": cell["key"], "error": err})
            tqdm.write(f"{cell['key']}: FAILED: {err}")
        else:
            doc["cells"].append(rec)
            run["cells_run"] += 1
            bar.set_postfix_str(postfix(rec))
        run["wall_s"] = round(time.perf_counter() - t0, 1)
        _write(out, doc)
        bar.update(1)

    try:
        execute(todo, jobs, lambda cell: task_of(cell, work_dir or tmp.name), finish)
    finally:
        bar.close()
        run["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        run["wall_s"] = round(time.perf_counter() - t0, 1)
        run["loadavg_end"] = list(os.getloadavg())
        _write(out, doc)
        if tmp is not None:
            tmp.cleanup()
    s = run["load_1m_samples"]
    print(f"{run['cells_run']} cells in {run['wall_s']:.0f} s; 1-min load during the run: "
          f"mean {sum(s) / max(len(s), 1):.2f}, max {max(s, default=0):.2f} ({jobs} of it this run's)", flush=True)
    return run


def main(argv: Optional[List[str]] = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    plan = _plan(ap, args)
    size, device, jobs, out = plan["size"], plan["device"], plan["jobs"], plan["out"]
    doc = _open_results(out, args.size, size)
    if doc is None:
        print(f"{out}: written with another size config; use another --out", file=sys.stderr)
        return 2
    todo = pending(doc, grid_cells(size.seeds, plan["weights"], plan["fractions"], plan["comps"]), args.max_cells,
                   out, f"{jobs} at a time on {device}, {size.threads or 'default'} thread(s) each")
    if not todo:
        return 0

    run = run_cells(doc, out, todo, jobs=jobs, desc=f"grid {args.size}",
                    task_of=lambda cell, wd: (_run_one, (size, cell, wd, device)),
                    run_info={"size": args.size, "jobs": jobs, "device": device, "threads_per_cell": size.threads},
                    postfix=lambda rec: (f"{rec['key']} avg={rec['accuracy']['avg']:.3f} "
                                         f"ce_dense={rec['ce']['dense']:.3f} {rec['wall_s']:.0f}s"),
                    work_dir=args.work_dir, progress=not args.no_progress)
    return 1 if run["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
