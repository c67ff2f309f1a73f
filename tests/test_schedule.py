"""sample_sigma: bounds, stratification, reproducibility, refusals."""
import pytest
import torch

import dllm_masks as dm


def test_bounds_dtype_and_reproducibility():
    g = torch.Generator().manual_seed(0)
    s = dm.sample_sigma(1000, 0.3, 0.8, generator=g)
    assert s.dtype == torch.float32 and s.shape == (1000,)
    assert float(s.min()) >= 0.3 and float(s.max()) <= 0.8
    assert abs(float(s.mean()) - 0.55) < 0.02
    assert torch.equal(s, dm.sample_sigma(1000, 0.3, 0.8, generator=torch.Generator().manual_seed(0)))
    assert dm.sample_sigma(0).shape == (0,)


def test_antithetic_is_stratified():
    S = 64
    s = dm.sample_sigma(S, 0.2, 0.6, antithetic=True, generator=torch.Generator().manual_seed(1)).double()
    strata = torch.floor((s - 0.2) / 0.4 * S).clamp(max=S - 1).long()
    assert sorted(strata.tolist()) == list(range(S))  # one draw in each stratum
    assert strata.tolist() != list(range(S))  # in a random order, not by segment index


@pytest.mark.parametrize("args,exc,match", [
    ((4, 0.5, 0.4), ValueError, "low"),
    ((4, -0.1, 0.4), ValueError, "low"),
    ((4, 0.1, 1.4), ValueError, "high"),
    ((-1,), ValueError, "num_segments"),
    ((2.5,), TypeError, "num_segments"),
    ((4, "0", 1.0), TypeError, "low"),
])
def test_refuses(args, exc, match):
    with pytest.raises(exc, match=match):
        dm.sample_sigma(*args)


# ---- keyed σ draws: the C++ Philox against the torch oracle ------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dllm_masks import ops, schedules  # noqa: E402

needs_cpp = pytest.mark.skipif(getattr(ops._cpp, "keyed_words", None) is None, reason="C++ extension not built")


@needs_cpp
@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12), counts=st.data(),
       seed=st.integers(-(2**63), 2**64 - 1))
def test_keyed_uniform_cpp_equals_torch(keys, counts, seed):
    c = counts.draw(st.lists(st.integers(0, 300), min_size=len(keys), max_size=len(keys)))
    k, n = torch.tensor(keys, dtype=torch.int64), torch.tensor(c, dtype=torch.int64)
    got = schedules.keyed_uniform(k, n, seed=seed)
    want = schedules._keyed_uniform_torch(k, n, seed=seed)
    assert got.dtype == want.dtype == torch.float64 and torch.equal(got, want)


@needs_cpp
def test_keyed_sigma_per_block_cpp_equals_torch():
    cu = torch.tensor([0, 0, 1, 33, 4130], dtype=torch.int32)
    ids = torch.tensor([5, -7, 2**62, 0])
    for K in (None, 1, 32):
        got = dm.keyed_sigma(ids, cu, low=0.3, high=0.8, seed=9, block_size=K)
        lens = (cu[1:] - cu[:-1]).long()
        counts = torch.ones_like(lens) if K is None else (lens + K - 1) // K
        u = schedules._keyed_uniform_torch(ids, counts, seed=9)
        assert torch.equal(got, (0.3 + 0.5 * u).clamp(0.3, 0.8).to(torch.float32))


@needs_cpp
@pytest.mark.parametrize("keys,counts,k0,err,match", [
    (torch.zeros(2, dtype=torch.int64), torch.tensor([1, -1]), 0, ValueError, "counts must lie in"),
    (torch.zeros(2, dtype=torch.int64), torch.tensor([1]), 0, ValueError, "same length"),
    (torch.zeros(2, dtype=torch.int32), torch.tensor([1, 1]), 0, TypeError, "int64"),
    (torch.zeros(1, dtype=torch.int64), torch.tensor([2**40]), 0, ValueError, "counts must lie in"),
    (torch.zeros(1, dtype=torch.int64), torch.tensor([1]), 2**32, ValueError, "k0, k1 and stream"),
])
def test_keyed_words_refuses_bad_input(keys, counts, k0, err, match):
    with pytest.raises(err, match=match):
        ops._cpp.keyed_words(keys, counts, k0, 0, 2)
