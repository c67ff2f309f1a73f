"""A tiny task for the miniature ablations (``benchmarks/quality/``): small enough to learn from
scratch on a CPU, where reasoning matters and the dense spans are known by construction.

Two domains, both written the way the paper's data is:

- **math**: two-step arithmetic word problems in GSM8K format. Every step is a sentence with a
  calculator annotation (``7+5=<<7+5=12>>12 pens.``) and the last line is ``#### N``. Dense: each
  equation with its annotation, and the final answer (what the paper's GPT-4o prompt calls core
  operations and key intermediate and final results).
- **code**: small Python functions whose docstring says in words what to compute
  (``Return x plus 3 if x is above 4, else x times 2.``); the answer is the body, scored by tests
  in the sandbox. Dense: conditions, loop iterables, accumulating updates and returned values (the
  paper's control-flow conditions and algorithm pivots).

Every answer is built from segments flagged dense or not, so its spans are exact; the tests check
that they agree with the library's rule extractors (:func:`dllm_masks.extract.math_spans`,
:func:`dllm_masks.extract.code_spans`). Problem ``i`` of seed ``s`` depends only on ``(s, i)``.

Numbers stay small (operands up to 9, products up to 25 by default) and the text is short, so that
with the deepseek tokenizer restricted to the ~175 ids it uses (every number below 1000 is one
token) a tiny model learns part of it within a minute or two of CPU time. A character-level
vocabulary was tried first: sequences 2.5 times longer, and nothing learned in that time.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["Problem", "TaskConfig", "generate", "make_split", "problem_spans", "MATH_TEMPLATES", "CODE_TEMPLATES"]

_NAMES = [("Ann", "she"), ("Bob", "he"), ("Cal", "he"), ("Dee", "she"), ("Eve", "she"), ("Fay", "she"),
          ("Gus", "he"), ("Hal", "he"), ("Ivy", "she"), ("Jon", "he"), ("Kim", "she"), ("Leo", "he")]
_ITEMS = ["pens", "cards", "eggs", "shells", "coins", "beads", "books", "plums", "stamps", "toys"]
_CMP = {"above": (">", lambda x, k: x > k), "below": ("<", lambda x, k: x < k)}
_ARITH = {"plus": ("+", lambda x, k: x + k), "minus": ("-", lambda x, k: x - k), "times": ("*", lambda x, k: x * k)}


@dataclass(frozen=True)
class Problem:
    """One generated problem.

    Attributes
    ----------
    id : str
        ``"quality/{seed}/{index}"``.
    domain : {"math", "code"}
    template : str
    prompt, answer : str
    spans : tuple of (int, int)
        Half-open character spans of the dense parts of ``answer``, sorted and disjoint.
    final : int or None
        The final answer (math).
    test, entry_point : str or None
        HumanEval-style ``check(candidate)`` and the function name (code).
    """

    id: str
    domain: str
    template: str
    prompt: str
    answer: str
    spans: Tuple[Tuple[int, int], ...]
    final: Optional[int] = None
    test: Optional[str] = None
    entry_point: Optional[str] = None

    def record(self, annotated: bool = True) -> dict:
        """The SFT record of :mod:`dllm_masks.data` (``spans`` None when not annotated)."""
        rec = {"id": self.id, "prompt": self.prompt, "answer": self.answer, "domain": self.domain,
               "spans": [list(s) for s in self.spans] if annotated else None}
        if self.test is not None:
            rec.update(test=self.test, entry_point=self.entry_point)
        return rec


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty of the task.

    Attributes
    ----------
    max_operand : int
        Operands of the math problems and constants of the code problems are drawn from
        ``[2, max_operand]`` (multiplications use ``[2, max_factor]``).
    max_factor : int
    math_share : float
        Fraction of math problems (the rest is code).
    """

    max_operand: int = 9
    max_factor: int = 5
    math_share: float = 0.5

    def to_dict(self) -> dict:
        return {"max_operand": self.max_operand, "max_factor": self.max_factor, "math_share": self.math_share}


class _Text:
    """An answer assembled from segments, each dense or not."""

    def __init__(self):
        self.parts: List[Tuple[str, bool]] = []

    def add(self, text: str, dense: bool = False) -> "_Text":
        self.parts.append((text, dense))
        return self

    def build(self) -> Tuple[str, Tuple[Tuple[int, int], ...]]:
        out, spans, pos = [], [], 0
        for text, dense in self.parts:
            if dense and text:
                if spans and spans[-1][1] == pos:
                    spans[-1] = (spans[-1][0], pos + len(text))
                else:
                    spans.append((pos, pos + len(text)))
            out.append(text)
            pos += len(text)
        return "".join(out), tuple(spans)


