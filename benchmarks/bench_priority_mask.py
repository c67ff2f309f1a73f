"""Benchmark of ``priority_mask`` against the eager reference, torch.compile of the reference, the
dFactory-style uniform masking trainers use today, and a copy floor measured in the same run.

    .venv/bin/python benchmarks/bench_priority_mask.py                      # 64K, 1M, 4M tokens
    .venv/bin/python benchmarks/bench_priority_mask.py --sizes 64K,1M,4M,16M --providers cpp,copy

Workload: sequences of 2048 tokens, prompts of 5-25 %, 25 % priority, σ ~ U[0.3, 0.8] per
sequence, w = 2, complementary view on, labels (no loss weights unless --loss-weight).
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
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

import dllm_masks as dm  # noqa: E402
from dllm_masks.reference import LOSS_WEIGHT_MODES, priority_mask_ref  # noqa: E402

PROVIDERS = ["ref", "compiled", "dfactory", "cpp", "triton", "copy", "ref-float", "cpp-float"]
# "<backend>-float": the same workload with float32 importance weights (benchmarks/common.py
# float_weights) instead of the boolean priority; "x bool" compares them with "<backend>".


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1)
    return int(s[:-1] if s[-1] in "KM" else s) * mult


def op_args(kw: dict, sampling: str, loss_weight):
    """The op's normalized positional arguments (what ``dm.priority_mask`` passes to a kernel)."""
    B = kw["cu_seqlens"].numel() - 1
    rng = torch.tensor([kw["seed"], 0], dtype=torch.int64, device=kw["input_ids"].device)
    return (kw["input_ids"], kw["cu_seqlens"], kw["sigma"], kw["priority"], None, kw["prompt_lens"], None, rng,
            kw["weight"], 0, B, sampling == "exact", kw["complementary"], LOSS_WEIGHT_MODES[loss_weight],
            kw["mask_token_id"])


def make_fn(provider: str, kw: dict, sampling: str, loss_weight, bytes_: dict):
    if provider.endswith("-float"):
        kwf = dict(kw, priority=C.float_weights(kw), weight=1.0)
        return lambda: dm.priority_mask(**kwf, sampling=sampling, loss_weight=loss_weight,
                                        backend=provider[:-len("-float")], validate=False)
    if provider in ("ref", "cpp", "triton"):
        return lambda: dm.priority_mask(**kw, sampling=sampling, loss_weight=loss_weight, backend=provider,
                                        validate=False)
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
    raise ValueError(f"--providers: unknown provider {provider!r}")


def available(provider: str, device: str):
    provider = provider[:-len("-float")] if provider.endswith("-float") else provider
    if provider in ("cpp", "triton"):
        why = dm.available_backends()[provider]
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
             if p not in skipped and not (p in ("dfactory", "copy") and s != samplings[0])]
    bar = tqdm(sizes, desc="bench", unit="size", file=sys.stderr) if tqdm else sizes
    for T in bar:
        kw = C.workload(T, id_dtype=torch.int64)
        torch._dynamo.reset()  # one compile per (size, sampling): stay under dynamo's recompile limit
        nbytes = C.essential_bytes(kw, loss_weight=args.loss_weight is not None)
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"T={T}: warm-up and compile")
        fns = {(s, p): make_fn(p, kw, s, args.loss_weight, nbytes) for s, p in cases}
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"T={T}: {len(fns)} cases, interleaved")
        times = C.time_interleaved(fns, min_reps=args.min_reps, budget_s=args.budget)
        for (sampling, provider), t in times.items():
            rows.append({"provider": provider, "sampling": sampling if provider not in ("dfactory", "copy") else None,
                         "T": kw["input_ids"].numel(), **C.summarize(t), **nbytes})
        del fns, kw
    # ratios within this run
    for r in rows:
        same = [x for x in rows if x["T"] == r["T"]]
        ref_name = "ref-float" if r["provider"].endswith("-float") else "ref"
        ref = next((x for x in same if x["provider"] == ref_name and x["sampling"] == (r["sampling"] or "bernoulli")), None)
        floor = next((x for x in same if x["provider"] == "copy"), None)
        dfac = next((x for x in same if x["provider"] == "dfactory"), None)
        r["ns_per_token"] = 1e6 * r["median_ms"] / r["T"]
        r["speedup_vs_ref"] = ref["median_ms"] / r["median_ms"] if ref else None
        boolean = next((x for x in same if r["provider"].endswith("-float") and x["provider"] == r["provider"][:-6]
                        and x["sampling"] == r["sampling"]), None)
        r["x_bool"] = r["median_ms"] / boolean["median_ms"] if boolean else None
        r["speedup_vs_dfactory"] = dfac["median_ms"] / r["median_ms"] if dfac else None
        r["x_copy_floor"] = r["median_ms"] / floor["median_ms"] if floor else None
        r["GBps"] = (r["read"] + r["write"]) / (r["median_ms"] * 1e-3) / 1e9
    return {"bench": "priority_mask", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": C.git_commit(), "machine": C.machine_info(), "device": "cpu",
            "config": {"seq_len": C.SEQ_LEN, "prio_rate": 0.25, "sigma": [0.3, 0.8], "weight": 2.0,
                       "complementary": True, "ids": "int64", "loss_weight": args.loss_weight, "validate": False,
                       "min_reps": args.min_reps, "budget_s": args.budget},
            "skipped": skipped, "results": rows}


