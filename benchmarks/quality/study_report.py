#!/usr/bin/env python
"""The powered study's report: paired differences with 95 % t intervals, a verdict per claim of
the paper, mask statistics per arm, power, and a plot.

    python benchmarks/quality/study_report.py                 # results/study_study.json
    python benchmarks/quality/study_report.py res.json --md STUDY.md --png study.png

Every number comes from the results JSON of ``study.py``. Differences are ``arm − baseline`` over
the seeds both ran, paired by seed; for a cross-entropy, negative is better. A claim is
*supported* when an interval excludes zero in its favour and none against it, *contradicted* in
the opposite case, a *trade-off* when one of each, and *not resolved* when every interval holds
zero (:func:`study_stats.verdict`; the dense-token and other-token cross-entropies are its
metrics, accuracy is shown beside them).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from quality import report as R  # noqa: E402
from quality.study_stats import (CONTRADICTED, NOT_RESOLVED, SUPPORTED, Paired, fmt_ci, mean_sd,  # noqa: E402
                                 paired_ci, t_quantile, verdict)

__all__ = ["METRICS", "by_seed", "pairing_check", "comparisons", "claims", "seeds_needed", "markdown", "plot", "main"]

METRICS = {  # name: (path in a cell record, scale, label, sign of "better")
    "ce_dense": (("ce", "dense"), 1.0, "CE dense (nats)", -1),
    "ce_other": (("ce", "other"), 1.0, "CE other (nats)", -1),
    "ce_all": (("ce", "all"), 1.0, "CE all (nats)", -1),
    "acc": (("accuracy", "avg"), 100.0, "accuracy avg (points)", +1),
    "math": (("accuracy", "math"), 100.0, "math acc. (points)", +1),
    "code": (("accuracy", "code"), 100.0, "code pass@1 (points)", +1),
}
STATS = {  # mask statistics of the training masks (view 0: the σ view; v1: the complement)
    "dense_both_neighbours": "dense tokens masked with both neighbours",
    "full_blocks": "fully masked blocks",
    "run_mean": "mean masked run length",
    "dense_spans_whole": "dense spans masked whole",
    "rate_dense": "masking rate of dense tokens",
    "rate_other": "masking rate of other tokens",
}
BASELINE = "uniform"
VERDICT_METRICS = ("ce_dense", "ce_other")


def _get(rec: dict, path) -> Optional[float]:
    x = rec
    for p in path:
        if not isinstance(x, dict) or p not in x or x[p] is None:
            return None
        x = x[p]
    x = float(x)
    return None if math.isnan(x) else x


def by_seed(cells: List[dict]) -> Dict[str, Dict[str, Dict[int, Optional[float]]]]:
    """{arm: {metric or "stat:v0:name": {seed: value}}} of the cells."""
    out: Dict[str, Dict[str, Dict[int, Optional[float]]]] = {}
    for c in cells:
        a = out.setdefault(c["arm"], {})
        for m, (path, scale, _, _) in METRICS.items():
            v = _get(c, path)
            a.setdefault(m, {})[c["seed"]] = None if v is None else v * scale
        for view in ("v0", "v1"):
            for s in STATS:
                a.setdefault(f"stat:{view}:{s}", {})[c["seed"]] = _get(c, ("mask_stats", view, s))
    return out


def pairing_check(cells: List[dict], arms: Dict[str, dict]) -> Dict[int, dict]:
    """Per seed: whether every arm started from the same parameters, and whether the arms with the
    same batch size were fed the same problems in the same order with the same σ (the fingerprints
    ``study.py`` records inside the loop)."""
    out: Dict[int, dict] = {}
    for seed in sorted({c["seed"] for c in cells}):
        mine = [c for c in cells if c["seed"] == seed]
        init = {c["mask_stats"].get("init") for c in mine}
        groups: Dict[int, set] = {}
        for c in mine:
            mult = int(arms.get(c["arm"], {}).get("batch_mult", 1))
            groups.setdefault(mult, set()).add(c["mask_stats"].get("batches"))
        out[seed] = {"arms": len(mine), "same_init": len(init) == 1,
                     "same_batches": all(len(v) == 1 for v in groups.values())}
    return out


def comparisons(data) -> List[Tuple[str, str, str, Paired]]:
    """Every arm against the baseline, on every metric: (arm, baseline, metric, Paired)."""
    out = []
    if BASELINE not in data:
        return out
    for arm in data:
        if arm == BASELINE:
            continue
        for m in METRICS:
            out.append((arm, BASELINE, m, paired_ci(data[arm][m], data[BASELINE][m])))
    return out


# (claim, a, b, paper's figure, whose claim)
CLAIMS = [
    ("Priority masking at the paper's recipe beats uniform masking (w = 2, 10 % annotated, the paper's ρ)",
     "rules10_rho", "uniform", "+3.87 AVG (59.19 vs 55.32, Table 1)", "paper"),
    ("The same with the rule extractors' own density (ρ ≈ 0.50 code, 0.79 math here)",
     "rules10", "uniform", "(the paper's ρ is 0.25 / 0.31)", "paper"),
    ("Soft w = 2 beats the Hard Sample w = ∞ (10 % annotated)",
     "rules10", "hard", "+2.10 AVG (59.45 vs 57.35, Table 2)", "paper"),
    ("The complementary view helps, at equal tokens seen (w = 2, 10 %)",
     "rules10", "rules10_nocomp", "+2.2 AVG (59.19 vs ≈57.0, Fig. 4; not compute-matched)", "paper"),
    ("Cutting the rule spans to the paper's density helps (w = 2, 10 %)",
     "rules10_rho", "rules10", "(not a claim of the paper: ρ is its annotators')", "issue"),
    ("Loss-based importance beats uniform masking (no annotation)", "loss", "uniform",
     "(future work in the paper)", "issue"),
    ("Loss-based importance (no annotation) beats the rules (w = 2, 10 % annotated)", "loss", "rules10",
     "(future work in the paper)", "issue"),
    ("Confidence-based importance beats uniform masking (no annotation)", "confidence", "uniform",
     "(future work in the paper)", "issue"),
]


def claims(data) -> List[dict]:
    """Each claim with its paired intervals and verdict (``"not run"`` when an arm is missing)."""
    out = []
    for text, a, b, paper, who in CLAIMS:
        row = {"claim": text, "a": a, "b": b, "paper": paper, "who": who}
        if a not in data or b not in data:
            row["verdict"] = "not run"
            out.append(row)
            continue
        res = {m: paired_ci(data[a][m], data[b][m]) for m in METRICS}
        row["paired"] = res
        row["verdict"] = verdict([res[m] for m in VERDICT_METRICS], [METRICS[m][3] for m in VERDICT_METRICS])
        out.append(row)
    return out


def collapse(data) -> Optional[dict]:
    """The contextual-collapse test: does the Hard Sample mask dense tokens together with their
    neighbours more than soft w = 2 (the mechanism; training masks, view 0), and is it worse on
    dense tokens (the harm)? Supported when both intervals say so; contradicted when the mechanism
    is there and the Hard Sample is resolved better on dense tokens, or when the harm is there and
    the mechanism is resolved the other way (the harm without the collapse); else not resolved."""
    if "hard" not in data or "rules10" not in data:
        return None
    k = "stat:v0:dense_both_neighbours"
    mech = paired_ci(data["hard"][k], data["rules10"][k])
    blocks = paired_ci(data["hard"]["stat:v0:full_blocks"], data["rules10"]["stat:v0:full_blocks"])
    harm = paired_ci(data["hard"]["ce_dense"], data["rules10"]["ce_dense"])
    there = mech.excludes_zero() and mech.mean > 0
    reversed_ = mech.excludes_zero() and mech.mean < 0
    harmed = harm.excludes_zero() and harm.mean > 0
    if there and harmed:
        v = SUPPORTED
    elif (there and harm.excludes_zero() and harm.mean < 0) or (reversed_ and harmed):
        v = CONTRADICTED
    else:
        v = NOT_RESOLVED
    return {"mechanism": mech, "full_blocks": blocks, "harm": harm, "verdict": v}


def seeds_needed(p: Paired, *, power: float = 0.8, alpha: float = 0.05, cap: int = 10_000) -> Optional[int]:
    """Seeds a paired t-test would need to resolve a true difference equal to the observed mean
    with this SD at ``power`` (smallest n with (t_{1−α/2,n−1} + t_{power,n−1})·sd/√n <= |mean|);
    None without a spread or a difference, ``cap`` past it."""
    if p.sd is None or p.mean is None or p.mean == 0:
        return None
    if p.sd == 0:
        return 2
    for n in range(2, cap + 1):
        if (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * p.sd / math.sqrt(n) <= abs(p.mean):
            return n
    return cap


def _arm_label(doc, arm) -> str:
    return doc.get("arms", {}).get(arm, {}).get("label", arm)


def _digits(m: str) -> int:
    return 1 if METRICS[m][1] == 100.0 else 3


def markdown(doc: dict) -> str:
    cells = doc.get("cells", [])
    data = by_seed(cells)
    arms = [a for a in doc.get("arms", {}) if a in data]
    cfg = doc.get("size_config", {})
    runs = doc.get("runs", [])
    seeds = sorted({c["seed"] for c in cells})
    complete = [s for s in seeds if all(s in data[a]["ce_dense"] for a in arms)]
    L = [f"# A study with power: priority masking in miniature, {len(complete)} seed(s) paired across "
         f"{len(arms)} arms", ""]
    L.append(f"{len(cells)} cells from `{doc.get('_path', 'results')}`: model d={cfg.get('d_model')}, "
             f"{cfg.get('n_layers')} layers, {cfg.get('steps')} steps of {cfg.get('batch_size')} problems (lr "
             f"{cfg.get('lr')}), block {cfg.get('block_size')}, σ ∈ [0.3, 0.8] per block; task: {cfg.get('n_train')} "
             f"training / {cfg.get('n_eval')} held-out problems (`dllm_masks/data/tiny_task.py`); accuracy on "
             f"{cfg.get('n_gen')} of them. Every arm trains with the complementary view unless its name says otherwise.")
    wall = sum(r.get("wall_s", 0) for r in runs)
    cpu = sum(c.get("cpu_s") or 0.0 for c in cells)
    loads = [x for r in runs for x in r.get("load_1m_samples", [])]
    if runs:
        load = (f"; the machine's 1-minute load average at each cell's end: mean {sum(loads) / len(loads):.2f}, "
                f"max {max(loads):.2f} (2 of it this study's)" if loads else "")
        L.append(f"Wall time {wall / 60:.1f} min over {len(runs)} invocation(s), "
                 f"{runs[0].get('jobs')} cells at a time × {runs[0].get('threads_per_cell')} thread{load}. The cells "
                 f"used {cpu / 60:.1f} CPU-minutes, {cpu / 120:.1f} minutes on 2 idle cores (the idle-machine "
                 "equivalent; the wall time is longer when the machine is shared).")
    incomplete = [s for s in seeds if s not in complete]
    L.append(f"Seeds run in every arm: {complete}" + (f"; seeds {incomplete} ran in only some arms (each "
                                                      "comparison uses the seeds both of its arms ran)."
                                                      if incomplete else "."))
    skipped = doc.get("skipped", {})
    if skipped:
        L.append("Arms not run: " + "; ".join(f"`{a}` ({why})" for a, why in skipped.items()) + ".")
    L.append("")
    L += ["## Arms", "", "| arm | what | seeds | CPU s per cell | importance ms per step | CE dense | CE other | "
          "accuracy avg % |", "|---|---|---|---|---|---|---|---|"]
    for a in arms:
        mine = [c for c in cells if c["arm"] == a]
        ts = sum(c.get("cpu_s") or 0.0 for c in mine) / len(mine)
        imp = [c["train"]["importance"]["ms_per_step"] for c in mine if (c["train"].get("importance") or {}).get(
            "ms_per_step") is not None]
        imp_s = f"{sum(imp) / len(imp):.1f}" if imp else "–"
        cd, co, ac = (mean_sd(data[a][m].values()) for m in ("ce_dense", "ce_other", "acc"))
        f = lambda ms, d: "–" if ms[0] is None else (f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}" if ms[1] is not None  # noqa: E731
                                                     else f"{ms[0]:.{d}f}")
        L.append(f"| `{a}` | {_arm_label(doc, a)} | {len(mine)} | {ts:.0f} | {imp_s} | {f(cd, 3)} | {f(co, 3)} | "
                 f"{f(ac, 1)} |")
    L += ["", "Mean ± SD over seeds. CPU s: the cell's process time (training, the cross-entropy and the decoding), "
          "which the machine's load does not inflate much; importance ms: the model source's own work per step "
          "(`log.csv`'s `importance_ms`: map, store, and the confidence pass). CE: held-out masked-token cross-entropy (nats), the mean over σ ∈ "
          f"{doc.get('metrics', {}).get('sigma_grid')} of uniform masks drawn once for every cell; dense = the "
          "task's spans (the same tokens for every arm).", ""]
    cal = doc.get("calibration")
    if cal:
        rep = cal["calibrate"]
        L += ["## ρ calibrated to the paper", "",
              "`rules10_rho` cuts the rule spans of its annotated problems with a per-problem density budget "
              "(`data.target_rho`, `dllm_masks.extract.budget`: results and equations before operands, conditions "
              "and returns before the rest). The budgets are those whose mean kept share over the training "
              "problems is closest to the paper's (`dllm_masks.extract.calibrate.calibrate`, tokens of the "
              "training tokenizer):", "",
              "| domain | ρ, every rule span | paper's ρ | budget `target_rho` | ρ achieved (calibration) | "
              "ρ achieved (training sequences) | problems keeping no span |", "|---|---|---|---|---|---|---|"]
        for d, want in cal["paper_rho"].items():
            r = rep.get(d)
            if r is None:
                continue
            L.append(f"| {d} | {cal['realized']['all_spans'].get(d, float('nan')):.3f} | {want:.2f} | "
                     f"{r['target_rho']:.4f} | {r['rho']:.3f} | {cal['realized']['budget'].get(d, float('nan')):.3f} | "
                     f"{r['empty']} of {r['samples']} |")
        L.append("")
    pc = pairing_check(cells, doc.get("arms", {}))
    bad = [s for s, v in pc.items() if not (v["same_init"] and v["same_batches"])]
    L += ["## Pairing", "",
          f"Checked inside the loop for every seed: {sum(v['same_init'] for v in pc.values())} of {len(pc)} seeds "
          "started every arm from identical parameters, and in "
          f"{sum(v['same_batches'] for v in pc.values())} of {len(pc)} the arms with the same batch size were fed "
          "identical batches (sample ids, order, σ)"
          + (f"; **seeds {bad} are not paired**." if bad else "; only the masks differ.")
          + " `rules10_nocomp` (twice the problems per step) shares the initialization only.", ""]
    # differences vs uniform
    L += ["## Paired differences from uniform masking", "",
          "arm − uniform, mean [95 % t interval] over seeds; MDE: the smallest true difference a paired t-test at "
          "5 % would detect with 80 % power, from the observed SD of the paired differences.", "",
          "| arm | n | ΔCE dense | MDE | ΔCE other | MDE | Δaccuracy (points) | MDE |", "|---|---|---|---|---|---|---|---|"]
    comp = {(a, m): p for a, _, m, p in comparisons(data)}
    for a in arms:
        if a == BASELINE:
            continue
        cd, co, ac = comp[(a, "ce_dense")], comp[(a, "ce_other")], comp[(a, "acc")]
        mde = lambda p, d: "–" if p.mde is None else f"{p.mde:.{d}f}"  # noqa: E731
        L.append(f"| `{a}` | {cd.n} | {fmt_ci(cd)} | {mde(cd, 3)} | {fmt_ci(co)} | {mde(co, 3)} | "
                 f"{fmt_ci(ac, 1)} | {mde(ac, 1)} |")
    L += ["", "## The claims", "",
          "Verdict from the two cross-entropy intervals (dense tokens, other tokens): supported = one excludes zero "
          "in the claim's favour and none against it; contradicted = the reverse; trade-off = one each way; not "
          "resolved = both hold zero. Accuracy is secondary and shown only.", "",
          "| claim | paper | ΔCE dense, a − b | ΔCE other, a − b | Δaccuracy, a − b | verdict |", "|---|---|---|---|---|---|"]
    for row in claims(data):
        if row["verdict"] == "not run":
            L.append(f"| {row['claim']} (`{row['a']}` vs `{row['b']}`) | {row['paper']} | – | – | – | not run |")
            continue
        p = row["paired"]
        L.append(f"| {row['claim']} (`{row['a']}` − `{row['b']}`, n = {p['ce_dense'].n}) | {row['paper']} | "
                 f"{fmt_ci(p['ce_dense'])} | {fmt_ci(p['ce_other'])} | {fmt_ci(p['acc'], 1)} | **{row['verdict']}** |")
    col = collapse(data)
    if col:
        L += ["", "### Contextual collapse", "",
              "The paper explains the Hard Sample's loss by contextual collapse: dense tokens masked together with "
              "their context. In the training masks (view 0, against the task's spans), `hard` − `rules10`: dense "
              f"tokens masked with both neighbours {fmt_ci(col['mechanism'])}, fully masked blocks "
              f"{fmt_ci(col['full_blocks'])}; on held-out dense tokens, ΔCE {fmt_ci(col['harm'])}. "
              f"Verdict (supported: both resolved the paper's way; contradicted: the harm resolved without the "
              f"mechanism, or the mechanism without the harm): **{col['verdict']}**."]
    # mask statistics
    L += ["", "## Mask statistics of the training masks", "",
          "`dllm_masks.mask_stats` on every "
          f"{cfg.get('stats_every')}th masked training batch against the task's spans, mean over batches and then "
          "over seeds; view 0 is the σ view (view 1, the complement, in parentheses).", "",
          "| arm | " + " | ".join(STATS.values()) + " |", "|---|" + "---|" * len(STATS)]
    for a in arms:
        vals = []
        for s in STATS:
            m0, _ = mean_sd(data[a][f"stat:v0:{s}"].values())
            m1, _ = mean_sd(data[a][f"stat:v1:{s}"].values())
            vals.append("–" if m0 is None else f"{m0:.3f}" + (f" ({m1:.3f})" if m1 is not None else ""))
        L.append(f"| `{a}` | " + " | ".join(vals) + " |")
    # power
    L += ["", "## Power", ""]
    dense = [p for (a, m), p in comp.items() if m == "ce_dense" and p.mde is not None]
    other = [p for (a, m), p in comp.items() if m == "ce_other" and p.mde is not None]
    acc = [p for (a, m), p in comp.items() if m == "acc" and p.mde is not None]
    if dense:
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        L.append(f"With {max(p.n for p in dense)} paired seeds, the study resolves (80 % power, 5 %) differences from "
                 f"uniform masking above {min(p.mde for p in dense):.3f}–{max(p.mde for p in dense):.3f} nats on "
                 f"dense-token CE (median {med([p.mde for p in dense]):.3f}), "
                 f"{min(p.mde for p in other):.3f}–{max(p.mde for p in other):.3f} on other-token CE, and "
                 f"{min(p.mde for p in acc):.1f}–{max(p.mde for p in acc):.1f} points of accuracy. "
                 "Seeds a paired test would need to resolve the observed mean difference at 80 % power:")
        L += ["", "| arm − uniform | ΔCE dense | SD | seeds needed | ΔCE other | SD | seeds needed |", "|---|---|---|---|---|---|---|"]
        for a in arms:
            if a == BASELINE:
                continue
            cd, co = comp[(a, "ce_dense")], comp[(a, "ce_other")]
            sd = lambda p: "–" if p.sd is None else f"{p.sd:.3f}"  # noqa: E731
            L.append(f"| `{a}` | {cd.mean:+.3f} | {sd(cd)} | {seeds_needed(cd)} | {co.mean:+.3f} | {sd(co)} | "
                     f"{seeds_needed(co)} |")
    n_ci = len(comparisons(data)) + sum(1 for r in claims(data) if r["verdict"] != "not run") * len(METRICS)
    L += ["", f"The report shows about {n_ci} intervals; at 95 % each, about {0.05 * n_ci:.0f} would exclude zero "
          "by chance with no effect anywhere, so a lone resolved interval is weak evidence."]
    return "\n".join(L) + "\n"


def plot(doc: dict, path: str) -> str:
    """Left: arm − uniform on CE dense and CE other (mean, 95 % interval, and each seed's
    difference). Middle: accuracy the same way. Right: dense tokens masked with both neighbours
    (training masks) against ΔCE dense, one point per seed and arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = by_seed(doc.get("cells", []))
    arms = [a for a in doc.get("arms", {}) if a in data and a != BASELINE]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metrics, ylabel in ((axes[0], ("ce_dense", "ce_other"), "arm − uniform, held-out CE (nats)"),
                                (axes[1], ("acc",), "arm − uniform, accuracy (points)")):
        width = 0.8 / len(metrics)
        for j, m in enumerate(metrics):
            for i, a in enumerate(arms):
                if BASELINE not in data:
                    continue
                p = paired_ci(data[a][m], data[BASELINE][m])
                if p.mean is None:
                    continue
                x = i + (j - (len(metrics) - 1) / 2) * width
                ax.scatter([x + 0.06] * len(p.diffs), p.diffs, s=9, color=colors[j], alpha=0.45)
                err = None if p.lo is None else [[p.mean - p.lo], [p.hi - p.mean]]
                ax.errorbar([x], [p.mean], yerr=err, fmt="o", color=colors[j], capsize=4,
                            label=METRICS[m][2] if i == 0 else None)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for i, a in enumerate([BASELINE] + arms):
        if a not in data or BASELINE not in data:
            continue
        st = data[a]["stat:v0:dense_both_neighbours"]
        d = {s: data[a]["ce_dense"][s] - data[BASELINE]["ce_dense"][s] for s in st
             if s in data[BASELINE]["ce_dense"] and data[a]["ce_dense"][s] is not None and st[s] is not None}
        ax.scatter([st[s] for s in d], list(d.values()), s=14, color=colors[i % len(colors)], label=a)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel("dense tokens masked with both neighbours (training masks, view 0)", fontsize=9)
    ax.set_ylabel("ΔCE dense vs uniform, per seed (nats)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    n = len({c["seed"] for c in doc.get("cells", [])})
    fig.suptitle(f"Priority masking in miniature: paired differences from uniform masking, {n} seeds, 95 % t intervals")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    got = R.report_args(argv, str(HERE / "results" / "study_study.json"), "STUDY.md",
                        __doc__.split("\n\n")[0])
    if got is None:
        return 2
    doc, md, png = got
    text = markdown(doc)
    if png.parent.resolve() == md.parent.resolve():
        text += f"\n![paired differences from uniform masking]({png.name})\n"
    md.write_text(text, encoding="utf-8")
    plot(doc, str(png))
    print(f"wrote {md} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