def _calc(t: _Text, a: int, op: str, b: int, value: int, tail: str) -> None:
    t.add(f"{a}{op}{b}=<<{a}{op}{b}={value}>>{value}", dense=True).add(tail)


# --- math: two-step word problems ------------------------------------------------------------

def _m_gain_loss(rng, c: TaskConfig, t: _Text):
    name, pron = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, c.max_operand), rng.randint(2, c.max_operand)
    s = a + b
    k = rng.randint(1, s - 1)
    q = f"{name} has {a} {item}. {pron.capitalize()} gets {b} more and gives away {k}. How many {item} are left?"
    _calc(t, a, "+", b, s, f" {item}.\n")
    _calc(t, s, "-", k, s - k, " left.\n")
    return q, s - k


def _m_bags(rng, c: TaskConfig, t: _Text):
    name, _ = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    a, b, k = rng.randint(2, c.max_factor), rng.randint(2, c.max_factor), rng.randint(2, c.max_operand)
    p = a * b
    q = f"{name} has {a} bags of {b} {item} and {k} loose {item}. How many {item} in all?"
    _calc(t, a, "*", b, p, " in bags.\n")
    _calc(t, p, "+", k, p + k, " in all.\n")
    return q, p + k


def _m_change(rng, c: TaskConfig, t: _Text):
    name, pron = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    a, b = rng.randint(2, c.max_factor), rng.randint(2, c.max_factor)
    p = a * b
    bill = p + rng.randint(1, c.max_operand)
    q = f"{name} buys {a} {item} at ${b} each and pays ${bill}. How much change does {pron} get?"
    _calc(t, a, "*", b, p, " dollars.\n")
    _calc(t, bill, "-", p, bill - p, " change.\n")
    return q, bill - p


def _m_twice(rng, c: TaskConfig, t: _Text):
    name, pron = rng.choice(_NAMES)
    a, b = rng.randint(2, c.max_operand), rng.randint(2, c.max_operand)
    s = a + b
    q = (f"{name} reads {a} pages on Monday and {b} on Tuesday. On Wednesday {pron} reads twice as many "
         f"as on both days. How many pages on Wednesday?")
    _calc(t, a, "+", b, s, " pages.\n")
    _calc(t, s, "*", 2, 2 * s, " on Wednesday.\n")
    return q, 2 * s


def _m_share(rng, c: TaskConfig, t: _Text):
    name, pron = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)
    f, each = rng.randint(2, c.max_factor), rng.randint(2, c.max_factor)
    total = f * each
    a = rng.randint(1, total - 1)
    b = total - a
    q = f"{name} has {a} {item} and finds {b} more. {pron.capitalize()} shares them equally among {f} friends. How many does each get?"
    _calc(t, a, "+", b, total, f" {item}.\n")
    _calc(t, total, "/", f, each, " each.\n")
    return q, each


MATH_TEMPLATES: Dict[str, Callable] = {"gain_loss": _m_gain_loss, "bags": _m_bags, "change": _m_change,
                                       "twice": _m_twice, "share": _m_share}


# --- code: functions described in words -------------------------------------------------------

def _checks(calls: Sequence[Tuple[str, object]]) -> str:
    lines = ["def check(candidate):"] + [f"    assert candidate({args}) == {want!r}" for args, want in calls]
    return "\n".join(lines) + "\n"


def _c_branch(rng, c: TaskConfig, t: _Text):
    cw = rng.choice(sorted(_CMP))
    w1, w2 = rng.sample(sorted(_ARITH), 2)
    b, k1, k2 = (rng.randint(2, c.max_operand) for _ in range(3))
    (cs, cf), (s1, f1), (s2, f2) = _CMP[cw], _ARITH[w1], _ARITH[w2]
    prompt = f'def f(x):\n    """Return x {w1} {k1} if x is {cw} {b}, else x {w2} {k2}."""\n'
    t.add("    if ").add(f"x {cs} {b}", True).add(":\n        return ").add(f"x {s1} {k1}", True)
    t.add("\n    return ").add(f"x {s2} {k2}", True).add("\n")
    ref = lambda x: f1(x, k1) if cf(x, b) else f2(x, k2)  # noqa: E731
    xs = sorted({0, b - 1, b, b + 1, b + 4})
    return prompt, _checks([(str(x), ref(x)) for x in xs])


def _c_loop_sum(rng, c: TaskConfig, t: _Text):
    w = rng.choice(sorted(_ARITH))
    a, k, b = rng.randint(1, c.max_operand), rng.randint(2, c.max_operand), rng.randint(0, c.max_operand)
    s, f = _ARITH[w]
    prompt = f'def f(n):\n    """Start at {b} and add i {w} {k} for each i from {a} below n."""\n'
    t.add(f"    s = {b}\n    for i in ").add(f"range({a}, n)", True).add(":\n        ")
    t.add(f"s += i {s} {k}", True).add("\n    return ").add("s", True).add("\n")
    ref = lambda n: b + sum(f(i, k) for i in range(a, n))  # noqa: E731
    return prompt, _checks([(str(n), ref(n)) for n in (0, a + 1, a + 3, a + 6)])


