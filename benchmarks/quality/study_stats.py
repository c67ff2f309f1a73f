"""Statistics of the powered study (``study.py``): paired t intervals, the minimum detectable
difference, and the verdict rule. Pure Python (no SciPy): Student's t comes from the regularized
incomplete beta function.

Conventions: a difference is ``metric(a) − metric(b)`` over the seeds both cells ran, paired by
seed; for a cross-entropy, negative means a is better.
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, List, NamedTuple, Optional, Sequence

__all__ = ["t_cdf", "t_quantile", "Paired", "paired_ci", "mde", "verdict", "SUPPORTED", "CONTRADICTED",
           "NOT_RESOLVED", "TRADE_OFF"]

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOT_RESOLVED = "not resolved"
TRADE_OFF = "trade-off"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        de = d * c
        h *= de
        if abs(de - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (df > 0)."""
    if not df > 0:
        raise ValueError(f"df: must be > 0, got {df!r}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf` to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


class Paired(NamedTuple):
    """A paired difference ``a − b`` over seeds.

    Attributes
    ----------
    n : int
        Seeds both cells ran.
    mean, sd, se : float or None
        Mean difference, its sample standard deviation over seeds, sd/√n (sd and se None for n < 2).
    lo, hi : float or None
        The two-sided ``level`` t interval of the mean (None for n < 2).
    mde : float or None
        The smallest true difference the paired t-test at 5 % would detect with 80 % power given
        this sd and n (:func:`mde`).
    diffs : tuple of float
        The per-seed differences, in seed order.
    """

    n: int
    mean: Optional[float]
    sd: Optional[float]
    se: Optional[float]
    lo: Optional[float]
    hi: Optional[float]
    mde: Optional[float]
    diffs: tuple

    def excludes_zero(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def mde(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable difference of a two-sided paired t-test at level ``alpha`` with ``power``:
    ``(t_{1−α/2, n−1} + t_{power, n−1}) · sd / √n`` (the usual approximation to the noncentral t)."""
    if n < 2:
        raise ValueError(f"n: needs at least 2 pairs, got {n}")
    df = n - 1
    return (t_quantile(1.0 - alpha / 2.0, df) + t_quantile(power, df)) * sd / math.sqrt(n)


def paired_ci(a: Dict[int, Optional[float]], b: Dict[int, Optional[float]], *, level: float = 0.95) -> Paired:
    """Paired difference ``a[s] − b[s]`` over the seeds s where both are numbers, with its t interval.

    Parameters
    ----------
    a, b : dict seed -> float or None
    level : float
        Confidence level of the interval (two-sided).
    """
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    d = tuple(float(a[s]) - float(b[s]) for s in seeds)
    n = len(d)
    if n == 0:
        return Paired(0, None, None, None, None, None, None, d)
    m = sum(d) / n
    if n < 2:
        return Paired(1, m, None, None, None, None, None, d)
    sd = statistics.stdev(d)
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    return Paired(n, m, sd, se, m - half, m + half, mde(sd, n), d)


def verdict(results: Sequence[Paired], better: Sequence[int]) -> str:
    """Verdict on a claim "a is better than b" from its paired differences on several metrics.

    Parameters
    ----------
    results : sequence of Paired
        One per metric (e.g. CE on dense tokens, CE on the others).
    better : sequence of {+1, −1}
        Per metric, the sign of a difference that favours a (−1 for a cross-entropy).

    Returns
    -------
    str
        ``"supported"`` when at least one interval excludes zero in a's favour and none against;
        ``"contradicted"`` when at least one excludes zero against a and none in its favour;
        ``"trade-off"`` when one does each; ``"not resolved"`` when every interval holds zero.
    """
    if len(results) != len(better):
        raise ValueError("better: needs one sign per result")
    pro = con = 0
    for r, s in zip(results, better):
        if s not in (1, -1):
            raise ValueError(f"better: signs must be +1 or -1, got {s!r}")
        if r.excludes_zero():
            if r.mean * s > 0:
                pro += 1
            else:
                con += 1
    if pro and con:
        return TRADE_OFF
    if pro:
        return SUPPORTED
    if con:
        return CONTRADICTED
    return NOT_RESOLVED


def fmt_ci(p: Paired, digits: int = 3) -> str:
    """``−0.052 [−0.081, −0.023]`` (or the mean alone for one seed, ``–`` for none)."""
    if p.mean is None:
        return "–"
    if p.lo is None:
        return f"{p.mean:+.{digits}f} (1 seed)"
    return f"{p.mean:+.{digits}f} [{p.lo:+.{digits}f}, {p.hi:+.{digits}f}]"


def mean_sd(xs: Sequence[Optional[float]]):
    """(mean, sd) of the numbers in ``xs`` (sd None for fewer than 2; (None, None) for none)."""
    v: List[float] = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    return sum(v) / len(v), (statistics.stdev(v) if len(v) > 1 else None)
