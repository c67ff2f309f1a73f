"""Shared benchmark plumbing: workloads, baselines, timing, machine info, JSON results and plots.

Imported by ``bench_priority_mask.py`` (CPU) and ``gpu_check.py`` (a GPU) so both measure the
same workload against the same baselines.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SEQ_LEN = 2048
MASK_ID = 126336  # LLaDA's [MASK]


def workload(T: int, *, seq_len: int = SEQ_LEN, prio_rate: float = 0.25, seed: int = 0, device="cpu",
             id_dtype=torch.int64, uneven: bool = False) -> dict:
    """The benchmark batch: T tokens packed in sequences of ``seq_len`` with prompts of 5-25 %,
    ``prio_rate`` priority tokens and σ ~ U[0.3, 0.8] per sequence. Returns ``priority_mask`` kwargs.

    ``uneven``: sequences of 1/8 to 15/8 ``seq_len`` tokens (uniform), and T - 1 tokens in all,
    as packing gives: no sequence, and not the complement view (which starts at offset T), starts
    on a cache-line boundary by design."""
    g = torch.Generator().manual_seed(seed)
    B = max(1, T // seq_len)
    if uneven:
        lens = torch.randint(seq_len // 8, 15 * seq_len // 8 + 1, (2 * B + 2,), generator=g)
        lens = lens[torch.cumsum(lens, 0) < T - 1]
        lens = torch.cat([lens, torch.tensor([T - 1 - int(lens.sum())])])
        B, T = lens.numel(), T - 1
        cu = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)]).to(torch.int32)
    else:
        lens = torch.full((B,), seq_len)
        T = B * seq_len
        cu = torch.arange(B + 1, dtype=torch.int32) * seq_len
    kw = dict(
        input_ids=torch.randint(0, 126000, (T,), generator=g).to(id_dtype),
        cu_seqlens=cu,
        prompt_lens=(torch.rand(B, generator=g) * 0.2 * lens + 0.05 * lens).long(),
        priority=torch.rand(T, generator=g) < prio_rate,
        sigma=0.3 + 0.5 * torch.rand(B, generator=g),
    )
    kw = {k: v.to(device) for k, v in kw.items()}
    kw.update(weight=2.0, complementary=True, mask_token_id=MASK_ID, seed=1234)
    return kw


def float_weights(kw: dict, *, seed: int = 1) -> torch.Tensor:
    """Graded float32 importance weights for a workload (docs/importance.md): 1 + 4u on its priority
    tokens and 0.25 + 0.75u elsewhere (u uniform), so every segment takes the ≥ 3-level path."""
    pr = kw["priority"]
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(pr.numel(), generator=g).to(pr.device)
    return torch.where(pr, 1 + 4 * u, 0.25 + 0.75 * u).to(torch.float32)


def dfactory_mask(input_ids: torch.Tensor, t: torch.Tensor, prompt_lens: torch.Tensor, mask_id: int,
                  seq_len: int = SEQ_LEN, generator: Optional[torch.Generator] = None):
    """The per-sequence uniform Bernoulli masking trainers use today (dFactory / LLaDA SFT style):
    ``rand < t`` per sequence, prompt excluded, ``torch.where``; one view, noisy ids and labels.

    ``input_ids`` [B·seq_len] is viewed as a padded [B, seq_len] batch.
    """
    ids = input_ids.view(-1, seq_len)
    pos = torch.arange(seq_len, device=ids.device)
    masked = torch.rand(ids.shape, generator=generator, device=ids.device) < t[:, None]
    masked &= pos[None, :] >= prompt_lens[:, None]
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    return noisy, labels, masked


def essential_bytes(kw: dict, *, loss_weight: bool = False) -> Dict[str, int]:
    """Bytes the op must read (ids, priority, prompt lengths, σ, offsets) and write (per view:
    noisy ids, mask, int64 labels, float32 weights if asked)."""
    ids = kw["input_ids"]
    T = ids.numel()
    V = 2 if kw.get("complementary") else 1
    read = T * ids.element_size() + T + sum(kw[k].numel() * kw[k].element_size()
                                            for k in ("prompt_lens", "sigma", "cu_seqlens"))
    write = V * T * (ids.element_size() + 1 + 8 + (4 if loss_weight else 0))
    return {"read": read, "write": write}


def time_cpu(fn: Callable[[], object], *, min_reps: int = 5, max_reps: int = 200, budget_s: float = 3.0,
             warmup: int = 2) -> List[float]:
    """Wall times (seconds) of ``fn`` after warm-up: at least ``min_reps``, until ``budget_s`` is spent."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_interleaved(fns: Dict[str, Callable[[], object]], *, min_reps: int = 5, budget_s: float = 3.0,
                     warmup: int = 2, slice_s: float = 0.05, max_reps: int = 2000,
                     cpu_times: Optional[Dict[str, List[float]]] = None) -> Dict[str, List[float]]:
    """Wall times of several functions measured in interleaved rounds.

    With ``cpu_times`` (a dict), the process CPU time of each call (every thread's, kernel time
    included: ``time.process_time``) goes there too, under the same names. On a shared machine
    it leaves out the time a call waits for a core.

    Each round times every function in turn (a fast one several times, up to about ``slice_s``), so a
    burst of load from other processes hits every provider alike and the ratios between them stay
    meaningful on a shared machine. Rounds continue until every function has ``min_reps`` samples and
    ``budget_s`` per function has been spent.
    """
    est = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            est[name] = time.perf_counter() - t0
    times: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    deadline = budget_s * len(fns)
    while True:
        for name, fn in fns.items():
            if len(times[name]) >= max_reps:
                continue
            for _ in range(max(1, min(50, int(slice_s / max(est[name], 1e-6))))):
                c0 = time.process_time()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                if cpu_times is not None:
                    cpu_times.setdefault(name, []).append(time.process_time() - c0)
        if all(len(t) >= min_reps for t in times.values()) and time.perf_counter() - start >= deadline:
            break
        if all(len(t) >= max_reps for t in times.values()):
            break
    return times


def summarize(times: List[float]) -> dict:
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return {"median_ms": 1e3 * statistics.median(times), "p20_ms": 1e3 * q[0], "p80_ms": 1e3 * q[-1],
            "min_ms": 1e3 * min(times), "reps": len(times)}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def machine_info(device: str = "cpu") -> dict:
    info = {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        info["cpu"] = platform.processor()
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def append_results(path: Path, record: dict) -> None:
    """Append one run to a JSON list file (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append(record)
    path.write_text(json.dumps(runs, indent=1) + "\n")
