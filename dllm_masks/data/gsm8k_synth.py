"""Synthetic GSM8K-style word problems: templated multi-step arithmetic with calculator annotations.

Each solution reads like GSM8K's: one sentence per step, every calculation written as a
calculator annotation ``<<48/2=24>>24`` (sometimes preceded by the expression in prose,
``48/2 = <<48/2=24>>24``), and a last line ``#### N``. All results are exact integers. Problem
``i`` of seed ``s`` depends only on ``(s, i)``, so ``generate(n, seed)`` is a prefix of
``generate(n + k, seed)`` and every run of any machine produces the same text.

Used by the tests of :mod:`dllm_masks.extract.math`, by :func:`dllm_masks.data.bundled.bundled_samples`
and by the training loop and ablations as math training data.

>>> p = generate(1, seed=0)[0]
>>> p.answer.splitlines()[-1] == f"#### {p.final}"
True
"""
from __future__ import annotations

import ast
import operator
import random
from dataclasses import dataclass
from typing import Callable, List, Tuple

__all__ = ["MathProblem", "generate", "evaluate", "TEMPLATES"]

_NAMES = [("Natalia", "she"), ("James", "he"), ("Weng", "she"), ("Betty", "she"), ("Julie", "she"),
          ("Mark", "he"), ("Albert", "he"), ("Ken", "he"), ("Alexis", "she"), ("Tina", "she"),
          ("Carlos", "he"), ("Priya", "she"), ("Omar", "he"), ("Mei", "she"), ("Lucas", "he"),
          ("Amara", "she"), ("Jonas", "he"), ("Sofia", "she"), ("Ravi", "he"), ("Hannah", "she")]
_ITEMS = [("apple", "apples"), ("pencil", "pencils"), ("cookie", "cookies"), ("marble", "marbles"),
          ("sticker", "stickers"), ("book", "books"), ("cupcake", "cupcakes"), ("toy car", "toy cars"),
          ("notebook", "notebooks"), ("orange", "oranges"), ("candle", "candles"), ("shirt", "shirts")]
_THINGS = ["bike", "jacket", "lamp", "guitar", "backpack", "video game", "pair of shoes", "tent"]
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expr: str):
    """Evaluate a calculator expression (``+ - * /``, parentheses, numbers) without ``eval``.

    Returns an int when the value is integral, else a float. Raises ``ValueError`` on anything
    else.
    """
    if not isinstance(expr, str):
        raise TypeError(f"expr: expected a str, got {type(expr).__name__}")

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(f"expr: unsupported element in {expr!r}")

    try:
        v = ev(ast.parse(expr.replace(",", ""), mode="eval"))
    except (SyntaxError, ZeroDivisionError) as e:
        raise ValueError(f"expr: cannot evaluate {expr!r}: {e}") from None
    return int(v) if float(v).is_integer() else v


@dataclass(frozen=True)
class MathProblem:
    """One generated problem.

    Attributes
    ----------
    id : str
        ``"gsm8k-synth/{seed}/{index}"``.
    question : str
        The word problem (the SFT prompt).
    answer : str
        The GSM8K-style solution (the SFT answer), ending in ``#### {final}``.
    final : int
        The final answer.
    calculations : tuple of (str, int)
        Every calculator annotation's expression and result, in order of appearance.
    template : str
        Name of the template that produced it.
    """

    id: str
    question: str
    answer: str
    final: int
    calculations: Tuple[Tuple[str, int], ...]
    template: str

    def to_record(self) -> dict:
        """The JSONL record the extract CLI and the data pipeline read:
        ``{"id", "prompt", "answer", "domain": "math"}``."""
        return {"id": self.id, "prompt": self.question, "answer": self.answer, "domain": "math"}


class _Solution:
    """Collects solution sentences and their calculator annotations."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.calcs: List[Tuple[str, int]] = []
        self.lines: List[str] = []

    def calc(self, expr: str, money: bool = False) -> Tuple[str, int]:
        value = evaluate(expr)
        if not isinstance(value, int):
            raise AssertionError(f"template produced a non-integer {expr}={value}")
        self.calcs.append((expr, value))
        dollar = "$" if money else ""
        ann = f"{dollar}<<{expr}={value}>>{value}"
        if self.rng.random() < 0.6:  # GSM8K usually writes the expression in the prose too
            spaced = self.rng.random() < 0.5
            prose = expr
            if self.rng.random() < 0.3:
                prose = prose.replace("*", "x")
            if spaced:
                for op in "+-*/x":
                    prose = prose.replace(op, f" {op} ")
            return f"{prose} = {ann}", value
        return ann, value

    def step(self, sentence: str, expr: str, money: bool = False) -> int:
        """Add the sentence ``sentence.format(calculation)`` and return the calculation's value."""
        text, value = self.calc(expr, money)
        self.lines.append(sentence.format(text))
        return value