def _c_count(rng, c: TaskConfig, t: _Text):
    cw = rng.choice(sorted(_CMP))
    k, m, b = rng.randint(2, c.max_operand), rng.randint(1, c.max_operand), rng.randint(0, c.max_operand)
    cs, cf = _CMP[cw]
    prompt = f'def f(xs):\n    """Start at {b} and add {m} for each item of xs that is {cw} {k}."""\n'
    t.add(f"    c = {b}\n    for v in ").add("xs", True).add(":\n        if ")
    t.add(f"v {cs} {k}", True).add(":\n            ").add(f"c += {m}", True).add("\n    return ").add("c", True)
    t.add("\n")
    cases = [[], [k], [k - 1, k, k + 1], [0, 2 * k, k + 2, 1, k - 2, 9]]
    return prompt, _checks([(repr(xs), b + m * sum(1 for v in xs if cf(v, k))) for xs in cases])


def _c_multiple(rng, c: TaskConfig, t: _Text):
    w1, w2 = rng.sample(sorted(_ARITH), 2)
    d = rng.randint(2, 5)
    k1, k2 = rng.randint(2, c.max_operand), rng.randint(2, c.max_operand)
    (s1, f1), (s2, f2) = _ARITH[w1], _ARITH[w2]
    prompt = f'def f(x):\n    """Return x {w1} {k1} if x is a multiple of {d}, else x {w2} {k2}."""\n'
    t.add("    if ").add(f"x % {d} == 0", True).add(":\n        return ").add(f"x {s1} {k1}", True)
    t.add("\n    return ").add(f"x {s2} {k2}", True).add("\n")
    ref = lambda x: f1(x, k1) if x % d == 0 else f2(x, k2)  # noqa: E731
    return prompt, _checks([(str(x), ref(x)) for x in (0, 1, d, d + 1, 3 * d)])


CODE_TEMPLATES: Dict[str, Callable] = {"branch": _c_branch, "loop_sum": _c_loop_sum, "count": _c_count,
                                       "multiple": _c_multiple}


def _problem(seed: int, i: int, cfg: TaskConfig) -> Problem:
    rng = random.Random(f"quality-task:{seed}:{i}")  # str seeds hash with SHA-512: the same everywhere
    t = _Text()
    pid = f"quality/{seed}/{i}"
    if rng.random() < cfg.math_share:
        name = rng.choice(sorted(MATH_TEMPLATES))
        q, final = MATH_TEMPLATES[name](rng, cfg, t)
        t.add("#### ").add(str(final), True)
        answer, spans = t.build()
        return Problem(pid, "math", name, q + "\n", answer, spans, final=final)
    name = rng.choice(sorted(CODE_TEMPLATES))
    prompt, test = CODE_TEMPLATES[name](rng, cfg, t)
    answer, spans = t.build()
    return Problem(pid, "code", name, prompt, answer, spans, test=test, entry_point="f")


def generate(n: int, seed: int = 0, cfg: Optional[TaskConfig] = None) -> List[Problem]:
    """``n`` problems; problem ``i`` depends only on ``(seed, i, cfg)``.

    Parameters
    ----------
    n : int
    seed : int
    cfg : TaskConfig, optional
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    cfg = cfg or TaskConfig()
    return [_problem(seed, i, cfg) for i in range(n)]


def make_split(n_train: int, n_eval: int, seed: int = 0, cfg: Optional[TaskConfig] = None):
    """(train, held-out) problems: held-out prompts never occur in the training set.

    The held-out problems come from another generator seed; ones whose prompt is a training prompt
    are skipped, so the held-out set measures generalization, not recall.
    """
    cfg = cfg or TaskConfig()
    train = generate(n_train, seed, cfg)
    seen = {p.prompt for p in train}
    held, i = [], 0
    while len(held) < n_eval:
        p = _problem(seed + 1_000_003, i, cfg)
        i += 1
        if p.prompt not in seen:
            seen.add(p.prompt)
            held.append(p)
        if i > 50 * (n_eval + 10):
            raise ValueError(f"n_eval: cannot find {n_eval} held-out problems unseen in training; "
                             "raise the task's operand ranges")
    return train, held


def problem_spans(p: Problem) -> List[str]:
    """The dense substrings of a problem's answer (for reading and tests)."""
    return [p.answer[a:b] for a, b in p.spans]
