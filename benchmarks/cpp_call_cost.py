"""Process CPU time of one raw call of the C++ op ``torch.ops.dllm_masks.priority_mask.out``, one thread.

The arguments are normalized and the buffers checked once, outside the timing
(``dllm_masks.ops.normalize`` / ``check_out``), so each call is the dispatcher, the C++ argument
checks and the kernel on T tokens of the benchmark workload (σ per sequence and per block of 32):

    .venv/bin/python benchmarks/cpp_call_cost.py

Prints the median over --repeats batches of --calls calls (and the fastest batch) in µs per call.
To compare two commits, run it in a checkout of each, alternately (docs/performance.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
from bench_priority_mask import with_block_size  # noqa: E402

import dllm_masks as dm  # noqa: E402
from dllm_masks import ops  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,16384", help="tokens per call, comma-separated")
    ap.add_argument("--calls", type=int, default=4000, help="calls per batch at 2048 tokens (scaled down above)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    kf = ops.kernel_for("cpp", torch.device("cpu"), out=True)
    for T in (int(x) for x in args.sizes.split(",")):
        for K in (0, 32):
            kw = with_block_size(C.workload(T), K or None)
            out = dm.empty_masked_batch(kw["input_ids"], cu_seqlens=kw["cu_seqlens"], block_size=kw.get("block_size"),
                                        complementary=True, loss_weight=None)
            call = ops.normalize(**kw, validate=False)
            bufs = dict(zip(ops.OUT_NAMES, ops.check_out(out, call)))
            n = max(10, args.calls * 2048 // T)
            for _ in range(n // 10):
                kf(*call.args, **bufs)
            per_call = []
            for _ in range(args.repeats):
                t0 = time.process_time()
                for _ in range(n):
                    kf(*call.args, **bufs)
                per_call.append((time.process_time() - t0) / n * 1e6)
            what = f"σ per block of {K}" if K else "σ per sequence"
            print(f"T={T:7d} {what:20s} {statistics.median(per_call):8.2f} µs/call (fastest batch {min(per_call):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
