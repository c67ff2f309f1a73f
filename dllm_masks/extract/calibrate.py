"""Find the per-sample density budget that reproduces a corpus-mean ρ, and report what it keeps.

A budget ``target_rho`` (:mod:`dllm_masks.extract.budget`) caps the share of *every* answer, so
the mean ρ over a corpus falls below it: an answer whose most important span alone covers more
than the budget keeps nothing. To reproduce a corpus mean (the paper's ρ ≈ 0.25 on code tokens,
0.31 on math tokens), this finds the budget per domain whose mean kept share comes closest::

    python -m dllm_masks.extract.calibrate samples.jsonl --tokenizer tokenizer.json \\
        --mean code=0.25,math=0.31

and prints, per domain, the budget, the mean it gives, the mean a budget equal to the target
gives, and how many spans of each kind survive; its last line is the ``--target-rho`` option for
``dllm-masks extract`` (or the value of ``data.target_rho`` in a training config) that applies it.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Union

from .auto import DOMAINS, detect_domain, labelled_rule_spans
from .budget import PRIORITY, budget_spans, calibrate_cap, measure_for, parse_target_rho, share_steps, target_for

__all__ = ["calibrate", "main"]

PAPER_RHO = {"code": 0.25, "math": 0.31}


def _mean(xs: List[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def calibrate(records, mean_rho: Union[float, Dict[str, float]] = None, *, tokenizer=None) -> dict:
    """Budgets that reproduce a mean ρ per domain, on records ``{"prompt", "answer", "domain"?}``.

    Parameters
    ----------
    records : iterable of dict
        ``prompt`` and ``answer`` (str); ``domain`` (``"code"``/``"math"``) or a guess.
    mean_rho : float or dict, optional
        The mean share wanted, for every domain or per domain (default: the paper's,
        ``{"code": 0.25, "math": 0.31}``); a domain not named is skipped.
    tokenizer : optional
        Measure in its tokens (:func:`~dllm_masks.extract.budget.measure_for`); else characters.

    Returns
    -------
    dict
        ``unit``, and per domain with samples: ``samples``; ``rho_all`` — mean ρ of the rules
        without a budget; ``mean_rho`` — the target mean; ``target_rho`` — the budget found;
        ``rho`` — the mean ρ it gives; ``rho_at_target`` — the mean ρ of a budget equal to the
        target mean; ``empty`` — samples that keep no span under the budget; ``kept``/``dropped``
        — spans per kind under the budget.
    """
    mean_rho = PAPER_RHO if mean_rho is None else mean_rho
    by: Dict[str, list] = {d: [] for d in DOMAINS}
    for rec in records:
        dom = rec.get("domain") or detect_domain(rec["prompt"], rec["answer"])
        if target_for(mean_rho, dom, "mean_rho") is None:
            continue
        labelled, _ = labelled_rule_spans(rec["prompt"], rec["answer"], dom)
        by[dom].append((labelled, len(rec["answer"]), measure_for(tokenizer, rec["answer"])))
    out: dict = {"unit": "tokens" if tokenizer is not None else "characters"}
    for dom, samples in by.items():
        if not samples:
            continue
        prio = PRIORITY[dom]
        want = target_for(mean_rho, dom, "mean_rho")
        steps = [share_steps(lab, n, priority=prio, measure=m) for lab, n, m in samples]
        cap, rho = calibrate_cap(steps, want)
        infos = [budget_spans(lab, n, cap, priority=prio, measure=m)[1] for lab, n, m in samples]
        naive = [budget_spans(lab, n, want, priority=prio, measure=m)[1]["rho"] for lab, n, m in samples]
        kept = {k: sum(i["kept"].get(k, 0) for i in infos) for k in prio}
        dropped = {k: sum(i["dropped"].get(k, 0) for i in infos) for k in prio}
        out[dom] = {"samples": len(samples), "rho_all": _mean([i["rho_all"] for i in infos]), "mean_rho": want,
                    "target_rho": cap, "rho": _mean([i["rho"] for i in infos]), "rho_at_target": _mean(naive),
                    "empty": sum(not i["kept"] for i in infos),
                    "kept": {k: v for k, v in kept.items() if v}, "dropped": {k: v for k, v in dropped.items() if v}}
        assert abs(out[dom]["rho"] - rho) < 1e-9  # calibrate_cap's mean is what the budget gives
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dllm_masks.extract.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="JSONL: prompt, answer, optional domain")
    p.add_argument("--tokenizer", help="tokenizer.json: measure ρ in its tokens (else characters)")
    p.add_argument("--mean", type=parse_target_rho, default=PAPER_RHO,
                   help="mean ρ wanted: a number, or DOMAIN=NUMBER,... (default: code=0.25,math=0.31)")
    p.add_argument("--report", help="also write the result as JSON here")
    args = p.parse_args(argv)
    tok = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(args.tokenizer)
    with open(args.input, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    rep = calibrate(records, args.mean, tokenizer=tok)
    print(f"density budget per domain, unit: {rep['unit']}")
    for dom in DOMAINS:
        r = rep.get(dom)
        if r is None:
            continue
        print(f"  {dom:5s} samples={r['samples']} ρ(all spans)={r['rho_all']:.3f} wanted mean={r['mean_rho']:.3f}: "
              f"target_rho={r['target_rho']:.4f} gives mean ρ={r['rho']:.3f} "
              f"(target_rho={r['mean_rho']:.3f} gives {r['rho_at_target']:.3f}); answers keeping nothing={r['empty']}")
        print("        kept:    " + " ".join(f"{k}={v}" for k, v in r["kept"].items()))
        print("        dropped: " + " ".join(f"{k}={v}" for k, v in r["dropped"].items()))
    print("--target-rho " + ",".join(f"{d}={rep[d]['target_rho']!r}" for d in DOMAINS if d in rep))
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(rep, f, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