def _pick(rng, seq):
    return seq[rng.randrange(len(seq))]


def _shopping(rng, s):
    name, pron = _pick(rng, _NAMES)
    (i1, p1), (i2, p2) = rng.sample(_ITEMS, 2)
    a, b, pa, pb = rng.randint(2, 12), rng.randint(2, 12), rng.randint(1, 9), rng.randint(2, 15)
    total = a * pa + b * pb
    bill = next(x for x in (20, 50, 100, 200, 500) if x > total)
    q = (f"{name} buys {a} {p1} for ${pa} each and {b} {p2} for ${pb} each. {pron.capitalize()} pays "
         f"with a ${bill} bill. How much change does {pron} get?")
    v1 = s.step(f"The {p1} cost {{}}.", f"{a}*{pa}", money=True)
    v2 = s.step(f"The {p2} cost {{}}.", f"{b}*{pb}", money=True)
    v3 = s.step(f"In total {pron} spends {{}}.", f"{v1}+{v2}", money=True)
    v4 = s.step(f"So {pron} gets {{}} in change.", f"{bill}-{v3}", money=True)
    return q, v4


def _reading(rng, s):
    name, pron = _pick(rng, _NAMES)
    r, d, k, d2 = rng.randint(5, 40), rng.randint(2, 9), rng.randint(2, 4), rng.randint(2, 9)
    q = (f"{name} reads {r} pages a day for {d} days. Then {pron} reads {k} times as many pages a day "
         f"for {d2} more days. How many pages does {pron} read in all?")
    v1 = s.step(f"In the first {d} days {pron} reads {{}} pages.", f"{r}*{d}")
    v2 = s.step(f"Then {pron} reads {{}} pages a day.", f"{r}*{k}")
    v3 = s.step(f"In the next {d2} days {pron} reads {{}} pages.", f"{v2}*{d2}")
    v4 = s.step(f"Altogether {pron} reads {{}} pages.", f"{v1}+{v3}")
    return q, v4


def _sharing(rng, s):
    name, pron = _pick(rng, _NAMES)
    _, item = _pick(rng, _ITEMS)
    k, f, m, c = rng.randint(2, 6), rng.randint(2, 6), rng.randint(2, 5), rng.randint(2, 12)
    n = k * f + m * c
    q = (f"{name} has {n} {item}. {pron.capitalize()} gives {k} {item} to each of {f} friends and puts "
         f"the rest equally into {m} boxes. How many {item} are in each box?")
    v1 = s.step(f"{pron.capitalize()} gives away {{}} {item}.", f"{k}*{f}")
    v2 = s.step(f"{pron.capitalize()} has {{}} {item} left.", f"{n}-{v1}")
    v3 = s.step(f"Each box gets {{}} {item}.", f"{v2}/{m}")
    return q, v3


def _discount(rng, s):
    name, pron = _pick(rng, _NAMES)
    thing = _pick(rng, _THINGS)
    p, d, n = 20 * rng.randint(1, 15), _pick(rng, (10, 20, 25, 50)), rng.randint(2, 5)
    q = (f"A {thing} costs ${p}. It is on sale for {d}% off. {name} buys {n} of them. "
         f"How much does {pron} pay?")
    v1 = s.step(f"The discount is {{}}.", f"{p}*{d}/100", money=True)
    v2 = s.step(f"Each {thing} costs {{}} on sale.", f"{p}-{v1}", money=True)
    v3 = s.step(f"So {pron} pays {{}}.", f"{v2}*{n}", money=True)
    return q, v3


def _ages(rng, s):
    (a, _), (b, _) = rng.sample(_NAMES, 2)
    k, ab, y = rng.randint(2, 4), rng.randint(3, 15), rng.randint(2, 10)
    q = (f"{a} is {k} times as old as {b}. {b} is {ab} years old. In {y} years, what will the sum "
         f"of their ages be?")
    v1 = s.step(f"{a} is {{}} years old.", f"{k}*{ab}")
    v2 = s.step(f"In {y} years {a} will be {{}}.", f"{v1}+{y}")
    v3 = s.step(f"{b} will be {{}}.", f"{ab}+{y}")
    v4 = s.step(f"The sum of their ages will be {{}}.", f"{v2}+{v3}")
    return q, v4


