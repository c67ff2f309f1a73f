"""The Triton kernel for float32 importance weights against the reference, bit for bit
(docs/importance.md): every output (noisy ids, masks, labels, loss weights, rates), both sampling
modes, with and without the complement, per sequence and per block, packed and padded.

Under ``TRITON_INTERPRET=1`` (tests/conftest.py) the kernel runs on CPU tensors in Triton's
interpreter; on a machine with CUDA and the interpreter unset, on the GPU. The reference always
runs on the CPU. The interpreter is slow (about a second per 1e5 tokens and a few milliseconds
per program), so the cases are small.
"""
import pytest
import torch

triton = pytest.importorskip("triton")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dllm_masks as dm  # noqa: E402
from dllm_masks import ops  # noqa: E402
from dllm_masks.testing import (AWKWARD, IMPORTANCE_KINDS, assert_no_host_sync, assert_same, capture_graph,  # noqa: E402
                                importance_weights, packed_case, padded_cases, random_cases, to_device,
                                triton_device)

DEVICE = triton_device()
F32 = torch.float32
gpu_only = pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA with TRITON_INTERPRET unset")
pytestmark = [
    pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device"),
    # the boolean kernel, compared with here, evaluates 1/q on scalars where q = 0 under the interpreter
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
]

if DEVICE is not None:
    import triton.language as tl

    from dllm_masks import importance as imp
    from dllm_masks.triton_kernels import importance as tw
    from dllm_masks.triton_kernels import priority_mask as pm

    @triton.jit
    def _systematic_kernel(w_ptr, out_ptr, L, U, q0_bits, qz_bits, sat_flag, V, k, G: tl.constexpr):
        """The exact mode's line of one all-maskable segment of L tokens, given the solve (U, q0,
        qz, saturated) and the offset V: the kernel's own helpers, in the kernel's order."""
        zero = L.to(tl.int64) * 0
        jhi = zero + L
        q0 = (zero + q0_bits).to(tl.float64, bitcast=True)  # float64 bits: a float argument would be float32
        qz = (zero + qz_bits).to(tl.float64, bitcast=True)
        kf = (zero + k).to(tl.float64)
        two = zero < 0  # three or more levels
        sat = sat_flag != 0
        m, gcut = tw._systematic_plan(zero, jhi, zero, zero, w_ptr, w_ptr, two, zero - 2, q0, q0, U, q0, qz, sat,
                                      V, kf, G, False, False)
        carry = zero
        qb = zero
        while qb < (jhi + 3) >> 2:
            quad, lane, j, t, valid, mk, pos, p = tw._tokens(qb, zero, jhi, zero, zero, w_ptr, w_ptr, G, False, False)
            q, clip, grp = tw._rate(mk, pos, p, two, zero - 2, q0, q0, U, q0, qz, sat)
            m_a, carry = tw._systematic_tile(q, mk, clip, carry, V, m, gcut, j, zero)
            tl.store(out_ptr + t, m_a, mask=valid)
            qb += G


def _check(kw, what=""):
    """Triton on DEVICE equals the reference on the CPU, every output bit for bit."""
    ref = dm.priority_mask(**kw, backend="ref")
    got = dm.priority_mask(**to_device(kw, DEVICE), backend="triton")
    assert_same(ref, got, what)
    return got


def _case(lengths, seed, kind, **kw):
    args = packed_case(lengths, seed=seed, **kw)
    args["priority"] = importance_weights(sum(lengths), torch.Generator().manual_seed(seed), kind)
    return args


# --------------------------------------------------------------------------------------------
# Awkward shapes: every kind of weights, both samplings, per sequence and per block
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lengths,why", AWKWARD, ids=[a[1] for a in AWKWARD])
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_awkward_shapes(lengths, why, sampling):
    long = sum(lengths) > 1000
    for i, kind in enumerate(IMPORTANCE_KINDS):
        # per sequence with "token" weights and both views; per block (short batches only: one
        # interpreted program per block) with "sigma" weights, view 0 only, int32 ids
        _check(_case(lengths, i, kind, sampling=sampling, complementary=True, loss_weight="token"), f"{why} {kind}")
        if not long or kind == "graded":
            _check(_case(lengths, i, kind, sampling=sampling, block_size=512 if long else 4, loss_weight="sigma",
                         dtype=torch.int32), f"{why} {kind} per block")


# --------------------------------------------------------------------------------------------
# Hypothesis: every option drawn (the boolean suites' strategies, with float weights)
# --------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=random_cases(max_len=40, max_seqs=4), kind=st.sampled_from(IMPORTANCE_KINDS), seed=st.integers(0, 2**16),
       maskable=st.booleans())
