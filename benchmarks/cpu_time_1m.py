"""Process CPU time per call of the C++ kernel at 1M tokens, one thread: ``out=`` for σ per
sequence and per block of K ∈ {1, 2, 3, 4, 32}, the allocating call with boolean and float
weights in both samplings, ``out=`` with float weights, and the reused-buffer copy floor, in
interleaved rounds.

    .venv/bin/python benchmarks/cpu_time_1m.py --rounds 12 --json cpu_time.json

CPU time (``time.process_time``: every thread's, kernel time included) leaves out the time a
call waits for a core, which on a shared machine is most of the noise in wall-clock medians. To
compare two commits, run it in a checkout of each, alternately, a few times, and compare the
medians (docs/performance.md, "Before and after").
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
from bench_priority_mask import with_block_size  # noqa: E402

import dllm_masks as dm  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--json", type=Path, default=None, help="write {case: CPU ns per token} here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    T = args.tokens
    fns = {}
    for K in (0, 1, 2, 3, 4, 32):
        kw = with_block_size(C.workload(T), K or None)
        out = dm.empty_masked_batch(kw["input_ids"], cu_seqlens=kw["cu_seqlens"], block_size=kw.get("block_size"),
                                    complementary=True, loss_weight=None)
        fns[f"out K={K}"] = (lambda kw=kw, out=out: dm.priority_mask(**kw, backend="cpp", validate=False, out=out))
    kw = C.workload(T)
    kwf = dict(kw, priority=C.float_weights(kw), weight=1.0)
    outf = dm.empty_masked_batch(kw["input_ids"], cu_seqlens=kw["cu_seqlens"], complementary=True, loss_weight=None)
    for smp in ("bernoulli", "exact"):
        fns[f"cpp {smp}"] = (lambda s=smp: dm.priority_mask(**kw, sampling=s, backend="cpp", validate=False))
        fns[f"cpp-float {smp}"] = (lambda s=smp: dm.priority_mask(**kwf, sampling=s, backend="cpp", validate=False))
        fns[f"out-float {smp}"] = (lambda s=smp: dm.priority_mask(**kwf, sampling=s, backend="cpp", validate=False,
                                                                 out=outf))
    nb = C.essential_bytes(kw)
    src = torch.ones((nb["read"] + nb["write"]) // 2, dtype=torch.uint8)
    dst = torch.zeros_like(src)
    fns["copy_reused"] = lambda: dst.copy_(src)
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(args.rounds):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    res = {k: 1e9 * statistics.median(v) / T for k, v in times.items()}
    for k, v in res.items():
        print(f"{k:22s} {v:8.2f} CPU ns/token")
    if args.json:
        args.json.write_text(json.dumps({"commit": C.git_commit(), "machine": C.machine_info(), "ns_per_token": res},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
