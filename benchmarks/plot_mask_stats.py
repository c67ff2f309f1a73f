"""Masked run lengths and dense-span collapse for w ∈ {1, 2, 5, ∞} (dm.mask_stats), as a picture.

    .venv/bin/python benchmarks/plot_mask_stats.py        # writes benchmarks/results/mask_stats_runs.png

Workload: 64 sequences of 512 tokens, dense spans of geometric length (mean 6) covering about a
quarter of the tokens, σ ~ U[0.3, 0.8] per sequence, Bernoulli sampling with the complement,
seed 0. Left: share of masked tokens that lie in a masked run of length n or more (view 0). Right:
dense spans masked whole and masked dense tokens whose two neighbours are masked too, per view.
Also the float-weights path with graded weights (1 + 4·u on dense tokens) for comparison.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import dllm_masks as dm

OUT = Path(__file__).resolve().parent / "results" / "mask_stats_runs.png"


def workload(seed: int = 0, B: int = 64, L: int = 512):
    g = torch.Generator().manual_seed(seed)
    T = B * L
    ids = torch.randint(5, 30000, (T,), generator=g)
    cu = torch.arange(B + 1, dtype=torch.int32) * L
    # alternate gaps and dense spans of geometric lengths (means 18 and 6: ~25 % dense)
    lens = torch.distributions.Geometric(probs=torch.tensor([1 / 18, 1 / 6])).sample((T // 4,)).long() + 1
    flags = torch.tensor([False, True]).repeat(T // 4)
    prio = torch.repeat_interleave(flags, lens.reshape(-1))[:T]
    sigma = 0.3 + 0.5 * torch.rand(B, generator=g)
    graded = torch.where(prio, 1 + 4 * torch.rand(T, generator=g), torch.ones(T)).to(torch.float32)
    return ids, cu, prio, sigma, graded


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    ids, cu, prio, sigma, graded = workload()
    runs = {}
    rows = []
    cases = [(f"w = {w:g}", dict(priority=prio, weight=w)) for w in (1.0, 2.0, 5.0, math.inf)]
    cases.append(("float 1 + 4u", dict(priority=graded)))
    for name, kw in cases:
        out = dm.priority_mask(ids, sigma, cu_seqlens=cu, mask_token_id=0, seed=0, complementary=True, **kw)
        st = dm.mask_stats(out, priority=prio)
        h = st[0].run_hist.double()
        n = torch.arange(h.numel(), dtype=torch.float64)
        share = (h * n)[1:] / (h * n).sum()
        runs[name] = (n[1:], share.flip(0).cumsum(0).flip(0))  # share in runs of length >= n
        rows.append((name, st[0].run_mean, st[0].dense_spans_whole, st[0].dense_both_neighbours,
                     st[1].dense_spans_whole, st[1].dense_both_neighbours))

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, (n, share) in runs.items():
        keep = share > 0
        a.step(n[keep].numpy(), share[keep].numpy(), where="post", label=name)
    a.set_yscale("log")
    a.set_xlim(0.5, 40)
    a.set_xlabel("masked run length n (tokens)")
    a.set_ylabel("share of masked tokens in runs of length >= n")
    a.set_title("view 0: masked run lengths")
    a.legend()
    x = torch.arange(len(rows)).numpy()
    width = 0.2
    for i, (label, col) in enumerate([("spans masked whole, view 0", 2), ("dense with both neighbours, view 0", 3),
                                      ("spans masked whole, view 1", 4), ("dense with both neighbours, view 1", 5)]):
        b.bar(x + (i - 1.5) * width, [r[col] for r in rows], width, label=label)
    b.set_xticks(x)
    b.set_xticklabels([r[0] for r in rows], fontsize=8)
    b.set_ylim(0, 1.05)
    b.set_title("dense tokens (64 x 512 tokens, sigma ~ U[0.3, 0.8])")
    b.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"{'case':<14} {'mean run':>8} {'whole0':>7} {'both0':>7} {'whole1':>7} {'both1':>7}")
    for r in rows:
        print(f"{r[0]:<14} {r[1]:8.2f} {r[2]:7.3f} {r[3]:7.3f} {r[4]:7.3f} {r[5]:7.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