def test_random_cases(kw, kind, seed, maskable):
    T = kw["input_ids"].numel()
    g = torch.Generator().manual_seed(seed)
    kw = dict(kw, priority=importance_weights(T, g, kind), weight=1.0)
    if maskable:  # a maskable tensor instead of prompt lengths
        kw.pop("prompt_lens", None)
        kw["maskable"] = torch.rand(T, generator=g) < 0.7
    _check(kw, kind)


# Tiny tiles: segments over many tiles (the prefix sums of the exact mode carried across tiles,
# the histograms and the radix select summed over tiles), blocks starting mid Philox group.
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=random_cases(max_len=70, max_seqs=3), kind=st.sampled_from(IMPORTANCE_KINDS), seed=st.integers(0, 2**16))
def test_random_cases_tiny_tiles(kw, kind, seed):
    _check_with_settings(kw, kind, seed, tw.WeightsLaunchSettings(8, 4, 1))


def _check_with_settings(kw, kind, seed, launch):
    """The kernel with ``launch`` settings against the reference, on ``kind`` weights."""
    T = kw["input_ids"].numel()
    kw = dict(kw, priority=importance_weights(T, torch.Generator().manual_seed(seed), kind), weight=1.0)
    ref = dm.priority_mask(**kw, backend="ref")
    call = ops.normalize(**to_device(kw, DEVICE))
    assert_same(ref, ops.wrap(tw.priority_mask_weights_triton(*tuple(call.args), settings=launch), call), kind)


# Steps smaller than the tile: the histogram passes build their one-hot matrices 128 bins at a
# time (as per block up to four warps), and the two-level radix select steps 16 of the 64 groups
# of a write-pass tile.
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=random_cases(max_len=70, max_seqs=3), kind=st.sampled_from(IMPORTANCE_KINDS), seed=st.integers(0, 2**16))
def test_random_cases_half_bins_and_short_select_steps(kw, kind, seed):
    st_ = tw.WeightsLaunchSettings(256, 4, 1, 128)
    assert (st_.tile // 4, st_.select_groups, st_.hist_bins) == (64, 16, 128)
    _check_with_settings(kw, kind, seed, st_)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=padded_cases(), kind=st.sampled_from(IMPORTANCE_KINDS), seed=st.integers(0, 2**16))
def test_padded_cases(kw, kind, seed):
    w = importance_weights(kw["input_ids"].numel(), torch.Generator().manual_seed(seed), kind)
    _check(dict(kw, priority=w.reshape(kw["input_ids"].shape), weight=1.0), kind)


# --------------------------------------------------------------------------------------------
# The corners of the solve
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_solve_corners(sampling):
    """Ties, zeros, huge ratios, denormals, one positive weight, K ≥ P, σ = 0 and 1, no maskable token."""
    cases = {
        "ties": torch.tensor([1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 1.0, 0.0] * 5),
        "huge ratios": torch.tensor([1e30, 1e30, 1.0, 2.0, 3.0, 1e-30, 0.0, 5.0] * 5),
        "denormals": torch.tensor([1e-42, 1.4e-45, 3e-40, 1e-45, 0.0, 2e-44, 1e-38, 1.4e-45] * 5),
        "denormals and normals": torch.tensor([1e-42, 1.0, 3e-40, 7.0, 0.0, 2e-44, 1e-38, 3.4e38] * 5),
        "single positive": torch.tensor([0.0] * 39 + [4.0]),
        "K >= P (few positive)": torch.tensor([0.0] * 30 + [1.0, 2.0, 3.0, 4.0] + [0.0] * 6),
        "all zero": torch.zeros(40),
    }
    for name, w in cases.items():
        for sigma in (0.3, 0.9, 0.0, 1.0):
            kw = packed_case([40], seed=3, prompt=False, sampling=sampling, complementary=True, loss_weight="token")
            _check(dict(kw, priority=w.to(F32), sigma=sigma), f"{name} sigma={sigma}")
    kw = packed_case([9, 4], seed=1, prompt=False, sampling=sampling, complementary=True, loss_weight="token")
    _check(dict(kw, priority=torch.rand(13), maskable=torch.zeros(13, dtype=torch.bool)), "no maskable token")


