"""Benchmark of ``priority_mask`` against the eager reference, torch.compile of the reference, the
dFactory-style uniform masking trainers use today, and a copy floor measured in the same run.

    .venv/bin/python benchmarks/bench_priority_mask.py                      # 64K, 1M, 4M tokens
    .venv/bin/python benchmarks/bench_priority_mask.py --sizes 64K,1M,4M,16M --providers cpp,copy
    .venv/bin/python benchmarks/bench_priority_mask.py --threads 2 --block-size 32 --samplings bernoulli \
        --sizes 16K,64K,256K,1M,4M,16M --providers cpp,out,copy,copy_reused --out benchmarks/results/out_variant.json

Workload: sequences of 2048 tokens, prompts of 5-25 %, 25 % priority, σ ~ U[0.3, 0.8] per
sequence (or per block of ``--block-size`` positions), w = 2, complementary view on, labels (no loss
weights unless --loss-weight). ``out`` is the C++ kernel writing into buffers reused across calls
(``out=``); ``plan`` the same through a ``dm.MaskPlan`` (arguments checked once, not per call);
``copy`` copies the op's bytes into a fresh buffer, ``copy_reused`` into a reused one
(``Tensor.copy_``): the floors of the allocating and the reusing calls.
Providers are timed in interleaved rounds (every provider in turn, round after round), so load
from other processes hits them alike; reports medians of repeats (after warm-up) and ratios
measured in the same run; appends the run to
``benchmarks/results/priority_mask.json`` (machine, versions, commit) and redraws
``benchmarks/results/priority_mask.png``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

import dllm_masks as dm  # noqa: E402
from dllm_masks.reference import LOSS_WEIGHT_MODES, priority_mask_ref  # noqa: E402

PROVIDERS = ["ref", "compiled", "dfactory", "cpp", "out", "plan", "triton", "copy", "copy_reused", "ref-float", "cpp-float"]
FLOORS = ("copy", "copy_reused")
# "<backend>-float": the same workload with float32 importance weights (benchmarks/common.py
# float_weights) instead of the boolean priority; "x bool" compares them with "<backend>".


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
    return int(s[:-1] if s[-1] in "KM" else s) * mult


def op_args(kw: dict, sampling: str, loss_weight):
    """The op's normalized positional arguments (what ``dm.priority_mask`` passes to a kernel)."""
    return tuple(dm.ops.normalize(**kw, sampling=sampling, loss_weight=loss_weight, validate=False).args)


def with_block_size(kw: dict, block_size) -> dict:
    """The workload with one σ ~ U[0.3, 0.8] per block of ``block_size`` positions (None: per sequence)."""
    if not block_size:
        return kw
    S = dm.num_segments(kw["cu_seqlens"], block_size)
    g = torch.Generator().manual_seed(1)
    return dict(kw, block_size=block_size, sigma=(0.3 + 0.5 * torch.rand(S, generator=g)).to(kw["input_ids"].device))


