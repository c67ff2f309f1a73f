#!/usr/bin/env python
"""The grid's results as a markdown table (mean ± standard error over seeds, next to the paper's
figures for the same cells) and a plot of accuracy and held-out cross-entropy against w, with and
without the complementary view (the paper's Figures 3 and 4).

    python benchmarks/quality/report.py                                   # results/grid_reduced.json
    python benchmarks/quality/report.py results.json --md REPORT.md --png grid.png

Every number of ours comes from the results JSON. The paper's figures are quoted from its text
(:data:`PAPER`); they are averages over HumanEval, MBPP, GSM8K and MATH500 for LLaDA-2.0-mini, so
only their differences are comparable with ours, not their levels.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from quality.run_grid import ANY, load_results  # noqa: E402

__all__ = ["PAPER", "summarize", "paired", "markdown", "plot", "report_args", "main"]

# The paper's AVG (%) for the cells it reports, keyed (w, complement, fraction). Its "10%" data is
# Code 10% + Math 50% annotated (Table 1, Figure 3); its "100%" row annotates all code (Table 2).
PAPER: Dict[Tuple[str, bool, str], Tuple[float, str]] = {
    ("1", True, ANY): (55.32, "Table 1 Baseline (uniform masking; whether it used the complement is not said)"),
    ("2", True, "0.1"): (59.19, "Table 1 / Fig. 3 (Table 2's 10% run: 59.45)"),
    ("0.5", True, "0.1"): (59.22, "Fig. 3 text"),
    ("5", True, "0.1"): (56.05, "Fig. 3 text: w = 5 or 0.1, 'approximately'"),
    ("inf", True, "0.1"): (57.35, "Table 2 Hard Sample, 10%"),
    ("2", True, "1"): (58.48, "Table 2 Soft, 100%"),
    ("2", False, "0.1"): (57.0, "Fig. 4 text, '≈'"),
    ("0.5", False, "0.1"): (58.5, "Fig. 4 text, '≈'"),
}
PAPER_BASELINE = 55.32
WEIGHT_ORDER = ["0.5", "1", "2", "5", "inf"]
METRICS = {  # name: (path in a cell record, scale, label)
    "math": (("accuracy", "math"), 100.0, "math acc. %"),
    "code": (("accuracy", "code"), 100.0, "code pass@1 %"),
    "avg": (("accuracy", "avg"), 100.0, "avg %"),
    "ce_dense": (("ce", "dense"), 1.0, "CE dense (nats)"),
    "ce_other": (("ce", "other"), 1.0, "CE other (nats)"),
}


def _get(rec: dict, path) -> Optional[float]:
    x = rec
    for p in path:
        if not isinstance(x, dict) or p not in x:
            return None
        x = x[p]
    return None if x is None else float(x)


def _frac_name(f) -> str:
    return ANY if f == ANY else f"{float(f):g}"


def _group_key(c: dict) -> Tuple[str, bool, str]:
    return (c["weight"], bool(c["complementary"]), _frac_name(c["fraction"]))


def mean_se(xs: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and standard error (sample sd / √n; None for n < 2)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None)


def summarize(cells: List[dict]) -> Dict[Tuple[str, bool, str], dict]:
    """Per (w, complement, fraction): seeds, and per metric the values by seed and their mean ± SE."""
    groups: Dict[Tuple[str, bool, str], dict] = {}
    for c in cells:
        g = groups.setdefault(_group_key(c), {"seeds": [], "by_seed": {m: {} for m in METRICS}})
        g["seeds"].append(c["seed"])
        for m, (path, scale, _) in METRICS.items():
            v = _get(c, path)
            g["by_seed"][m][c["seed"]] = None if v is None else v * scale
    for g in groups.values():
        g["seeds"] = sorted(set(g["seeds"]))
        g["stats"] = {m: mean_se(list(g["by_seed"][m].values())) for m in METRICS}
    return groups


def paired(groups, a: Tuple[str, bool, str], b: Tuple[str, bool, str], metric: str):
    """Mean ± SE over seeds of ``metric(a) − metric(b)``, paired by seed (the same seed shares the
    model init and data order); (None, None, 0) without common seeds."""
    if a not in groups or b not in groups:
        return None, None, 0
    xa, xb = groups[a]["by_seed"][metric], groups[b]["by_seed"][metric]
    d = [xa[s] - xb[s] for s in xa if s in xb and xa[s] is not None and xb[s] is not None]
    m, se = mean_se(d)
    return m, se, len(d)


def _baseline(comp: bool) -> Tuple[str, bool, str]:
    return ("1", comp, ANY)


def _fmt(m, se, digits=1) -> str:
    if m is None:
        return "–"
    return f"{m:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{m:.{digits}f}"


def _rows(groups):
    """(complement, fraction, w, key) in table order; w = 1 appears in every fraction row."""
    fracs = sorted({k[2] for k in groups if k[2] != ANY}, key=float)
    out = []
    for comp in (True, False):
        for frac in fracs:
            for w in WEIGHT_ORDER:
                key = _baseline(comp) if w == "1" else (w, comp, frac)
                if key in groups:
                    out.append((comp, frac, w, key))
    return out


# two-sided 95% critical values of Student's t, by degrees of freedom (n seeds - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_critical(df: int) -> float:
    """Two-sided 95% critical t for ``df`` degrees of freedom (the next smaller tabulated df; 1.96 past 30)."""
    if df < 1:
        raise ValueError(f"df: must be >= 1, got {df}")
    if df > 30:
        return 1.96
    return T95[max(k for k in T95 if k <= df)]


def _t(m: float, se: float) -> float:
    """|t| of a mean difference; a constant difference (SE 0) is infinitely sure unless it is 0."""
    if se > 0:
        return abs(m) / se
    return math.inf if m != 0 else 0.0


def _verdict(m, se, n: int, expect_sign: int) -> str:
    """A paired difference against the paper's claim (expect_sign +1: 'a beats b'; 0: 'alike').

    Resolved only when the paired t-test rejects zero at 5% (|t| = |m|/SE > t_crit(n - 1)); then it
    agrees or disagrees with the claim. An 'alike' claim is never confirmed by a test that fails
    to reject: it is reported as 'no difference detected'.
    """
    if m is None:
        return "not run"
    if se is None or n < 2:
        return f"{m:+.2f} (one seed: no error bar)"
    crit = t_critical(n - 1)
    t = _t(m, se)
    head = f"{m:+.2f} ± {se:.2f} (t = {t:.1f}, n = {n})"
    if t < crit:
        return f"{head}: no difference detected" + (" (consistent)" if expect_sign == 0 else " (not resolved)")
    if expect_sign == 0:
        return f"{head}: differ (disagrees)"
    return f"{head}: " + ("agrees" if m * expect_sign > 0 else "opposite sign (disagrees)")


def claims(groups) -> List[Tuple[str, str, str, str]]:
    """The paper's claims, each as (claim, paper's numbers, ours on accuracy, ours on CE dense).

    Differences are paired by seed. For accuracy a positive difference is better; for the
    cross-entropy the sign is flipped so that "agrees" means the same thing on both.
    """
    out = []

    def both(a, b, sign, text, paper):
        acc = paired(groups, a, b, "avg")
        ce = paired(groups, a, b, "ce_dense")
        ce_flip = (None if ce[0] is None else -ce[0], ce[1], ce[2])
        out.append((text, paper, _verdict(*acc, sign), _verdict(*ce_flip, sign)))

    for frac in ("0.1", "1"):
        both(("2", True, frac), _baseline(True), +1, f"complement, {float(frac):.0%} annotated: w = 2 beats w = 1",
             "+3.87 (59.19 vs 55.32)" if frac == "0.1" else "+3.16 (58.48 vs 55.32)")
    both(("2", True, "0.1"), ("0.5", True, "0.1"), 0, "complement: w = 2 and w = 0.5 alike (symmetry)",
         "−0.03 (59.19 vs 59.22)")
    both(("2", True, "0.1"), ("5", True, "0.1"), +1, "complement: w = 2 beats extreme w = 5", "+3.14 (59.19 vs ≈56.05)")
    both(("2", True, "0.1"), ("inf", True, "0.1"), +1, "complement, 10%: soft w = 2 beats Hard Sample (w = ∞)",
         "+2.10 (Table 2: 59.45 vs 57.35)")
    both(("0.5", False, "0.1"), ("2", False, "0.1"), +1, "no complement: w = 0.5 beats w = 2", "+1.5 (≈58.5 vs ≈57.0)")
    both(("2", True, "0.1"), ("2", False, "0.1"), +1, "w = 2, 10%: the complement helps", "+2.2 (59.19 vs ≈57.0)")
    both(("2", True, "0.1"), ("2", True, "1"), 0, "w = 2: 10% annotated as good as 100%",
         "+0.97 (Table 2: 59.45 vs 58.48; 'saturation')")
    return out


def _label(key) -> str:
    w, comp, frac = key
    f = "any fraction" if frac == ANY else f"{float(frac):.0%} annotated"
    return f"w = {'∞' if w == 'inf' else w}, {'with' if comp else 'without'} complement, {f}"


def resolved(groups) -> Tuple[int, List[tuple]]:
    """Every paired comparison the grid supports (each cell against w = 1 with the same complement
    setting; each (w, fraction) with the complement against without), on accuracy, CE dense and CE
    other; returns the number of tests and those a paired t-test resolves at 5%, strongest first:
    (a, b, metric, mean, se, n, t, better)."""
    pairs = [(k, _baseline(k[1])) for k in groups if k[0] != "1"]
    pairs += [(k, (k[0], False, k[2])) for k in groups if k[1] and (k[0], False, k[2]) in groups]
    tests, hits = 0, []
    for a, b in sorted(pairs):
        for metric in ("avg", "ce_dense", "ce_other"):
            m, se, n = paired(groups, a, b, metric)
            if m is None or n < 2 or se is None:
                continue
            tests += 1
            t = _t(m, se)
            if t >= t_critical(n - 1):
                better = (m > 0) == (metric == "avg")
                hits.append((a, b, metric, m, se, n, t, better))
    hits.sort(key=lambda h: -h[6])
    return tests, hits


def markdown(doc: dict, groups) -> str:
    cfg = doc.get("size_config", {})
    runs = doc.get("runs", [])
    cells = doc.get("cells", [])
    L = [f"# Priority masking ablations in miniature ({doc.get('size', '?')} grid)", ""]
    L.append(f"{len(cells)} cells from `{doc.get('_path', 'results')}`. Model: d={cfg.get('d_model')}, "
             f"{cfg.get('n_layers')} layers, {cfg.get('steps')} steps of {cfg.get('batch_size')} problems "
             f"(lr {cfg.get('lr')}), block {cfg.get('block_size')}; task: {cfg.get('n_train')} training / "
             f"{cfg.get('n_eval')} held-out problems (math and code), see `dllm_masks/data/tiny_task.py`.")
    ts = doc.get("task_stats")
    if ts:
        L.append("Dense share of the answers, ρ (tokens / characters): " + ", ".join(
            f"{d} {v['rho_tokens']:.2f} / {v['rho_chars']:.2f} ({v['n']} problems)" for d, v in ts.items())
            + "; the paper's ρ_math ≈ 0.31, ρ_code ≈ 0.25.")
    wall = sum(r.get("wall_s", 0) for r in runs)
    loads = [x for r in runs for x in r.get("load_1m_samples", [])]
    if runs:
        how = ", ".join(f"{r.get('jobs')} job(s) × {r.get('threads_per_cell')} thread(s) on {r.get('device')}"
                        for r in runs[:3])
        load = (f"; 1-min load average at each cell's end: mean {statistics.mean(loads):.2f}, max {max(loads):.2f}"
                if loads else "")
        L.append(f"Wall time {wall / 60:.1f} min over {len(runs)} invocation(s) ({how}){load}.")
    L += ["", "Mean ± standard error over seeds (SE = sd/√n). Δ columns: difference from w = 1 with the same "
          "complement setting, paired by seed. The w = 1 cells mask uniformly, so they do not depend on the "
          "annotated fraction: the same runs appear in both fraction rows. ∞ is the paper's Hard Sample "
          "(w → ∞ with exactly round(σN) tokens masked per block). Paper: AVG over HumanEval, MBPP, GSM8K, "
          "MATH500 (LLaDA-2.0-mini); its 10% data is Code 10% + Math 50%, ours annotates 10% of both domains.",
          ""]
    L.append("## Final-answer accuracy (greedy block decoding; math exact match, code tests in the sandbox)")
    L.append("")
    L.append("| complement | annotated | w | seeds | math % | code % | avg % | Δavg vs w=1 | paper AVG | paper Δ vs w=1 |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for comp, frac, w, key in _rows(groups):
        g = groups[key]
        st = g["stats"]
        d = paired(groups, key, _baseline(comp), "avg") if w != "1" else (None, None, 0)
        paper = PAPER.get(key)
        pav = f"{paper[0]:.2f}" if paper else "–"
        pdelta = f"{paper[0] - PAPER_BASELINE:+.2f}" if paper and comp and w != "1" else "–"
        L.append(f"| {'on' if comp else 'off'} | {float(frac):.0%} | {'∞' if w == 'inf' else w} | {len(g['seeds'])} | "
                 f"{_fmt(*st['math'])} | {_fmt(*st['code'])} | {_fmt(*st['avg'])} | "
                 f"{_fmt(d[0], d[1]) if w != '1' else '(baseline)'} | {pav} | {pdelta} |")
    L += ["", "## Held-out masked-token cross-entropy (nats, lower is better)", "",
          f"Every held-out answer masked uniformly with exactly round(σN) tokens per block at "
          f"σ ∈ {doc.get('metrics', {}).get('sigma_grid')}, one fixed draw for every cell; the mean over the "
          "σ grid, on dense tokens (the spans) and on the others; `<eos>` padding left out.", "",
          "| complement | annotated | w | seeds | CE dense | CE other | ΔCE dense vs w=1 | ΔCE other vs w=1 |",
          "|---|---|---|---|---|---|---|---|"]
    for comp, frac, w, key in _rows(groups):
        g = groups[key]
        st = g["stats"]
        dd = paired(groups, key, _baseline(comp), "ce_dense") if w != "1" else None
        do = paired(groups, key, _baseline(comp), "ce_other") if w != "1" else None
        L.append(f"| {'on' if comp else 'off'} | {float(frac):.0%} | {'∞' if w == 'inf' else w} | {len(g['seeds'])} | "
                 f"{_fmt(*st['ce_dense'], digits=3)} | {_fmt(*st['ce_other'], digits=3)} | "
                 f"{_fmt(dd[0], dd[1], 3) if dd else '(baseline)'} | {_fmt(do[0], do[1], 3) if do else '(baseline)'} |")
    L += ["", "## The paper's claims against these runs", "",
          "Paired differences a − b (mean ± SE over seeds, t = |mean|/SE). A claim is called agreed or "
          "disagreed with only where a paired t-test rejects 'no difference' at 5% (|t| above the critical "
          "value for n − 1 degrees of freedom: 4.30 for 3 seeds); otherwise 'not resolved', and an 'alike' "
          "claim is at most 'consistent'. CE dense is shown with its sign flipped, so that positive means "
          "better on both.", "",
          "| claim | paper (AVG points) | ours: avg accuracy (points) | ours: −ΔCE dense (nats) |", "|---|---|---|---|"]
    for text, paper, acc, ce in claims(groups):
        L.append(f"| {text} | {paper} | {acc} | {ce} |")
    tests, hits = resolved(groups)
    L += ["", "## Every difference a paired t-test resolves", "",
          f"All {tests} paired comparisons the grid supports (each cell against w = 1 with the same complement "
          "setting, and each cell with the complement against the same cell without, on accuracy, CE dense and "
          f"CE other), tested at 5%: about {0.05 * tests:.1f} of them would pass by chance with no effect at all. "
          f"{len(hits)} pass:", ""]
    if hits:
        L += ["| a | b | metric | a − b | t (n) | a is |", "|---|---|---|---|---|---|"]
        for a, b, metric, m, se, n, t, better in hits:
            digits = 1 if metric == "avg" else 3
            L.append(f"| {_label(a)} | {_label(b)} | {METRICS[metric][2]} | {m:+.{digits}f} ± {se:.{digits}f} | "
                     f"{t:.1f} ({n}) | {'better' if better else 'worse'} |")
    return "\n".join(L) + "\n"


def plot(groups, path: str, title: str = "") -> str:
    """Against w (log scale; ∞ at a marked position), for complement on/off × annotated fraction:
    top row, accuracy, CE dense and CE other (mean ± SE over seeds); bottom row, the same as
    differences from w = 1 paired by seed (mean ± SE), which is what the seeds can resolve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xpos = {"0.5": 0.5, "1": 1.0, "2": 2.0, "5": 5.0, "inf": 16.0}
    fracs = sorted({k[2] for k in groups if k[2] != ANY}, key=float)
    panels = [("avg", "accuracy, avg of math and code (%)"),
              ("ce_dense", "held-out CE, dense tokens (nats)"), ("ce_other", "held-out CE, other tokens (nats)")]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), sharex=True)
    colors = {f: c for f, c in zip(fracs, ("tab:blue", "tab:orange", "tab:green", "tab:purple"))}
    for col, (metric, label) in enumerate(panels):
        for row, delta in ((0, False), (1, True)):
            ax = axes[row][col]
            for comp in (True, False):
                for i, frac in enumerate(fracs):
                    xs, ys, es = [], [], []
                    for w in WEIGHT_ORDER:
                        key = _baseline(comp) if w == "1" else (w, comp, frac)
                        if key not in groups:
                            continue
                        if delta:
                            m, se = (0.0, 0.0) if w == "1" else paired(groups, key, _baseline(comp), metric)[:2]
                        else:
                            m, se = groups[key]["stats"][metric]
                        if m is None:
                            continue
                        xs.append(xpos[w] * (1 + 0.04 * (i - 0.5) + (0.02 if not comp else 0)))  # keep bars apart
                        ys.append(m)
                        es.append(se or 0.0)
                    if xs:
                        ax.errorbar(xs, ys, yerr=es, marker="o" if comp else "s", capsize=3,
                                    linestyle="-" if comp else "--", color=colors[frac],
                                    label=f"{'with' if comp else 'without'} complement, {float(frac):.0%} annotated")
            if delta:
                ax.axhline(0.0, color="0.3", linewidth=0.8)
            ax.set_xscale("log")
            ax.axvspan(8.5, 11.5, color="0.9", zorder=0)  # the break before ∞
            ax.set_xticks([xpos[w] for w in WEIGHT_ORDER])
            ax.set_xticklabels(["0.5", "1\n(uniform)", "2", "5", "∞\n(hard, exact)"])
            ax.minorticks_off()
            ax.set_xlim(0.4, 22)
            ax.set_ylabel(("Δ vs w = 1, paired: " if delta else "") + label, fontsize=9)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("bias weight w (log scale)")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(title or "Priority masking in miniature: mean ± SE over seeds (cf. the paper's Figs. 3 and 4)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report_args(argv, default_results: str, md_name: str, description: str):
    """Parse ``results [--md] [--png]`` and load the results: ``(doc, md, png)``, or ``None`` (with a
    message) when the file has no cells. ``doc["_path"]`` is the file relative to the repository."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("results", nargs="?", default=default_results)
    ap.add_argument("--md", help=f"markdown output (default: {md_name} beside the results)")
    ap.add_argument("--png", help="plot output (default: the results' name with .png)")
    args = ap.parse_args(argv)
    src = Path(args.results)
    doc = load_results(src)
    if not doc.get("cells"):
        print(f"{src}: no cells", file=sys.stderr)
        return None
    try:
        doc["_path"] = str(src.resolve().relative_to(HERE.parent.parent))
    except ValueError:
        doc["_path"] = src.name
    md = Path(args.md) if args.md else src.parent / md_name
    png = Path(args.png) if args.png else src.with_suffix(".png")
    return doc, md, png


def main(argv: Optional[List[str]] = None) -> int:
    got = report_args(argv, str(HERE / "results" / "grid_reduced.json"), "REPORT.md", __doc__.split("\n\n")[0])
    if got is None:
        return 2
    doc, md, png = got
    groups = summarize(doc["cells"])
    text = markdown(doc, groups)
    text += f"\n![accuracy and cross-entropy against w]({png.name})\n" if png.parent == md.parent else ""
    md.write_text(text, encoding="utf-8")
    plot(groups, str(png), title=f"Priority masking in miniature ({doc.get('size', '')} grid, "
                                 f"{len(doc['cells'])} cells): mean ± SE over seeds (cf. the paper's Figs. 3 and 4)")
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