@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_refinement_levels_and_two_level_segments(sampling):
    """Weights that share one exponent bucket and differ in the low bits (the radix search goes to
    its last level), next to blocks with at most two levels (the boolean op) and with three."""
    base = torch.tensor(1.5, dtype=F32).view(torch.int32)
    g = torch.Generator().manual_seed(4)
    fine = (base + torch.randint(0, 300, (70,), generator=g, dtype=torch.int32)).view(F32)
    two = torch.where(torch.rand(70, generator=g) < 0.3, torch.tensor(0.5), torch.tensor(2.0)).to(F32)
    w = torch.cat([fine, two, fine.flip(0)])
    for block, sig in ((None, 0.45), (7, 0.45), (35, 0.9), (35, 0.05)):
        kw = packed_case([70, 70, 70], seed=8, prompt=False, sampling=sampling, complementary=True,
                         loss_weight="token", block_size=block)
        _check(dict(kw, priority=w, sigma=sig), f"block={block} sigma={sig}")


def test_boolean_equals_two_level_weights_on_triton():
    """A boolean priority with weight=w and float weights {1, w} give the same outputs (docs/importance.md §2)."""
    kw = packed_case([5, 0, 1, 31, 33, 3], seed=1, complementary=True, loss_weight="token", weight=5.0)
    for sampling in ("bernoulli", "exact"):
        a = dm.priority_mask(**to_device(dict(kw, sampling=sampling), DEVICE), backend="triton")
        wf = torch.where(kw["priority"], torch.tensor(5.0), torch.tensor(1.0)).to(F32)
        b = dm.priority_mask(**to_device(dict(kw, sampling=sampling, priority=wf, weight=1.0), DEVICE),
                             backend="triton")
        assert_same(a, b, sampling)


# --------------------------------------------------------------------------------------------
# Gap tokens (docs/importance.md §5 step 4): the kernel's helpers with an offset V that leaves
# points past the line, against the reference's _systematic with the same V
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,sigma,V,extra", [("graded", 0.37, 2**32 - 1, 0), ("ties", 0.5, 2**32 - 1, 0),
                                                 ("special", 0.6, 2**32 - 1, 0), ("graded", 0.37, 12345, 0),
                                                 ("graded", 0.99, 2**32 - 1, 0), ("graded", 0.6, 2**32 - 1, 3),
                                                 ("ties", 0.2, 99, 2)])
def test_gap_tokens(kind, sigma, V, extra):
    """``extra`` points more than the line holds (k + extra; never so with real rates) walk the
    gap loop several times."""
    L = 61
    w = importance_weights(L, torch.Generator().manual_seed(7), kind)
    seg = torch.zeros(L, dtype=torch.int64)
    sel = torch.ones(L, dtype=torch.bool)
    K = torch.tensor([sigma], dtype=torch.float32).to(torch.float64) * L
    k = torch.floor(K + 0.5)
    U, _, q0, P = imp._water_fill(seg, w, sel, 1, k)
    q, clipped, _ = imp._token_rates(seg, w, sel, 1, k, torch.tensor([L]))
    want = imp._systematic(seg, sel, clipped, q, k.to(torch.int64) + extra, 1, torch.tensor([V], dtype=torch.int64))
    sat = bool(k >= P.to(torch.float64))
    qz = float((k - P) / (L - P)) if L > int(P) else 0.0
    q0 = 0.0 if sat else float(q0)
    line = ~clipped
    C = int(torch.floor(q[line] * 2.0**32).to(torch.int64).sum())
    m = int(k) + extra - int(clipped.sum())
    gap = m - (0 if C <= V else min(m, ((C - V - 1) >> 32) + 1))
    assert gap == (1 if V > 2**31 else 0) + extra, f"gap tokens: {gap}"  # the case exercises what it is for
    got = torch.zeros(L, dtype=torch.bool, device=DEVICE)
    bits = [int(torch.tensor([x], dtype=torch.float64).view(torch.int64)) for x in (q0, qz)]
    _systematic_kernel[(1,)](w.to(DEVICE).view(torch.int32), got, L, int(U), bits[0], bits[1], int(sat), V,
                             int(k) + extra, G=4)
    assert torch.equal(got.cpu(), want)
    assert int(want.sum()) == min(int(k) + extra, L)


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------
def test_op_cuda_entry_routes_float_weights_to_the_weights_kernel():
    """The op's registered CUDA implementation sends float32 priority to this kernel (and a
    boolean one to the boolean kernel), in both the functional and the out= variant."""
    kw = _case([5, 0, 33], 3, "graded", sampling="exact", complementary=True, loss_weight="token")
    args = ops.normalize(**to_device(kw, DEVICE)).args
    ref = ops.normalize(**kw).args
    want = dm.reference.priority_mask_ref(*ref)
    for x, y in zip(tw.priority_mask_cuda(*args), want):
        assert torch.equal(x.cpu(), y)
    for out_fn in (tw.priority_mask_cuda_out, pm.priority_mask_triton_out):  # the bool kernel's entry too
        bufs = [torch.empty_like(x, device=DEVICE) for x in want]
        out_fn(*args, **dict(zip(ops.OUT_NAMES, bufs)))
        for x, y in zip(bufs, want):
            assert torch.equal(x.cpu(), y)