def _factory(rng, s):
    item, items = _pick(rng, _ITEMS)
    x, h, d, p = rng.randint(10, 60), rng.randint(4, 12), rng.randint(3, 7), rng.randint(2, 9)
    q = (f"A factory makes {x} {items} per hour. It runs {h} hours a day for {d} days a week. Each "
         f"{item} sells for ${p}. How much money does the factory make in a week?")
    v1 = s.step(f"It makes {{}} {items} a day.", f"{x}*{h}")
    v2 = s.step(f"It makes {{}} {items} a week.", f"{v1}*{d}")
    v3 = s.step(f"They sell for {{}}.", f"{v2}*{p}", money=True)
    return q, v3


def _savings(rng, s):
    name, pron = _pick(rng, _NAMES)
    thing = _pick(rng, _THINGS)
    a = rng.randint(10, 40)
    sp = rng.randint(1, a - 5)
    w = rng.randint(4, 12)
    c = rng.randint(1, (a - sp) * w - 1)
    q = (f"{name} gets ${a} a week and spends ${sp} of it each week. After {w} weeks {pron} buys a "
         f"{thing} for ${c}. How much money does {pron} have left?")
    v1 = s.step(f"{pron.capitalize()} saves {{}} a week.", f"{a}-{sp}", money=True)
    v2 = s.step(f"After {w} weeks {pron} has {{}}.", f"{v1}*{w}", money=True)
    v3 = s.step(f"After buying the {thing} {pron} has {{}} left.", f"{v2}-{c}", money=True)
    return q, v3


def _race(rng, s):
    (a, _), (b, _) = rng.sample(_NAMES, 2)
    m, k = 2 * rng.randint(2, 15), rng.randint(1, 6)
    q = (f"{a} ran {m} miles. {b} ran {k} miles more than half as far as {a}. How many miles did "
         f"they run together?")
    v1 = s.step(f"Half of {a}'s distance is {{}} miles.", f"{m}/2")
    v2 = s.step(f"{b} ran {{}} miles.", f"{v1}+{k}")
    v3 = s.step(f"Together they ran {{}} miles.", f"{m}+{v2}")
    return q, v3


def _baskets(rng, s):
    a, b, c, n = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
    q = (f"A basket holds {a} red apples, {b} green apples and {c} yellow apples. How many apples "
         f"are in {n} such baskets?")
    v1 = s.step(f"One basket holds {{}} apples.", f"{a}+{b}+{c}")
    v2 = s.step(f"{n} baskets hold {{}} apples.", f"{v1}*{n}")
    return q, v2


def _wages(rng, s):
    name, pron = _pick(rng, _NAMES)
    h, d, r, w = rng.randint(3, 10), rng.randint(2, 6), rng.randint(8, 30), rng.randint(2, 8)
    q = (f"{name} works {h} hours a day, {d} days a week, and earns ${r} an hour. How much does "
         f"{pron} earn in {w} weeks?")
    v1 = s.step(f"{pron.capitalize()} works {{}} hours a week.", f"{h}*{d}")
    v2 = s.step(f"{pron.capitalize()} earns {{}} a week.", f"{v1}*{r}", money=True)
    v3 = s.step(f"In {w} weeks {pron} earns {{}}.", f"{v2}*{w}", money=True)
    return q, v3


TEMPLATES: List[Tuple[str, Callable]] = [
    ("shopping", _shopping), ("reading", _reading), ("sharing", _sharing), ("discount", _discount),
    ("ages", _ages), ("factory", _factory), ("savings", _savings), ("race", _race),
    ("baskets", _baskets), ("wages", _wages),
]


def generate(n: int, seed: int = 0) -> List[MathProblem]:
    """Generate ``n`` GSM8K-style problems.

    Parameters
    ----------
    n : int
        Number of problems (>= 0).
    seed : int
        Problem ``i`` depends only on ``(seed, i)``.

    Returns
    -------
    list of MathProblem
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    out = []
    for i in range(n):
        rng = random.Random(f"gsm8k-synth:{seed}:{i}")  # str seeds hash with SHA-512: stable
        name, template = TEMPLATES[rng.randrange(len(TEMPLATES))]
        sol = _Solution(rng)
        question, final = template(rng, sol)
        answer = "\n".join(sol.lines + [f"#### {final}"])
        out.append(MathProblem(f"gsm8k-synth/{seed}/{i}", question, answer, final, tuple(sol.calcs), name))
    return out
