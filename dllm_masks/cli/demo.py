"""``dllm-masks demo``: the main job on the bundled data, scaled to a CPU; ``dllm-masks show-mask``:
complementary priority masking of one small code sample.

The demo annotates the bundled data (HumanEval prompts with their canonical solutions, generated
GSM8K-style problems) with the rule extractors at the paper's fractions (10% of code, 50% of
math), fine-tunes a small LLaDA-style transformer with block diffusion (block size 32, σ_t in
[0.3, 0.8] per block, complementary priority masking with w = 2, ``<eos>`` maskable), then decodes
held-out and training prompts block by block and scores them.

``--priority loss`` (or ``confidence``, ``mix``, ``none``) trains the same recipe with the
priority taken from the model instead of the annotations (``mask.priority``, see
docs/training.md): the annotation-free path. ``make demo`` runs a short second demo with
``--priority loss --brief``.
"""
from __future__ import annotations

import copy
import os
import textwrap
import time

import torch

from ..ops import available_backends, priority_mask
from ..stats import format_stats, mask_stats

__all__ = ["DEMO_CONFIG", "demo_config", "add_parser"]

# The demo run: the paper's masking recipe, a model and schedule sized for ~3 minutes on 2 cores.
DEMO_CONFIG = {
    "run_dir": "runs/demo",
    "seed": 0,
    "max_steps": 240,
    "loss_norm": "masked",
    "log_every": 5,
    "ckpt_every": 60,
    "data": {
        "source": "bundled:300",          # 164 HumanEval problems + 300 generated GSM8K-style ones
        "eval_fraction": 0.08,
        "annotate": {"code": 0.1, "math": 0.5},
        "tokenizer": "deepseek",
        "compact_vocab": True,
        "max_length": 320,
        "round_to_block": True,
        "token_budget": 2048,
        "batch_size": 16,
    },
    "mask": {"weight": 2.0, "complementary": True, "sigma_low": 0.3, "sigma_high": 0.8, "block_size": 32,
             "sigma_per_block": True, "loss_weight": "sigma"},
    "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_position": 512},
    "optim": {"lr": 2e-3, "warmup_steps": 20, "min_lr_ratio": 0.1, "weight_decay": 0.1, "clip_grad": 1.0},
    "eval": {"every": 60, "max_samples": 32, "generate": 12, "generate_train": 4, "gen_length": 128,
             "steps_per_block": 32, "show": 4},
}


def demo_config(**over) -> dict:
    """A copy of :data:`DEMO_CONFIG` with top-level keys replaced."""
    cfg = copy.deepcopy(DEMO_CONFIG)
    cfg.update(over)
    return cfg


def _short(text: str, width: int = 96, lines: int = 6) -> str:
    """At most ``lines`` non-blank lines of ``text``, each cut to ``width`` characters."""
    rows = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    out = [ln if len(ln) <= width else ln[:width - 1] + "…" for ln in rows[:lines]]
    if len(rows) > lines:
        out.append("…")
    return "\n".join(out)


