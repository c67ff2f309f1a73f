"""Solving p_base with clipping (docs/design.md §3): conservation, clipping, and an independent scalar oracle."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

import dllm_masks as dm
from dllm_masks.rates import _solve, exact_counts

weights = st.one_of(
    st.sampled_from([0.0, 1.0, 2.0, 0.5, 5.0, 0.1, math.inf, 1e-300, 1e300]),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
)
sigmas = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0, width=32))


def scalar_rates(N, n1, s, w):
    """docs/design.md §3 transcribed with Python floats (IEEE doubles, no fma): an independent oracle."""
    n0 = N - n1
    K = s * N
    if N == 0:
        return 0.0, 0.0
    if n1 == 0 or n0 == 0 or w == 1:
        return s, s
    if w == math.inf:
        return max(0.0, (K - n1) / n0), min(1.0, K / n1)
    if w == 0:
        return min(1.0, K / n0), max(0.0, (K - n0) / n1)
    den = w * n1 + n0
    p = K / den
    if w > 1:
        return (p, w * p) if w * p <= 1 else ((K - n1) / n0, 1.0)
    return (p, w * p) if p <= 1 else (1.0, (K - n0) / n1)


@given(N=st.integers(0, 10**7), frac=st.floats(0, 1), w=weights, s=sigmas)
def test_conservation_and_bounds(N, frac, w, s):
    n1 = min(N, int(frac * N))
    q0, q1 = dm.solve_rates(N, n1, s, w)[0].tolist()
    s = float(torch.tensor(s, dtype=torch.float32))
    assert abs(n1 * q1 + (N - n1) * q0 - s * N) <= 1e-9 * N
    assert 0.0 <= q0 <= 1.0 and 0.0 <= q1 <= 1.0
    if 0 < n1 < N and q0 < 1.0 and q1 < 1.0 and math.isfinite(w) and w > 0:
        assert q1 == q0 * w  # unclipped: exactly the weighted ratio
    assert (q0, q1) == scalar_rates(N, n1, s, w)  # bit-identical to the scalar transcription


def test_examples():
    # w = 2, 25 of 100 priority, σ = 0.5: p = 50 / 125
    assert dm.solve_rates(100, 25, 0.5, 2.0).tolist() == [[0.4, 0.8]]
    # clipping: σ = 0.875, w = 2, half priority: q1 = 1, q0 = (87.5 - 50) / 50
    assert dm.solve_rates(100, 50, 0.875, 2.0).tolist() == [[0.75, 1.0]]
    # σ is rounded to float32 first, like the op's σ
    assert dm.solve_rates(100, 50, 0.9, 2.0)[0, 0] == (float(torch.tensor(0.9)) * 100 - 50) / 50
    # hard: w = inf takes priority tokens first
    assert dm.solve_rates(100, 25, 0.125, math.inf).tolist() == [[0.0, 0.5]]
    assert dm.solve_rates(100, 25, 0.5, math.inf).tolist() == [[1 / 3, 1.0]]
    # reverse hard: w = 0 takes the others first
    assert dm.solve_rates(100, 25, 0.5, 0.0).tolist() == [[50 / 75, 0.0]]
    # no maskable tokens, no priority tokens
    assert dm.solve_rates([0, 10], [0, 0], [0.5, 0.3], 2.0).tolist()[0] == [0.0, 0.0]
    assert dm.solve_rates([0, 10], [0, 0], [0.5, 0.3], 2.0)[1, 0] == torch.tensor(0.3, dtype=torch.float32).double()


@given(N=st.integers(0, 5000), frac=st.floats(0, 1), w=weights, s=sigmas)
def test_exact_counts(N, frac, w, s):
    n1 = min(N, int(frac * N))
    n, n1t = torch.tensor([N]), torch.tensor([n1])
    sig = torch.tensor([s], dtype=torch.float32)
    rates = _solve(n, n1t, sig, w)
    k0, k1 = (int(x) for x in exact_counts(n, n1t, sig, rates))
    k = math.floor(float(sig) * N + 0.5)
    assert k0 + k1 == k
    assert 0 <= k1 <= n1 and 0 <= k0 <= N - n1
    if w == math.inf:
        assert k1 == min(k, n1)
    if w == 0.0:
        assert k0 == min(k, N - n1)


@pytest.mark.parametrize("args,match", [
    ((10, 11, 0.5, 2.0), "n1"),
    ((-1, 0, 0.5, 2.0), "n"),
    ((10, 5, 1.5, 2.0), "sigma"),
    ((10, 5, float("nan"), 2.0), "sigma"),
    ((10, 5, 0.5, -1.0), "weight"),
    ((10, 5, 0.5, float("nan")), "weight"),
    (([10, 10], [5, 5, 5], 0.5, 2.0), "broadcast"),
])
def test_solve_rates_refuses(args, match):
    with pytest.raises(ValueError, match=match):
        dm.solve_rates(*args)


def test_solve_rates_type_errors():
    with pytest.raises(TypeError, match="n"):
        dm.solve_rates(torch.tensor([10.0]), 5, 0.5, 2.0)
    with pytest.raises(TypeError, match="weight"):
        dm.solve_rates(10, 5, 0.5, "2")
