"""Float32 importance weights (docs/importance.md): properties of the rates and of both sampling
modes, the boolean op as the two-level case, corner cases and refusals."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_masks as dm
from dllm_masks.importance import token_rates
from dllm_masks.testing import AWKWARD, assert_same, packed_case, random_cases

F32 = torch.float32


def brute_rates(w, s):
    """Water-filling by brute force over clip sets (math.fsum), in Python floats."""
    N = len(w)
    K = float(torch.tensor(s, dtype=F32).double()) * N
    pos = [x for x in w if x > 0]
    P = len(pos)
    if N == 0:
        return []
    if len(set(w)) == 1:
        return [float(torch.tensor(s, dtype=F32))] * N
    if K >= P:
        return [1.0 if x > 0 else (K - P) / (N - P) for x in w]
    vals = sorted(set(pos), reverse=True)
    for j in range(len(vals) + 1):
        clip = set(vals[:j])
        A = sum(1 for x in pos if x in clip)
        q0 = (K - A) / math.fsum(x for x in pos if x not in clip)
        nxt = vals[j] if j < len(vals) else 0.0
        if nxt * q0 <= 1:
            return [1.0 if x in clip else min(1.0, x * q0) for x in w]
    raise AssertionError("no clip set")


# Weights with ties, zeros, huge ratios, denormals and single positive weights.
SPECIAL = [0.0, 0.0, 1.0, 1.0, 2.0, 1e30, 1e-30, 1e-42, 1.4e-45, 3.0, 0.5, 7.25, 1e10]
weight_lists = st.lists(st.one_of(st.sampled_from(SPECIAL),
                                  st.floats(0, 100, width=32, allow_nan=False, allow_infinity=False)),
                        min_size=0, max_size=60)
sigmas = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.999]), st.floats(0, 1, width=32))


@settings(max_examples=300, deadline=None)
@given(w=weight_lists, s=sigmas, exact=st.booleans())
def test_rates_conserve_sigma_n_and_match_brute_force(w, s, exact):
    wt = torch.tensor(w, dtype=F32)
    q, rates = token_rates(wt, s, exact=exact)
    N = len(w)
    K = float(torch.tensor(s, dtype=F32).double()) * N
    target = math.floor(K + 0.5) if exact and len(set(w)) > 2 else K
    assert bool(((q >= 0) & (q <= 1)).all())
    assert abs(math.fsum(q.tolist()) - target) <= 1e-9 * max(N, 1)
    if N and len(set(w)) > 2:
        sig = target / N
        b = brute_rates(w, sig if not exact else s) if not exact else None
        if b is not None:
            for a, c in zip(q.tolist(), b):
                assert abs(a - c) <= 1e-9 * max(c, 1e-300) or abs(a - c) <= 1e-12, (a, c)
        assert rates[0, 1].item() == max(q.tolist())
    # monotone in the weight: a heavier token never has a lower rate (zero weights aside)
    if N:
        order = torch.argsort(wt)
        qs = q[order]
        ws = wt[order]
        pos = ws > 0
        assert bool((qs[pos][1:] >= qs[pos][:-1]).all())


def _batch(lengths, seed, weights_fn, **kw):
    args = packed_case(lengths, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    args["priority"] = weights_fn(T, g)
    return args


def _mixed_weights(T, g):
    w = torch.rand(T, generator=g) * 4
    w = torch.where(torch.rand(T, generator=g) < 0.1, torch.zeros(()), w)
    return torch.where(torch.rand(T, generator=g) < 0.05, torch.tensor(1e30), w).to(F32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(0, 50), min_size=1, max_size=5), seed=st.integers(0, 10_000),
       block=st.sampled_from([None, 4, 7]), prompt=st.booleans())
def test_exact_counts_are_exact_and_views_partition(lengths, seed, block, prompt):
    kw = _batch(lengths, seed, _mixed_weights, block_size=block, prompt=prompt, complementary=True,
                sampling="exact", loss_weight="token")
    out = dm.priority_mask(**kw)
    T = sum(lengths)
    cu = kw["cu_seqlens"].long()
    mk = torch.ones(T, dtype=torch.bool)
    if "prompt_lens" in kw:
        pos = torch.arange(T) - cu[torch.searchsorted(cu[1:], torch.arange(T), right=True)]
        seq = torch.searchsorted(cu[1:], torch.arange(T), right=True)
        mk = pos >= kw["prompt_lens"][seq]
    v0, v1 = out.masked[:T], out.masked[T:]
    assert not bool((v0 & v1).any()) and torch.equal(v0 | v1, mk)  # the views partition the maskable tokens
    # exactly floor(σ·N + 0.5) per segment
    seq = torch.searchsorted(cu[1:], torch.arange(T), right=True)
    pos = torch.arange(T) - cu[seq]
    if block:
        lens = cu[1:] - cu[:-1]
        nblk = (lens + block - 1) // block
        seg = (torch.cumsum(nblk, 0) - nblk)[seq] + pos // block
    else:
        seg = seq
    S = out.sigma.numel()
    n = torch.zeros(S, dtype=torch.int64).index_add_(0, seg, mk.long())
    got = torch.zeros(S, dtype=torch.int64).index_add_(0, seg, v0.long())
    k = torch.floor(out.sigma.double() * n.double() + 0.5).long()
    assert torch.equal(got, k)
    # loss weights: 1/q where masked
    assert bool((out.loss_weight[:T][v0] >= 1).all())


@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_marginal_frequencies_within_5_se(sampling):
    # One sequence of 40 tokens with graded weights (ties, a zero, a clipped one), 4000 draws
    # through sample_ids (the same sequence under 4000 keys in one call).
    w = torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 0.25, 50.0, 5.0] * 5, dtype=F32)
    L, R = w.numel(), 4000
    ids = torch.arange(L * R) % 1000 + 5
    cu = torch.arange(R + 1, dtype=torch.int32) * L
    out = dm.priority_mask(ids, 0.3, cu_seqlens=cu, priority=w.repeat(R), mask_token_id=0, seed=11,
                           sample_ids=torch.arange(R) * 7 + 3, sampling=sampling)
    q, _ = token_rates(w, 0.3, exact=sampling == "exact")
    freq = out.masked.view(R, L).double().mean(0)
    se = torch.sqrt(q * (1 - q) / R)
    assert bool(((freq - q).abs() <= 5 * se + 1e-12).all()), (freq - q).abs().max()
    assert bool((q[w == 0] == 0).all()) and bool((q[w == 50] == 1).all())


BOOL_WEIGHTS = [2.0, 0.5, 0.0, 5.0, 1e3, float(torch.tensor(1e-3, dtype=F32)), 1.0]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=random_cases())
def test_boolean_priority_is_the_two_level_float_path(kw):
    w = kw.get("weight", 1.0)
    if math.isinf(w) or w not in BOOL_WEIGHTS:
        w = 2.0
    kw = dict(kw, weight=w)
    a = dm.priority_mask(**kw)
    prio = kw["priority"]
    wf = torch.where(prio, torch.tensor(w, dtype=F32), torch.tensor(1.0, dtype=F32))
    b = dm.priority_mask(**dict(kw, priority=wf, weight=1.0))
    for name in ("noisy_ids", "labels", "masked", "loss_weight", "cu_seqlens", "sigma"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or torch.equal(x, y), name
    assert torch.equal(a.rates[:, 0], b.rates[:, 0])
    if w >= 1:
        assert torch.equal(a.rates, b.rates)


@pytest.mark.parametrize("lengths,why", AWKWARD, ids=[a[1] for a in AWKWARD])
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_awkward_shapes_padded_equals_packed_and_is_deterministic(lengths, why, sampling):
    kw = _batch(lengths, 5, _mixed_weights, sampling=sampling, complementary=True, loss_weight="token")
    a = dm.priority_mask(**kw)
    assert_same(a, dm.priority_mask(**kw), why)
    assert_same(a, dm.priority_mask(**dict(kw, backend="ref")), why)


def test_corner_cases():
    ids = torch.arange(8)
    # all weights zero: uniform, rate sigma
    q, r = token_rates(torch.zeros(8), 0.25)
    assert torch.equal(q, torch.full((8,), float(torch.tensor(0.25, dtype=F32)), dtype=torch.float64))
    # sigma·N above the positive count: positives 1, zeros share the rest
    w = torch.tensor([1.0, 2.0, 3.0, 0, 0, 0, 0, 0])
    q, r = token_rates(w, 0.5)
    assert q[:3].tolist() == [1.0, 1.0, 1.0] and torch.allclose(q[3:], torch.full((5,), 0.2, dtype=torch.float64))
    assert r.tolist() == [[1.0, 1.0]]
    # a single positive weight among zeros (two levels: the boolean op with w = 0)
    q, _ = token_rates(torch.tensor([0, 0, 5.0, 0]), 0.2)
    assert q.tolist()[2] == pytest.approx(0.8) and q[[0, 1, 3]].eq(0).all()
    # no maskable token
    out = dm.priority_mask(ids, 0.5, priority=torch.rand(8), maskable=torch.zeros(8, dtype=torch.bool), mask_token_id=0)
    assert not out.masked.any() and out.rates.tolist() == [[0.0, 0.0]]
    # huge ratios: the heavy tokens clip at 1, the others share the rest
    w = torch.tensor([1e30, 1e30, 1.0, 2.0, 3.0, 1e-30], dtype=F32)
    q, _ = token_rates(w, 0.5)
    assert q[:2].tolist() == [1.0, 1.0] and abs(q.sum().item() - 3.0) < 1e-12


@pytest.mark.parametrize("bad,exc,match", [
    (dict(priority=torch.tensor([1.0, -1.0, 0, 0])), ValueError, "priority"),
    (dict(priority=torch.tensor([1.0, float("nan"), 0, 0])), ValueError, "priority"),
    (dict(priority=torch.tensor([1.0, float("inf"), 0, 0])), ValueError, "priority"),
    (dict(priority=torch.ones(4, dtype=torch.float64)), TypeError, "priority"),
    (dict(priority=torch.ones(4, dtype=torch.float16)), TypeError, "priority"),
    (dict(priority=torch.ones(5)), ValueError, "priority"),
    (dict(priority=torch.ones(4), weight=2.0), ValueError, "weight"),
])
def test_refuses_bad_weights(bad, exc, match):
    with pytest.raises(exc, match=f"^{match}"):
        dm.priority_mask(torch.arange(4), 0.5, mask_token_id=0, **bad)


def test_padded_float_priority():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, 9), generator=g)
    w = torch.rand(3, 9, generator=g)
    a = dm.priority_mask(ids, 0.5, priority=w, mask_token_id=0, seed=2)
    b = dm.priority_mask(ids.reshape(-1), 0.5, priority=w.reshape(-1), mask_token_id=0, seed=2,
                         cu_seqlens=torch.tensor([0, 9, 18, 27], dtype=torch.int32))
    assert torch.equal(a.masked.reshape(-1), b.masked) and torch.equal(a.rates, b.rates)


def test_triton_entry_serves_float_weights_with_the_reference():
    """The boolean Triton kernel's entry, called directly with float weights, hands them to the
    reference, so it never misreads weights as bits (the op's CUDA implementation sends them to
    their own kernel: tests/test_triton_importance.py)."""
    if dm.available_backends()["triton"] is not None:
        pytest.skip(f"Triton kernels not loadable: {dm.available_backends()['triton']}")
    from dllm_masks import ops
    from dllm_masks.reference import priority_mask_ref
    from dllm_masks.triton_kernels.priority_mask import priority_mask_triton

    for sampling in ("bernoulli", "exact"):
        kw = _batch([5, 0, 33], 3, _mixed_weights, sampling=sampling, complementary=True, loss_weight="token")
        args = ops.normalize(**kw).args
        for x, y in zip(priority_mask_triton(*args), priority_mask_ref(*args)):
            assert torch.equal(x, y)