def _show_generations(gens, n: int) -> None:
    """Print up to ``n`` generations, training ones last, each with its verdict."""
    picked = [g for g in gens if g["split"] == "held-out"][: max(1, n // 2)]
    picked += [g for g in gens if g["split"] == "train"][: n - len(picked)]
    for g in picked:
        verdict = {True: "correct", False: "wrong", None: "not scored"}[g["correct"]]
        print(f"\n--- {g['split']} {g['domain']} sample ({verdict}) ---")
        print(textwrap.indent(_short(g["prompt"], lines=4), "prompt    | "))
        print(textwrap.indent(_short(g["generated"] or "(empty)"), "generated | "))
        print(textwrap.indent(_short(g["reference"], lines=4), "reference | "))


def run_demo(args) -> int:
    from ..train.config import apply_overrides
    from ..eval.generation import after_training
    from ..train.loop import train

    cfg = demo_config()
    if args.run_dir:
        cfg["run_dir"] = args.run_dir
    if args.steps:
        cfg["max_steps"] = args.steps
        cfg["ckpt_every"] = max(1, args.steps // 4)
        cfg["eval"]["every"] = max(1, args.steps // 4)
    if args.threads:
        cfg["threads"] = args.threads
    if args.priority != "rules":
        cfg["mask"]["priority"] = args.priority
        if not args.run_dir:
            cfg["run_dir"] = f"{DEMO_CONFIG['run_dir']}-{args.priority}"
    if args.brief:
        cfg["eval"].update(every=0, generate=0, generate_train=0, show=0)
    cfg = apply_overrides(cfg, args.set)
    t0 = time.perf_counter()
    prio = cfg["mask"].get("priority", "rules")
    what = {"rules": f"w = {cfg['mask']['weight']} on the annotated dense spans",
            "none": "no priority (uniform masks)",
            "loss": "priority from the model's own running loss per token, no annotation",
            "confidence": "priority from the model's confidence with the answer masked, no annotation",
            "mix": f"the model's running loss times w = {cfg['mask']['weight']} on the annotated spans"}[prio]
    print(f"dllm-masks demo{' (mask.priority=' + prio + ')' if prio != 'rules' else ''}: block-diffusion SFT "
          f"with complementary priority masking (block size {cfg['mask']['block_size']}, sigma in "
          f"[{cfg['mask']['sigma_low']}, {cfg['mask']['sigma_high']}], {what}, <eos> maskable), "
          f"torch threads: {torch.get_num_threads() if not cfg.get('threads') else cfg['threads']}")
    if prio in ("loss", "confidence", "none"):
        print("training ignores the rule spans; they only split the held-out accuracy into dense tokens and the rest")
    result = train(cfg, resume=args.resume, echo=print, evaluators=[after_training])
    from .train import summarize

    summarize(result)
    if result.get("fill_in"):
        print("\n--- one held-out answer, half of it masked, filled in by one forward pass "
              "([x] right, [x≠y] wrong: x predicted, y true; † information-dense; ⏎ newline) ---")
        print(result["fill_in"])
    if result["generations"]:
        _show_generations(result["generations"], cfg["eval"]["show"])
    m = result["metrics"]
    if m:
        print("\nA model of this size trained for minutes learns the form of the answers (GSM8K "
              "calculator notation, Python syntax and indentation) before their logic: expect few correct "
              "held-out answers. The paper's gains come from LLaDA-2.0-mini on 450K samples.")
    wall = time.perf_counter() - t0
    print(f"\ndemo finished in {wall:.0f} s; loss plot: {result['plot']}")
    print(f"re-run or extend with: dllm-masks train --config {os.path.join(cfg['run_dir'], 'config.json')}")
    return 0


# ---------------------------------------------------------------------------------------------
# show-mask: one sample, both complementary views
# ---------------------------------------------------------------------------------------------
SAMPLE = '''def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        if i % 15 == 0:
            out.append("FizzBuzz")
        elif i % 3 == 0:
            out.append("Fizz")
        else:
            out.append(str(i))
    return out
'''
DENSE = ["range(1, n + 1)", "i % 15 == 0", "i % 3 == 0", "out"]


def _render(chars, masked, prio):
    parts = []
    for c, m, p in zip(chars, masked, prio):
        if c == "\n":
            parts.append("\n")
        elif m:
            parts.append("\x1b[7m" + ("#" if p else "_") + "\x1b[0m")
        else:
            parts.append(c)
    return "".join(parts)


def run_show_mask(args) -> int:
    chars = list(SAMPLE)
    ids = torch.tensor([ord(c) for c in chars], dtype=torch.int32)
    prio = torch.zeros(len(chars), dtype=torch.bool)
    for span in DENSE[:3]:
        i = SAMPLE.index(span)
        prio[i:i + len(span)] = True
    out = priority_mask(ids, args.sigma, priority=prio, weight=args.weight, complementary=True,
                        mask_token_id=0, seed=args.seed, loss_weight="sigma")
    T = len(chars)
    q0, q1 = out.rates[0].tolist()
    print(f"backends: {available_backends()}")
    print(f"sigma={args.sigma} w={args.weight}: q0 (p_base)={q0:.3f}  q1={q1:.3f}  "
          f"priority tokens={int(prio.sum())}/{T}")
    for v, name in enumerate(["view 0 (logical sample: dense spans masked first)",
                              "view 1 (complement: syntax masked)"]):
        m = out.masked[v * T:(v + 1) * T]
        pm = float(m[prio].float().mean()) if prio.any() else 0.0
        om = float(m[~prio].float().mean())
        print(f"\n== {name}: masked {int(m.sum())}/{T}, priority {pm:.2f}, other {om:.2f}")
        print(_render(chars, m.tolist(), prio.tolist()))
    if args.stats:
        print("\n== mask statistics (dm.mask_stats)")
        print(format_stats(mask_stats(out, priority=prio)))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: annotate the bundled data, train a tiny diffusion LM, generate",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {DEMO_CONFIG['max_steps']})")
    p.add_argument("--run-dir", default=None, help=f"output folder (default {DEMO_CONFIG['run_dir']})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo instead of starting over")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--priority", default="rules", choices=["rules", "none", "loss", "confidence", "mix"],
                   help="mask.priority: where the priority comes from (default: the annotated rule spans; "
                        "loss/confidence: from the model, no annotation; run dir runs/demo-PRIORITY)")
    p.add_argument("--brief", action="store_true",
                   help="no periodic held-out evaluation, generations or fill-in example: the training, "
                        "the held-out metrics at the end and the cost of the priority")
    p.set_defaults(func=run_demo)

    q = sub.add_parser("show-mask", help="show complementary priority masking on a small code sample")
    q.add_argument("--sigma", type=float, default=0.4)
    q.add_argument("--weight", type=float, default=2.0)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--stats", action="store_true",
                   help="also print dm.mask_stats: masked run lengths, dense tokens masked with their neighbours, "
                        "dense spans masked whole, realized rates")
    q.set_defaults(func=run_show_mask)
