"""``dllm-masks train``: run (or resume) a block-diffusion SFT job from a JSON config."""
from __future__ import annotations

import json
import os
import sys

__all__ = ["add_parser", "run", "summarize"]


def summarize(result: dict, echo=print) -> None:
    """Print the end-of-run summary of :func:`dllm_masks.train.loop.train`'s result."""
    if result.get("last_loss") is None:
        echo(f"nothing to do: {result['run_dir']} is already at step {result['steps']}")
    else:
        tps = result.get("tokens_per_s")
        echo(f"trained steps {result['start_step'] + 1}-{result['steps']} in {result['train_s']:.1f} s"
             + (f" ({tps:,.0f} tokens/s)" if tps else "")
             + f"; final loss {result['final_loss']:.4f} (mean of the last steps), last {result['last_loss']:.4f}")
    h = result.get("heldout") or {}
    if h:
        pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
        echo(f"held-out loss {h['loss']:.4f}; masked-token accuracy {pct(h['acc'])} "
             f"(information-dense tokens {pct(h['dense_acc'])}, the rest {pct(h['other_acc'])}; "
             f"{h['tokens']} tokens, uniform masks)")
    imp = result.get("importance")
    if imp and imp.get("ms_per_step") is not None:
        echo(f"priority from the model (mask.priority={imp['source']}, scores updated every {imp['every']} step(s)): "
             f"{imp['ms_per_step']:.1f} ms per step, score store {imp['store_bytes'] / 2**10:,.0f} KiB, extra peak "
             f"{imp['peak_bytes'] / 2**20:.1f} MiB; {imp['scored_tokens']:,} of {imp['tokens']:,} tokens scored")
    m = result.get("metrics") or {}
    if "math_accuracy" in m:
        echo(f"held-out math accuracy (final-answer exact match): {m['math_accuracy']:.1%} of {m['math_n']}")
    if "code_pass@1" in m:
        echo(f"held-out code pass@1 (HumanEval tests in the sandbox): {m['code_pass@1']:.1%} of {m['code_n']}")
    if result.get("checkpoint"):
        echo(f"checkpoint: {result['checkpoint']}")
    if result.get("plot"):
        echo(f"loss plot: {result['plot']}   log: {result['log_csv']}")


def run(args) -> int:
    from ..train.config import load_config
    from ..eval.generation import after_training
    from ..train.loop import train

    try:
        cfg = load_config(args.config, args.set)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        result = train(cfg, resume=not args.fresh, stop_after=args.stop_after,
                       progress=False if args.no_progress else None, echo=print,
                       evaluators=[after_training])
    except (ValueError, TypeError) as e:  # bad config, data or checkpoint: a message, not a traceback
        print(f"dllm-masks train: error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        summarize(result)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="block-diffusion SFT with complementary priority masking",
                       description="Train or resume a run from a JSON config (see configs/). Launch with "
                                   "torchrun --nproc_per_node N for data parallelism.")
    p.add_argument("--config", help="JSON config file (omitted: the defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set mask.weight=1 --set data.batch_size=8 (repeatable)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming from run_dir")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="leave (with a checkpoint) after this step; resuming continues the same schedule")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)
