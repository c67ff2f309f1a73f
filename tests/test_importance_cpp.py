"""The C++ kernel's float32 importance-weights path against the reference, bit for bit
(docs/importance.md), and malformed float weights thrown straight at it."""
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_masks as dm
from dllm_masks import ops
from dllm_masks.testing import AWKWARD, assert_same, importance_weights, packed_case

if ops._cpp is None and os.environ.get("DLLM_MASKS_REQUIRE_CPP") != "1":
    pytest.skip(f"C++ extension not built ({ops._cpp_error})", allow_module_level=True)

F32 = torch.float32
weights = importance_weights


def check(kw):
    assert_same(dm.priority_mask(**kw, backend="ref"), dm.priority_mask(**kw, backend="cpp"), "float weights")


@pytest.mark.parametrize("lengths,why", AWKWARD, ids=[a[1] for a in AWKWARD])
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
@pytest.mark.parametrize("kind", ["graded", "special", "ties", "two", "one"])
def test_awkward_shapes(lengths, why, sampling, kind):
    for seed, (block, lw) in enumerate([(None, "token"), (4, "sigma"), (7, None), (32, "token")]):
        kw = packed_case(lengths, seed=seed, block_size=block, sampling=sampling, complementary=True, loss_weight=lw)
        kw["priority"] = weights(sum(lengths), torch.Generator().manual_seed(seed), kind)
        check(kw)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(0, 70), max_size=5), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["graded", "special", "ties", "two", "one"]), block=st.sampled_from([None, 1, 3, 32]),
       sampling=st.sampled_from(["bernoulli", "exact"]), comp=st.booleans(),
       lw=st.sampled_from([None, "sigma", "token"]), mask=st.sampled_from(["none", "prompt", "tensor"]),
       sigma=st.sampled_from([None, 0.0, 1.0, 0.5]))
def test_random_cases(lengths, seed, kind, block, sampling, comp, lw, mask, sigma):
    kw = packed_case(lengths, seed=seed, block_size=block, sampling=sampling, complementary=comp, loss_weight=lw,
                     prompt=mask == "prompt", dtype=torch.int32 if seed % 2 else torch.int64)
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    kw["priority"] = weights(T, g, kind)
    if mask == "tensor":
        kw["maskable"] = torch.rand(T, generator=g) < 0.7
    if sigma is not None:
        kw["sigma"] = sigma
    check(kw)


def test_both_instruction_sets_and_threads(monkeypatch):
    lengths = [70000, 3, 0, 20000] + [57] * 40 + [2049, 1]
    for sampling in ("bernoulli", "exact"):
        kw = packed_case(lengths, seed=3, sampling=sampling, complementary=True, loss_weight="token")
        kw["priority"] = weights(sum(lengths), torch.Generator().manual_seed(3), "graded")
        ref = dm.priority_mask(**kw, backend="ref")
        old = torch.get_num_threads()
        try:
            for n in (1, 3):
                torch.set_num_threads(n)
                assert_same(ref, dm.priority_mask(**kw, backend="cpp"), f"{n} threads")
        finally:
            torch.set_num_threads(old)
        monkeypatch.setenv("DLLM_MASKS_CPU_ISA", "baseline")
        assert_same(ref, dm.priority_mask(**kw, backend="cpp"), "baseline build")
        monkeypatch.delenv("DLLM_MASKS_CPU_ISA")


@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
@pytest.mark.parametrize("narrow", [False, True])
def test_long_segments_with_negative_zero_weights(monkeypatch, sampling, narrow):
    """The exponent histogram: one pass per exponent when the positive weights span at most 8
    exponents (narrow: 0.25-5, with zeros), else interleaved tables from 512 tokens on (graded:
    zeros and 1e30). -0.0 is a zero weight in both (its sign bit must not put it in a bucket)."""
    lengths = [63, 64, 511, 512, 513, 2048, 4099, 3]
    g = torch.Generator().manual_seed(11)
    kw = packed_case(lengths, seed=11, sampling=sampling, complementary=True, loss_weight="token")
    w = (0.25 + 4.75 * torch.rand(sum(lengths), generator=g)).to(F32) if narrow else weights(sum(lengths), g, "graded")
    kw["priority"] = torch.where(torch.rand(w.numel(), generator=g) < 0.2, torch.tensor(-0.0), w)
    assert (torch.signbit(kw["priority"]) & (kw["priority"] == 0)).any()
    check(kw)
    monkeypatch.setenv("DLLM_MASKS_CPU_ISA", "baseline")
    check(kw)


