"""Masker with fresh outputs against ``Masker(reuse_outputs=True)`` on packed batches whose length
changes every step, as in training; with a copy of the same output bytes into reused buffers as
the floor, all measured in the same run (interleaved rounds, medians).

    python benchmarks/bench_masker_reuse.py --tokens 1048576 --threads 1 --out benchmarks/results/masker_reuse.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import dllm_masks as dm


def batches(tokens: int, n: int, seed: int):
    """``n`` packed batches of 2048-token-ish documents, T within ±10 % of ``tokens``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        T = int(tokens * (0.9 + 0.2 * torch.rand((), generator=g).item()))
        lens = torch.randint(256, 3840, (T // 2048 + 2,), generator=g)
        lens = lens[torch.cumsum(lens, 0) <= T]
        lens = torch.cat([lens, torch.tensor([T - int(lens.sum())])])
        cu = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)]).to(torch.int32)
        ids = torch.randint(10, 100_000, (T,), generator=g)
        prompt = (lens.float() * 0.15).long()
        prio = torch.rand(T, generator=g) < 0.3
        out.append((ids, cu, prompt, prio))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--steps", type=int, default=8, help="batches per round (lengths differ)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=32, help="0: σ per sequence")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    K = a.block_size or None
    data = batches(a.tokens, a.steps, 0)
    kw = dict(weight=2.0, complementary=True, block_size=K, sigma=(0.3, 0.8), loss_weight="sigma", seed=0)
    makers = {"fresh": dm.Masker(3, **kw), "reuse_outputs": dm.Masker(3, reuse_outputs=True, **kw)}
    floor_pool = dm.OutputPool()
    times = {k: [] for k in ("fresh", "reuse_outputs", "copy_reused")}
    cpu = {k: [] for k in times}

    def run(name):
        t0, c0 = time.perf_counter(), time.process_time()
        for ids, cu, pl, prio in data:
            if name == "copy_reused":  # the outputs' bytes written into reused buffers
                o = floor_pool.take(ids, cu_seqlens=cu, complementary=True, loss_weight="sigma")
                for dst in (o.noisy_ids[:ids.numel()], o.noisy_ids[ids.numel():]):
                    dst.copy_(ids)
                o.labels.fill_(-100)
                o.masked.fill_(False)
                o.loss_weight.fill_(1.0)
            else:
                makers[name](ids, cu_seqlens=cu, prompt_lens=pl, priority=prio)
        return (time.perf_counter() - t0) / len(data), (time.process_time() - c0) / len(data)

    for name in times:  # warm-up: buffers grown, extension loaded
        run(name)
    for _ in range(a.rounds):
        for name in times:
            wall, proc = run(name)
            times[name].append(wall)
            cpu[name].append(proc)
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    ntok = statistics.mean(ids.numel() for ids, *_ in data)
    rows = {k: {"median_ms_per_step": 1e3 * v, "ns_per_token": 1e9 * v / ntok,
                "cpu_ns_per_token": 1e9 * mcpu[k] / ntok, "ratio_to_copy_reused": v / med["copy_reused"],
                "cpu_ratio_to_copy_reused": mcpu[k] / mcpu["copy_reused"]} for k, v in med.items()}
    rec = {"tokens_mean": ntok, "block_size": K, "threads": a.threads, "steps": a.steps, "rounds": a.rounds,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "backend": "cpp" if dm.available_backends().get("cpp") is None else "ref",
           "date": time.strftime("%Y-%m-%d"), "results": rows}
    for k, r in rows.items():
        print(f"{k:14s} {r['median_ms_per_step']:8.2f} ms/step  {r['ns_per_token']:6.2f} ns/token "
              f"[CPU {r['cpu_ns_per_token']:6.2f}]  {r['ratio_to_copy_reused']:5.2f}x copy_reused "
              f"[CPU {r['cpu_ratio_to_copy_reused']:5.2f}x]")
    print(f"fresh / reuse_outputs: {med['fresh'] / med['reuse_outputs']:.2f}x wall, "
          f"{mcpu['fresh'] / mcpu['reuse_outputs']:.2f}x CPU time")
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        old = json.load(open(a.out)) if os.path.exists(a.out) else []
        json.dump(old + [rec], open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
