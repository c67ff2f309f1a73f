"""Scores for the ablation harness: code pass@k in a sandbox and math final-answer accuracy.

>>> from dllm_masks.eval.scoring import evaluate_code, math_accuracy
>>> report = evaluate_code(problems, completions, workers=2, timeout=5.0)   # HumanEval records
>>> report.pass_at_1, report.results[0][0].status
>>> math_accuracy(["... so she pays 18 dollars.\\n#### 18"], ["#### 18"])
1.0

Generated code never runs in the calling process: every program runs in a separate, limited
interpreter (see :mod:`dllm_masks.eval.sandbox` for what is and is not enforced).
"""
from __future__ import annotations

import math
import numbers
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Optional

from tqdm.auto import tqdm

from ..validation import check_bool
from .sandbox import (ExecResult, SandboxLimits, STATUSES, _check_int, _run_resolved, isolation_details,
                      resolve_isolation, run_program)

__all__ = [
    "evaluate_code", "CodeEvalReport", "pass_at_k", "run_program", "ExecResult", "STATUSES",
    "isolation_details", "math_accuracy", "score_math", "MathEvalReport", "extract_answer",
    "normalize_answer",
]


# --------------------------------------------------------------------------------------------
# Code
# --------------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` passed (Chen et al. 2021).

    ``1 - C(n - c, k) / C(n, k)``, computed as a product so that large ``n`` does not overflow.

    Parameters
    ----------
    n : int
        Samples drawn for the problem, >= 1.
    c : int
        Samples that passed, in [0, n].
    k : int
        The k of pass@k, in [1, n].

    Returns
    -------
    float
        The probability that at least one of k samples drawn without replacement passes.
    """
    n = _check_int("n", n, low=1)
    c = _check_int("c", c, low=0, high=n)
    k = _check_int("k", k, low=1, high=n)
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass(frozen=True)
class CodeEvalReport:
    """Results of :func:`evaluate_code`.

    Attributes
    ----------
    results : list of list of ExecResult
        ``results[i][j]``: completion ``j`` of sample ``i``, in input order.
    task_ids : list of (str or None)
        Each sample's ``"task_id"`` where it has one.
    """

    results: List[List[ExecResult]]
    task_ids: List[Optional[str]]

    @property
    def num_samples(self) -> List[int]:
        """Completions per sample."""
        return [len(r) for r in self.results]

    @property
    def num_correct(self) -> List[int]:
        """Passing completions per sample."""
        return [sum(x.passed for x in r) for r in self.results]

    @property
    def pass_at_1(self) -> float:
        """Mean over samples of the fraction of completions that pass (unbiased pass@1)."""
        return self.pass_at(1)

    def pass_at(self, k: int) -> float:
        """Mean over samples of :func:`pass_at_k`; every sample needs at least ``k`` completions."""
        k = _check_int("k", k, low=1)
        short = [i for i, n in enumerate(self.num_samples) if n < k]
        if short:
            raise ValueError(f"k: sample {short[0]} has only {self.num_samples[short[0]]} completions, fewer than k = {k}")
        return sum(pass_at_k(n, c, k) for n, c in zip(self.num_samples, self.num_correct)) / len(self.results)

    @property
    def status_counts(self) -> dict:
        """How many completions ended with each status (every status listed, zeros included)."""
        counts = Counter(x.status for r in self.results for x in r)
        return {s: counts.get(s, 0) for s in STATUSES}


def _check_samples(samples) -> list:
    if isinstance(samples, (str, bytes, Mapping)) or not isinstance(samples, Sequence):
        raise TypeError(f"samples: expected a sequence of dicts, got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError("samples: must not be empty")
    for i, s in enumerate(samples):
        if not isinstance(s, Mapping):
            raise TypeError(f"samples[{i}]: expected a dict with 'prompt', 'test', 'entry_point', got {type(s).__name__}")
        for key in ("prompt", "test", "entry_point"):
            if key not in s:
                raise ValueError(f"samples[{i}]: missing key {key!r}")
            if not isinstance(s[key], str):
                raise TypeError(f"samples[{i}][{key!r}]: expected a str, got {type(s[key]).__name__}")
        if not s["entry_point"].isidentifier():
            raise ValueError(f"samples[{i}]['entry_point']: expected a Python identifier, got {s['entry_point']!r}")
    return list(samples)


def _check_completions(completions, n: int) -> List[List[str]]:
    if isinstance(completions, (str, bytes)) or not isinstance(completions, Sequence):
        raise TypeError(f"completions: expected a sequence (one item per sample), got {type(completions).__name__}")
    if len(completions) != n:
        raise ValueError(f"completions: expected {n} items (one per sample), got {len(completions)}")
    groups = []
    for i, c in enumerate(completions):
        if isinstance(c, str):
            groups.append([c])
            continue
        if not isinstance(c, Sequence) or isinstance(c, bytes):
            raise TypeError(f"completions[{i}]: expected a str or a sequence of str, got {type(c).__name__}")
        if len(c) == 0:
            raise ValueError(f"completions[{i}]: must hold at least one completion")
        for j, x in enumerate(c):
            if not isinstance(x, str):
                raise TypeError(f"completions[{i}][{j}]: expected a str, got {type(x).__name__}")
        groups.append(list(c))
    return groups


def evaluate_code(samples: Sequence[Mapping], completions: Sequence, *, workers: int = 2,
                  timeout: float = 5.0, memory_mb: int = 1024, cpu_seconds: Optional[int] = None,
                  file_mb: int = 16, max_processes: int = 32, output_chars: int = 4000,
                  isolation: str = "auto", progress: bool = False) -> CodeEvalReport:
    """Run every completion against its sample's tests in sandboxes; score pass@1 (and pass@k).

    Each program is ``sample["prompt"] + completion`` and is judged by ``sample["test"]`` (which
    defines ``check(candidate)``) called on ``sample["entry_point"]``, as in HumanEval. Up to
    ``workers`` sandboxes run at once; a thread per worker waits on its sandbox, no program runs
    in this process.

    Parameters
    ----------
    samples : sequence of dict, length N >= 1
        Problems with str keys ``"prompt"``, ``"test"``, ``"entry_point"`` (a Python
        identifier) and optionally ``"task_id"``; HumanEval records as they are.
    completions : sequence, length N
        ``completions[i]``: one str, or a non-empty sequence of str (several samples of the same
        problem, for pass@k).
    workers : int
        Sandboxes running at once, in [1, 64]. Each one is a process with up to ``memory_mb``.
    timeout, memory_mb, cpu_seconds, file_mb, max_processes, output_chars
        Limits of each run, see :class:`~dllm_masks.eval.sandbox.SandboxLimits`. ``timeout`` is
        wall-clock seconds per program (default 5.0).
    isolation : {"auto", "namespace", "process"}
        See :func:`~dllm_masks.eval.sandbox.resolve_isolation`.
    progress : bool
        Show a tqdm progress bar (one step per program).

    Returns
    -------
    CodeEvalReport
        ``.pass_at_1``, ``.pass_at(k)``, ``.results[i][j]`` (an :class:`ExecResult` per
        completion), ``.status_counts``.

    Raises
    ------
    TypeError, ValueError
        A bad argument (the message names it).
    RuntimeError
        ``isolation="namespace"`` where it is not available.
    """
    samples = _check_samples(samples)
    groups = _check_completions(completions, len(samples))
    workers = _check_int("workers", workers, low=1, high=64)
    progress = check_bool("progress", progress)
    limits = SandboxLimits(timeout=timeout, memory_mb=memory_mb, cpu_seconds=cpu_seconds, file_mb=file_mb,
                           max_processes=max_processes, output_chars=output_chars)
    mode = resolve_isolation(isolation)

    jobs = [(i, j, s["prompt"] + c, s["test"], s["entry_point"])
            for i, (s, group) in enumerate(zip(samples, groups)) for j, c in enumerate(group)]
    results: List[List[Optional[ExecResult]]] = [[None] * len(g) for g in groups]
    stop = threading.Event()  # set on an exception here (Ctrl-C): running sandboxes are killed
    pool = ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="dllm-eval")
    with tqdm(total=len(jobs), desc="code eval", unit="program", disable=not progress) as bar:
        try:
            futures = {pool.submit(_run_resolved, program, test, entry, limits, mode, stop): (i, j)
                       for i, j, program, test, entry in jobs}
            for future in as_completed(futures):
                i, j = futures[future]
                results[i][j] = future.result()
                bar.update(1)
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    pool.shutdown(wait=True)
    task_ids = [s.get("task_id") if isinstance(s.get("task_id"), str) else None for s in samples]
    return CodeEvalReport(results=results, task_ids=task_ids)


# --------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"            # 1,234,567 or 1234567
_NUM = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"                  # with an optional decimal part
# A number: not glued to a preceding word, digit or point ("5-3" has no -3); an optional sign
# (ASCII or Unicode minus), an optional "$", and an optional "/ denominator".
_NUMBER_RE = re.compile(rf"(?<![\w.)\]])([-\u2212]?)\$?({_NUM})(?:\s*/\s*({_NUM}))?")
_WHOLE_NUMBER_RE = re.compile(rf"([-+\u2212]?)\s*\$?\s*({_NUM})(?:\s*/\s*({_NUM}))?")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def _fraction(sign: str, num: str, den: Optional[str]) -> Optional[Fraction]:
    q = Fraction(num.replace(",", ""))
    if den is not None:
        d = Fraction(den.replace(",", ""))
        if d == 0:
            return None
        q /= d
    return -q if sign in ("-", "\u2212") else q


def _canonical(q: Fraction) -> str:
    """Integers as integers, terminating decimals as decimals, anything else as p/q."""
    if q.denominator == 1:
        return str(q.numerator)
    d, twos, fives = q.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return f"{q.numerator}/{q.denominator}"
    places = max(twos, fives)
    digits = str(abs(q.numerator) * 10 ** places // q.denominator).rjust(places + 1, "0")
    return ("-" if q < 0 else "") + digits[:-places] + "." + digits[-places:]


def _clean(s: str) -> str:
    """Plain text from an answer span: LaTeX fractions and text commands unwrapped, thin spaces,
    braces, markdown bold and surrounding ``$``, ``%`` and full stops removed."""
    prev = None
    while prev != s:
        prev = s
        s = _FRAC_RE.sub(r"(\1)/(\2)", s)
        s = _TEXT_CMD_RE.sub(r"\1", s)
    for a, b in (("{,}", ","), ("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", " "),
                 ("\\ ", " "), ("\\$", "$"), ("\\%", "%"), ("\\(", ""), ("\\)", ""), ("\\[", ""), ("\\]", ""),
                 ("{", ""), ("}", "")):
        s = s.replace(a, b)
    s = re.sub(r"\((\s*[-\u2212]?[\d.,]+\s*)\)", r"\1", s)  # "(3)/(4)" from \frac{3}{4}
    return s.strip().lstrip("$* \t").rstrip("$*.%: \t")


def _numbers(s: str) -> List[Fraction]:
    out = []
    for m in _NUMBER_RE.finditer(s):
        q = _fraction(*m.groups())
        if q is not None:
            out.append(q)
    return out


def normalize_answer(answer) -> str:
    """The canonical form of a final answer, for exact-match comparison.

    Numbers (``1,234``, ``$18.00``, ``-3``, ``3.50``, ``4/2``, ``\\frac{3}{4}``, ``50%``, a trailing
    full stop) become their exact value written canonically: ``"1234"``, ``"18"``, ``"-3"``,
    ``"3.5"``, ``"2"``, ``"0.75"``, ``"50"`` (terminating decimals as decimals, other fractions as
    ``"p/q"``). Anything else is text: whitespace collapsed, case folded, a trailing full stop
    removed.

    Parameters
    ----------
    answer : str, int, float or Fraction
        The answer (floats must be finite; they are read as their shortest repr, 0.1 is 1/10).

    Returns
    -------
    str
        Empty for an empty answer.
    """
    if isinstance(answer, bool):
        raise TypeError("answer: expected a str or a number, got bool")
    if isinstance(answer, numbers.Rational):
        return _canonical(Fraction(answer))
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise ValueError(f"answer: must be finite, got {answer!r}")
        return _canonical(Fraction(repr(answer)))
    if not isinstance(answer, str):
        raise TypeError(f"answer: expected a str or a number, got {type(answer).__name__}")
    s = _clean(answer)
    m = _WHOLE_NUMBER_RE.fullmatch(s)
    if m:
        q = _fraction(*m.groups())
        if q is not None:
            return _canonical(q)
    return " ".join(s.split()).casefold()


def _answer_in(span: str) -> Optional[str]:
    """The answer in a marked span: the whole span if it is a number, else its first number,
    else its text; None if it is empty."""
    s = _clean(span)
    m = _WHOLE_NUMBER_RE.fullmatch(s)
    q = _fraction(*m.groups()) if m else None
    if q is not None:
        return _canonical(q)
    nums = _numbers(s)
    if nums:
        return _canonical(nums[0])
    text = " ".join(s.split()).casefold()
    return text or None


def _last_boxed(text: str) -> Optional[str]:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\s*", text)]
    for m in reversed(starts):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j]
            continue  # unbalanced: try an earlier one
        token = re.match(r"[^\s$]+", text[i:])  # "\boxed 5"
        if token:
            return token.group(0)
    return None


def extract_answer(text: str) -> Optional[str]:
    """The final answer of a GSM8K-style output, normalized (see :func:`normalize_answer`).

    Rules, first that finds something wins:

    1. after the first ``####``: the rest of that line (or the next non-empty line if it is
       empty): the whole of it if it is a number, else its first number (``#### 18 dollars``),
       else its text. Only the first ``####`` counts, so that text a model goes on to generate
       after its answer (another question and answer) does not replace it;
    2. the last ``\\boxed{...}``, read the same way;
    3. the last number in the text.

    Parameters
    ----------
    text : str
        A model's output.

    Returns
    -------
    str or None
        None when there is no answer at all.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    if "####" in text:
        rest = text.split("####", 1)[1]
        lines = [ln for ln in rest.split("####", 1)[0].splitlines() if ln.strip()]
        if lines:
            ans = _answer_in(lines[0])
            if ans is not None:
                return ans
    boxed = _last_boxed(text)
    if boxed is not None:
        ans = _answer_in(boxed)
        if ans is not None:
            return ans
    nums = _numbers(_clean(text))
    return _canonical(nums[-1]) if nums else None


def _reference_answer(ref, i: int) -> str:
    if isinstance(ref, str):
        if "####" in ref:
            lines = ref.split("####", 1)[1].strip().splitlines()
            ref = lines[0] if lines else ""
        return normalize_answer(ref)
    if isinstance(ref, bool) or not isinstance(ref, numbers.Real):
        raise TypeError(f"references[{i}]: expected a str or a number, got {type(ref).__name__}")
    if isinstance(ref, float) and not math.isfinite(ref):
        raise ValueError(f"references[{i}]: must be finite, got {ref!r}")
    return normalize_answer(ref)


@dataclass(frozen=True)
class MathEvalReport:
    """Results of :func:`score_math`.

    Attributes
    ----------
    accuracy : float
        Fraction of predictions whose extracted answer equals the reference.
    correct : list of bool
        Per prediction.
    predicted : list of (str or None)
        The extracted, normalized answers (None: no answer found).
    expected : list of str
        The normalized references.
    """

    accuracy: float
    correct: List[bool]
    predicted: List[Optional[str]]
    expected: List[str]


def score_math(predictions: Sequence[str], references: Sequence) -> MathEvalReport:
    """Final-answer exact match of GSM8K-style outputs against references.

    Parameters
    ----------
    predictions : sequence of str, length N >= 1
        Model outputs; the answer is found by :func:`extract_answer`.
    references : sequence of (str or number), length N
        A GSM8K solution (the answer after its ``####``), a bare answer (``"1,234"``), or a
        number. Normalized with :func:`normalize_answer`; no fallbacks are applied to references.

    Returns
    -------
    MathEvalReport
    """
    for name, x in (("predictions", predictions), ("references", references)):
        if isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
            raise TypeError(f"{name}: expected a sequence, got {type(x).__name__}")
    if len(predictions) == 0:
        raise ValueError("predictions: must not be empty")
    if len(references) != len(predictions):
        raise ValueError(f"references: expected {len(predictions)} items (one per prediction), got {len(references)}")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise TypeError(f"predictions[{i}]: expected a str, got {type(p).__name__}")
    expected = [_reference_answer(r, i) for i, r in enumerate(references)]
    predicted = [extract_answer(p) for p in predictions]
    correct = [p is not None and p != "" and p == e for p, e in zip(predicted, expected)]
    return MathEvalReport(sum(correct) / len(correct), correct, predicted, expected)


def math_accuracy(predictions: Sequence[str], references: Sequence) -> float:
    """Fraction of ``predictions`` whose final answer matches its reference (see :func:`score_math`).

    Parameters
    ----------
    predictions : sequence of str, length N >= 1
    references : sequence of (str or number), length N

    Returns
    -------
    float
        In [0, 1].
    """
    return score_math(predictions, references).accuracy