def make_fn(provider: str, kw: dict, sampling: str, loss_weight, bytes_: dict):
    if provider.endswith("-float"):
        kwf = dict(kw, priority=C.float_weights(kw), weight=1.0)
        return lambda: dm.priority_mask(**kwf, sampling=sampling, loss_weight=loss_weight,
                                        backend=provider[:-len("-float")], validate=False)
    if provider in ("ref", "cpp", "triton"):
        return lambda: dm.priority_mask(**kw, sampling=sampling, loss_weight=loss_weight, backend=provider,
                                        validate=False)
    if provider == "out":
        shape_kw = {k: kw.get(k) for k in ("cu_seqlens", "block_size", "complementary")}
        out = dm.empty_masked_batch(kw["input_ids"], **shape_kw, loss_weight=loss_weight)
        return lambda: dm.priority_mask(**kw, sampling=sampling, loss_weight=loss_weight, backend="cpp",
                                        validate=False, out=out)
    if provider == "plan":  # checked once (dm.MaskPlan), each call only runs the kernel into its buffers
        plan = dm.MaskPlan(**kw, sampling=sampling, loss_weight=loss_weight, backend="cpp", validate=False)
        return plan.run
    if provider == "compiled":
        compiled = torch.compile(priority_mask_ref, dynamic=False)
        args = op_args(kw, sampling, loss_weight)
        return lambda: compiled(*args)
    if provider == "dfactory":
        g = torch.Generator(device=kw["input_ids"].device).manual_seed(0)
        return lambda: C.dfactory_mask(kw["input_ids"], kw["sigma"], kw["prompt_lens"], kw["mask_token_id"],
                                       generator=g)
    if provider == "copy":
        buf = torch.empty((bytes_["read"] + bytes_["write"]) // 2, dtype=torch.uint8)
        buf.fill_(1)
        return buf.clone
    if provider == "copy_reused":
        src = torch.ones((bytes_["read"] + bytes_["write"]) // 2, dtype=torch.uint8)
        dst = torch.zeros_like(src)
        return lambda: dst.copy_(src)
    raise ValueError(f"--providers: unknown provider {provider!r}")


def available(provider: str, device: str):
    provider = provider[:-len("-float")] if provider.endswith("-float") else provider
    if provider in ("cpp", "out", "plan", "triton"):
        why = dm.available_backends()["cpp" if provider in ("out", "plan") else provider]
        if why:
            return why
        if provider == "triton" and device != "cuda":
            return "timing the Triton interpreter on a CPU means nothing (see benchmarks/gpu_check.py)"
    return None


def run(args) -> dict:
    torch.set_num_threads(args.threads) if args.threads else None
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    providers = [p for p in args.providers.split(",") if p]
    for p in providers:
        if p not in PROVIDERS:
            raise SystemExit(f"--providers: unknown provider {p!r} (choose from {', '.join(PROVIDERS)})")
    samplings = args.samplings.split(",")
    rows = []
    skipped = {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    for p in providers:
        why = available(p, "cpu")
        if why:
            skipped[p] = why
    cases = [(s, p) for s in samplings for p in providers
             if p not in skipped and not (p in ("dfactory",) + FLOORS and s != samplings[0])]
    bar = tqdm(sizes, desc="bench", unit="size", file=sys.stderr) if tqdm else sizes
    for T in bar:
        kw = with_block_size(C.workload(T, id_dtype=torch.int64, uneven=args.uneven), args.block_size)
        torch._dynamo.reset()  # one compile per (size, sampling): stay under dynamo's recompile limit
        nbytes = C.essential_bytes(kw, loss_weight=args.loss_weight is not None)
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"T={T}: warm-up and compile")
        fns = {(s, p): make_fn(p, kw, s, args.loss_weight, nbytes) for s, p in cases}
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"T={T}: {len(fns)} cases, interleaved")
        cpu = {}
        times = C.time_interleaved(fns, min_reps=args.min_reps, budget_s=args.budget, cpu_times=cpu)
        for (sampling, provider), t in times.items():
            rows.append({"provider": provider, "sampling": sampling if provider not in ("dfactory",) + FLOORS else None,
                         "T": kw["input_ids"].numel(), **C.summarize(t), **nbytes,
                         "cpu_median_ms": 1e3 * statistics.median(cpu[(sampling, provider)])})
        del fns, kw
    # ratios within this run
    for r in rows:
        same = [x for x in rows if x["T"] == r["T"]]
        ref_name = "ref-float" if r["provider"].endswith("-float") else "ref"
        ref = next((x for x in same if x["provider"] == ref_name and x["sampling"] == (r["sampling"] or "bernoulli")), None)
        floor = next((x for x in same if x["provider"] == "copy"), None)
        floor_reused = next((x for x in same if x["provider"] == "copy_reused"), None)
        dfac = next((x for x in same if x["provider"] == "dfactory"), None)
        r["ns_per_token"] = 1e6 * r["median_ms"] / r["T"]
        r["speedup_vs_ref"] = ref["median_ms"] / r["median_ms"] if ref else None
        boolean = next((x for x in same if r["provider"].endswith("-float") and x["provider"] == r["provider"][:-6]
                        and x["sampling"] == r["sampling"]), None)
        r["x_bool"] = r["median_ms"] / boolean["median_ms"] if boolean else None
        r["speedup_vs_dfactory"] = dfac["median_ms"] / r["median_ms"] if dfac else None
        r["x_copy_floor"] = r["median_ms"] / floor["median_ms"] if floor else None
        r["x_copy_reused"] = r["median_ms"] / floor_reused["median_ms"] if floor_reused else None
        r["x_copy_reused_min"] = r["min_ms"] / floor_reused["min_ms"] if floor_reused else None
        r["x_copy_reused_cpu"] = r["cpu_median_ms"] / floor_reused["cpu_median_ms"] if floor_reused else None
        r["x_bool_cpu"] = r["cpu_median_ms"] / boolean["cpu_median_ms"] if boolean else None
        r["ns_per_token_min"] = 1e6 * r["min_ms"] / r["T"]
        r["GBps"] = (r["read"] + r["write"]) / (r["median_ms"] * 1e-3) / 1e9
    return {"bench": "priority_mask", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": C.git_commit(), "machine": C.machine_info(), "device": "cpu",
            "flatness": flatness(rows),
            "config": {"seq_len": C.SEQ_LEN, "uneven": args.uneven, "block_size": args.block_size, "prio_rate": 0.25, "sigma": [0.3, 0.8],
                       "weight": 2.0, "env": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)},
                       "complementary": True, "ids": "int64", "loss_weight": args.loss_weight, "validate": False,
                       "min_reps": args.min_reps, "budget_s": args.budget},
            "skipped": skipped, "results": rows}


