"""``dllm-masks demo``: show complementary priority masking on a small code sample."""
from __future__ import annotations

import torch

from .ops import available_backends, priority_mask

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


def run(args) -> int:
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
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="show complementary priority masking on a small sample")
    p.add_argument("--sigma", type=float, default=0.4)
    p.add_argument("--weight", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