def table(record: dict) -> str:
    head = (f"{'T':>9} {'provider':<10} {'sampling':<10} {'median ms':>10} {'ns/tok':>7} {'vs ref':>7} {'vs dfac':>8} "
            f"{'x floor':>8} {'GB/s':>6} {'x bool':>7}")
    lines = [head, "-" * len(head)]
    f = lambda v, fmt: (fmt % v) if v is not None else "-"  # noqa: E731
    for r in record["results"]:
        lines.append(f"{r['T']:>9} {r['provider']:<10} {r['sampling'] or '-':<10} {r['median_ms']:>10.3f} "
                     f"{r['ns_per_token']:>7.2f} {f(r['speedup_vs_ref'], '%.1fx'):>7} {f(r['speedup_vs_dfactory'], '%.1fx'):>8} "
                     f"{f(r['x_copy_floor'], '%.2f'):>8} {r['GBps']:>6.2f} {f(r.get('x_bool'), '%.2f'):>7}")
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
        style = "--" if prov == "copy" else "-"
        a1.plot([r["T"] for r in rs], [r["ns_per_token"] for r in rs], style, marker="o", label=label)
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("tokens per batch (T)")
    a1.set_ylabel("ns per token (median)")
    a1.set_title("time per token (lower is better)")
    a1.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=8)
    sizes = sorted({r["T"] for r in record["results"]})
    bars = [k for k in keys if k[0] not in ("ref", "ref-float", "copy")]
    width = 0.8 / max(1, len(bars))
    for i, (prov, samp) in enumerate(bars):
        ys = []
        for T in sizes:
            r = next((r for r in record["results"] if r["T"] == T and r["provider"] == prov and r["sampling"] == samp), None)
            ys.append(r["speedup_vs_ref"] if r and r["speedup_vs_ref"] else 0)
        a2.bar([j + i * width for j in range(len(sizes))], ys, width,
               label=prov + (f" ({samp})" if samp and samp != "bernoulli" else ""))
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(sizes))])
    a2.set_xticklabels([f"{T / (1 << 20):g}M" if T >= 1 << 20 else f"{T >> 10}K" for T in sizes])
    a2.set_ylabel("speedup over the eager reference")
    a2.set_title("speedup vs eager reference (same sampling)")
    a2.legend(fontsize=8)
    m = record["machine"]
    fig.suptitle(f"priority_mask, {record['config']['seq_len']}-token sequences, w=2, complementary — "
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
    ap.add_argument("--min-reps", type=int, default=7)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed repeats per case")
    ap.add_argument("--out", type=Path, default=C.RESULTS / "priority_mask.json")
    ap.add_argument("--plot", type=Path, default=C.RESULTS / "priority_mask.png")
    ap.add_argument("--no-save", action="store_true", help="print only; do not append to the JSON or plot")
    args = ap.parse_args(argv)
    record = run(args)
    print(table(record))
    if not args.no_save:
        C.append_results(args.out, record)
        plot(record, args.plot)
        print(f"appended to {args.out}; plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