ENV_PREFIXES = ("MALLOC_", "LD_PRELOAD", "OMP_", "DLLM_MASKS_")


def flatness(rows: list) -> dict:
    """Per (provider, sampling): ns per token at each size, from the median, from the fastest
    repeat and from the median process CPU time, and the largest deviation of each from its
    median over the sizes, in percent (the target for ``out``: within ±25 % from 16K to 16M
    tokens), and the slowest size's ns per token over the largest size's. On a loaded machine the fastest repeat is the one least disturbed by other
    processes, and CPU time leaves out the waits for a core."""
    res = {}
    for key in sorted({(r["provider"], r["sampling"] or "-") for r in rows}):
        rs = sorted((r for r in rows if (r["provider"], r["sampling"] or "-") == key), key=lambda r: r["T"])
        entry = {"T": [r["T"] for r in rs]}
        for stat, field in (("median", "median_ms"), ("min", "min_ms"), ("cpu", "cpu_median_ms")):
            ns = [1e6 * r[field] / r["T"] for r in rs]
            mid = statistics.median(ns)
            entry[f"ns_per_token_{stat}"] = [round(x, 3) for x in ns]
            entry[f"max_dev_pct_{stat}"] = round(100 * max(abs(x - mid) / mid for x in ns), 1)
            # what the slowest size pays over the largest (streaming) one: a fixed cost per call
            # or first-touch page faults show here; caches make small sizes faster, not slower
            entry[f"max_over_largest_{stat}"] = round(max(ns) / ns[-1], 3)
        res["/".join(key)] = entry
    return res