def test_out_variant_and_seed_sensitivity():
    kw = _case([40, 3, 17], 5, "graded", complementary=True, loss_weight="token")
    ref = dm.priority_mask(**kw, backend="ref")
    dev = to_device(kw, DEVICE)
    got = dm.priority_mask(**dev, backend="triton")
    assert_same(ref, got, "functional")
    out = dm.empty_masked_batch(dev["input_ids"], cu_seqlens=dev["cu_seqlens"], complementary=True,
                                loss_weight="token")
    assert_same(ref, dm.priority_mask(**dev, backend="triton", out=out), "out=")
    other = dm.priority_mask(**to_device(dict(kw, seed=kw["seed"] + 1), DEVICE), backend="triton")
    assert not torch.equal(got.masked, other.masked)


# --------------------------------------------------------------------------------------------
# No fused multiply-add, correctly rounded float64 division, read from the PTX
# --------------------------------------------------------------------------------------------
def test_ptx_float64_is_fma_free_and_div_rn():
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import collections, json, sys\n"
            "from dllm_masks.triton_kernels import importance as tw\n"
            "out = {}\n"
            "for exact in (False, True):\n"
            "    for K in (0, 32):\n"
            "        ptx = tw.compile_weights_specialization(exact=exact, block_size=K).asm['ptx']\n"
            "        out[f'exact{int(exact)}-K{K}'] = dict(collections.Counter(\n"
            "            l.split()[0] for l in ptx.splitlines()\n"
            "            if '.f64' in l and l.strip() and not l.strip().startswith('//')))\n"
            "json.dump(out, sys.stdout)\n")
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).resolve().parent.parent,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0 and "GPUTarget" in r.stderr and "ImportError" in r.stderr:
        pytest.skip("this Triton build has no NVIDIA backend")
    assert r.returncode == 0, r.stderr[-3000:]
    for name, found in json.loads(r.stdout).items():
        assert not [op for op in found if op.startswith("fma")], f"{name}: fused multiply-add in float64: {found}"
        assert not [op for op in found if op.startswith("div") and op != "div.rn.f64"], f"{name}: {found}"
        assert found.get("div.rn.f64", 0) > 0 and found.get("mul.rn.f64", 0) > 0, f"{name}: {found}"


# --------------------------------------------------------------------------------------------
# GPU only: the dispatcher, no host sync, CUDA graphs
# --------------------------------------------------------------------------------------------
def _graph_args(lengths, block_size=None, sampling="bernoulli"):
    kw = _case(lengths, 21, "graded", complementary=True, loss_weight="token", block_size=block_size,
               sampling=sampling)
    dev = to_device(kw, "cuda")
    dev["seed"] = torch.tensor(5, dtype=torch.int64, device="cuda")
    dev["seq_offset"] = torch.tensor(0, dtype=torch.int64, device="cuda")
    return kw, dev


@gpu_only
def test_cuda_dispatcher_serves_the_weights_kernel():
    kw = _case([100, 33, 0, 4097], 2, "graded", complementary=True, loss_weight="token")
    assert_same(dm.priority_mask(**kw, backend="ref"), dm.priority_mask(**to_device(kw, "cuda")), "dispatcher on CUDA")


@gpu_only
@pytest.mark.parametrize("block_size", [None, 32])
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_no_host_sync_with_validate_false(block_size, sampling):
    _, dev = _graph_args([2048, 100, 4097], block_size, sampling)
    assert_no_host_sync(lambda: dm.priority_mask(**dev, validate=False))


@gpu_only
@pytest.mark.parametrize("block_size", [None, 32])
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_cuda_graph_replay_draws_fresh_numbers(block_size, sampling):
    kw, dev = _graph_args([2048, 100, 0, 4097, 5], block_size, sampling)
    replay, out = capture_graph(lambda: dm.priority_mask(**dev, validate=False))
    seen = []
    for seed, off in ((5, 0), (6, 0), (5, 7)):
        dev["seed"].fill_(seed)
        dev["seq_offset"].fill_(off)
        replay()
        torch.cuda.synchronize()
        assert_same(dm.priority_mask(**dict(kw, seed=seed, seq_offset=off), backend="ref"), out,
                    f"replay seed={seed} offset={off}")
        seen.append(out.masked.clone())
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[2])