def test_boolean_equals_two_level_weights_on_cpp():
    kw = packed_case([5, 0, 1, 31, 33, 4097, 3], seed=1, complementary=True, loss_weight="token", weight=5.0)
    for sampling in ("bernoulli", "exact"):
        a = dm.priority_mask(**dict(kw, sampling=sampling), backend="cpp")
        wf = torch.where(kw["priority"], torch.tensor(5.0), torch.tensor(1.0)).to(F32)
        b = dm.priority_mask(**dict(kw, sampling=sampling, priority=wf, weight=1.0), backend="cpp")
        assert_same(a, b, sampling)


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([1.0, -1.0, 0, 0]), "priority"),
    (torch.tensor([1.0, float("nan"), 0, 0]), "priority"),
    (torch.tensor([1.0, float("inf"), 0, 0]), "priority"),
    (torch.ones(5), "priority"),
])
def test_kernel_refuses_bad_weights(bad, match):
    args = list(ops.normalize(torch.arange(4), 0.5, mask_token_id=0, priority=torch.ones(4)).args)
    args[3] = bad
    with pytest.raises(ValueError, match=match):
        ops._cpp.priority_mask(*args)
    args[3] = torch.ones(4)
    args[8] = 2.0
    with pytest.raises(ValueError, match="weight"):
        ops._cpp.priority_mask(*args)


def test_malformed_float_weights_never_crash_the_process():
    """The C++ fuzzer of test_priority_mask_cpp.py with float32 weights among the priorities."""
    import test_priority_mask_cpp as T

    src = T.FUZZ
    old_valid = "torch.rand(T, generator=g) < 0.3 if draw(st.booleans()) else None,"
    new_valid = ("draw(st.sampled_from([None, 'bool', 'float', 'float'])),")
    assert old_valid in src
    src = src.replace(old_valid, new_valid)
    edits = [
        ("@st.composite\ndef valid(draw):", "@st.composite\ndef valid0(draw):"),
        ("def tensor_like(draw, n):", '''@st.composite
def valid(draw):
    args = draw(valid0())
    T = args[0].numel()
    kind = args[3]
    if kind == 'bool':
        args[3] = torch.rand(T) < 0.3
    elif kind == 'float':
        vals = [0.0, 1.0, 2.0, 1e30, 1e-42, 0.5, 3.4e38]
        args[3] = torch.tensor([draw(st.sampled_from(vals)) for _ in range(T)], dtype=torch.float32)
        args[8] = 1.0
    return args

def tensor_like(draw, n):'''),
        ('''    if kind == "float":
        return torch.tensor(vals, dtype=torch.float64) / 7''', '''    if kind == "float":
        f = torch.tensor(vals, dtype=torch.float64) / 7
        return f if draw(st.booleans()) else torch.where(f > 1e5, torch.tensor(float("nan"), dtype=torch.float64),
                                                         f).to(torch.float32)'''),
    ]
    for old, new in edits:
        assert old in src, old
        src = src.replace(old, new)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(T.ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", src, "300"], capture_output=True, text=True, timeout=600, env=env,
                          cwd=T.ROOT)
    assert proc.returncode == 0, f"fuzzer exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert "fuzz ok" in proc.stdout


@pytest.mark.parametrize("exact", [False, True])
def test_opcheck_and_compile_with_float_weights(exact):
    kw = packed_case([5, 0, 33, 70], seed=2, complementary=True, loss_weight="token",
                     sampling="exact" if exact else "bernoulli")
    kw["priority"] = weights(108, torch.Generator().manual_seed(2), "graded")
    args = ops.normalize(**kw).args
    torch.library.opcheck(torch.ops.dllm_masks.priority_mask.default, tuple(args))
    want = dm.priority_mask(**kw, backend="ref")
    compiled = torch.compile(lambda *a: torch.ops.dllm_masks.priority_mask.default(*a), fullgraph=True)
    got = compiled(*args)
    assert torch.equal(got[1], want.masked) and torch.equal(got[3], want.loss_weight) and torch.equal(got[4], want.rates)