def table(record: dict) -> str:
    head = (f"{'T':>9} {'provider':<11} {'sampling':<10} {'median ms':>10} {'ns/tok':>7} {'min ns/tok':>10} {'vs ref':>7} "
            f"{'vs dfac':>8} {'x floor':>8} {'x reused':>8} {'(min)':>6} {'GB/s':>6} {'x bool':>7} {'cpu ns/t':>9} "
            f"{'(reused)':>9} {'(bool)':>8}")
    lines = [head, "-" * len(head)]
    f = lambda v, fmt: (fmt % v) if v is not None else "-"  # noqa: E731
    for r in record["results"]:
        lines.append(f"{r['T']:>9} {r['provider']:<11} {r['sampling'] or '-':<10} {r['median_ms']:>10.3f} "
                     f"{r['ns_per_token']:>7.2f} {r['ns_per_token_min']:>10.2f} {f(r['speedup_vs_ref'], '%.1fx'):>7} "
                     f"{f(r['speedup_vs_dfactory'], '%.1fx'):>8} {f(r['x_copy_floor'], '%.2f'):>8} "
                     f"{f(r.get('x_copy_reused'), '%.2f'):>8} {f(r.get('x_copy_reused_min'), '%.2f'):>6} {r['GBps']:>6.2f} "
                     f"{f(r.get('x_bool'), '%.2f'):>7} {1e6 * r['cpu_median_ms'] / r['T']:>9.2f} "
                     f"{f(r.get('x_copy_reused_cpu'), '%.2f'):>9} {f(r.get('x_bool_cpu'), '%.2f'):>8}")
    for key, fl in record.get("flatness", {}).items():
        for stat in ("median", "min", "cpu"):
            lines.append(f"flatness {key:<22} {stat:<6} ns/token {fl[f'ns_per_token_{stat}']} "
                         f"(largest deviation from their median {fl[f'max_dev_pct_{stat}']:.0f} %; "
                         f"slowest / largest size {fl[f'max_over_largest_{stat}']:.2f}x)")
    for p, why in record["skipped"].items():
        lines.append(f"skipped {p}: {why}")
    return "\n".join(lines)


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({(r["provider"], r["sampling"]) for r in record["results"]}, key=lambda k: (PROVIDERS.index(k[0]), k[1] or ""))
    for prov, samp in keys:
        rs = sorted([r for r in record["results"] if r["provider"] == prov and r["sampling"] == samp], key=lambda r: r["T"])
        label = prov + (f" ({samp})" if samp and samp != "bernoulli" else "")
        style = "--" if prov in FLOORS else "-"
        a1.plot([r["T"] for r in rs], [r["ns_per_token"] for r in rs], style, marker="o", label=label)
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("tokens per batch (T)")
    a1.set_ylabel("ns per token (median)")
    a1.set_title("time per token (lower is better)")
    a1.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    sizes = sorted({r["T"] for r in record["results"]})
    bars = [k for k in keys if k[0] not in ("ref", "ref-float") + FLOORS]
    width = 0.8 / max(1, len(bars))
    # Without the reference in the run: time over the reused-buffer copy floor instead.
    vs_ref = any(r["provider"] == "ref" for r in record["results"])
    field = "speedup_vs_ref" if vs_ref else "x_copy_reused"
    for i, (prov, samp) in enumerate(bars):
        ys = []
        for T in sizes:
            r = next((r for r in record["results"] if r["T"] == T and r["provider"] == prov and r["sampling"] == samp), None)
            ys.append(r[field] if r and r.get(field) else 0)
        a2.bar([j + i * width for j in range(len(sizes))], ys, width,
               label=prov + (f" ({samp})" if samp and samp != "bernoulli" else ""))
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(sizes))])
    a2.set_xticklabels([f"{T / (1 << 20):g}M" if T >= 1 << 20 else f"{T >> 10}K" for T in sizes])
    a2.set_ylabel("speedup over the eager reference" if vs_ref else "time / copy into reused buffers (median)")
    a2.set_title("speedup vs eager reference (same sampling)" if vs_ref else "ratio to the reused-buffer copy floor")
    a2.legend(fontsize=8)
    m = record["machine"]
    K = record["config"].get("block_size")
    env = " ".join(f"{k}={v}" for k, v in record["config"].get("env", {}).items())
    lengths = (f"uneven sequences (mean {record['config']['seq_len']} tokens)" if record["config"].get("uneven")
               else f"{record['config']['seq_len']}-token sequences")
    fig.suptitle(f"priority_mask, {lengths}, σ per "
                 f"{'block of ' + str(K) if K else 'sequence'}, w=2, complementary {env} — "
                 f"{m.get('cpu') or m['platform']}, {m['threads']} threads, torch {m['torch']}, {record['commit']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64K,1M,4M")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--samplings", default="bernoulli,exact")
    ap.add_argument("--loss-weight", default=None, choices=[None, "sigma", "token"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--block-size", type=int, default=None, help="one σ per block of this many positions")
    ap.add_argument("--uneven", action="store_true",
                    help="sequences of 256-3840 tokens and T - 1 tokens in all (as packing gives) instead of 2048 each")
    ap.add_argument("--min-reps", type=int, default=7)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed repeats per case")
    ap.add_argument("--out", type=Path, default=C.RESULTS / "priority_mask.json")
    ap.add_argument("--plot", type=Path, default=None,
                    help="default: the --out file's path with .png (benchmarks/results/priority_mask.png)")
    ap.add_argument("--no-save", action="store_true", help="print only; do not append to the JSON or plot")
    args = ap.parse_args(argv)
    record = run(args)
    print(table(record))
    if not args.no_save:
        C.append_results(args.out, record)
        if args.plot is None:  # next to the records, never over the headline plot of another file
            args.plot = args.out.with_suffix(".png")
        plot(record, args.plot)
        print(f"appended to {args.out}; plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
