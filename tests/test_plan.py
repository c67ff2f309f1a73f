"""``dm.MaskPlan``: a ``priority_mask`` call checked once and run on fixed buffers.

A run must equal ``priority_mask`` on the buffers' current contents bit for bit (``torch.equal``)
on every backend, for the awkward shapes and hypothesis-drawn inputs; refill in place between
runs; refuse arguments it would have to copy, a layout changed in place, and bad values at a run.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dllm_masks as dm
from dllm_masks.testing import (AWKWARD, OPTION_SETS, _padded_cases, assert_same, backends_here, packed_case,
                                random_cases)

BACKENDS = backends_here()
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")

# the first four: the hard sample (w = inf) is the op's own case (test_out_variant), here only interpreter time
OPTIONS = OPTION_SETS[:4]


def _op(kw, backend):
    return dm.priority_mask(**kw, backend=backend)


def _refill(kw, seed):
    """New contents for the plan's per-run buffers, in place (same shapes and dtypes)."""
    g = torch.Generator().manual_seed(seed)
    kw["input_ids"].copy_(torch.randint(5, 1000, kw["input_ids"].shape, generator=g))
    if isinstance(kw.get("sigma"), torch.Tensor):
        kw["sigma"].copy_(torch.rand(kw["sigma"].shape, generator=g))
    if kw.get("priority") is not None:
        kw["priority"].copy_(torch.rand(kw["priority"].shape, generator=g) < 0.5)
    if kw.get("prompt_lens") is not None:
        lens = (kw["cu_seqlens"][1:] - kw["cu_seqlens"][:-1]).long()
        kw["prompt_lens"].copy_((torch.rand(lens.shape, generator=g) * (lens + 1)).long().clamp(max=lens))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=str)
@pytest.mark.parametrize("lengths,why", AWKWARD, ids=[w for _, w in AWKWARD])
def test_runs_equal_the_op_on_refilled_buffers(lengths, why, opts, backend):
    if backend == "triton" and sum(lengths) > 200 and opts.get("block_size") == 3:
        pytest.skip("tiny blocks over thousands of tokens take minutes under the interpreter")
    kw = packed_case(lengths, seed=len(lengths), **opts)
    plan = dm.MaskPlan(**kw, backend=backend)
    assert_same(plan.run(), _op(kw, backend), f"{why}, first run")
    for i in range(2):
        _refill(kw, i)
        got = plan.run(seed=100 + i, seq_offset=7 * i)
        assert_same(got, _op(dict(kw, seed=100 + i, seq_offset=7 * i), backend), f"{why}, run {i}")
        assert got is plan.out  # the same buffers every run
        assert got.noisy_ids.data_ptr() == plan.out.noisy_ids.data_ptr()
    # a run without a seed uses the plan's seed and offset again
    assert_same(plan.run(), _op(kw, backend), f"{why}, plan's seed")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=random_cases(), seed=st.integers(0, 2**64 - 1))
def test_hypothesis_packed(backend, kw, seed):
    plan = dm.MaskPlan(**kw, backend=backend)
    assert_same(plan.run(seed=seed), _op(dict(kw, seed=seed), backend), "packed")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=st.composite(_padded_cases)())
def test_hypothesis_padded(backend, kw):
    plan = dm.MaskPlan(**kw, backend=backend)
    assert_same(plan.run(), _op(kw, backend), "padded")


def test_float_weights_and_given_out():
    kw = packed_case([5, 33, 0, 31], seed=3, complementary=True, loss_weight="token")
    kw["priority"] = torch.rand(kw["input_ids"].numel()) * 3
    out = dm.empty_masked_batch(kw["input_ids"], cu_seqlens=kw["cu_seqlens"], complementary=True, loss_weight="token")
    for backend in BACKENDS:
        plan = dm.MaskPlan(**kw, out=out, backend=backend)
        got = plan.run(seed=9)
        assert got.noisy_ids is out.noisy_ids and got.rates is out.rates
        assert_same(got, _op(dict(kw, seed=9), backend), backend)


def test_tensor_seed_is_read_at_each_run():
    kw = packed_case([7, 9], seed=1, complementary=True)
    seed, off = torch.tensor(5), torch.tensor(0)
    plan = dm.MaskPlan(**dict(kw, seed=seed, seq_offset=off))
    assert_same(plan.run(), _op(dict(kw, seed=5), None), "seed 5")
    seed.fill_(6)
    off.fill_(2)
    assert_same(plan.run(), _op(dict(kw, seed=6, seq_offset=2), None), "seed 6")
    with pytest.raises(ValueError, match="^seed: this plan reads"):
        plan.run(seed=1)


@pytest.mark.parametrize("name,value,needs", [
    ("cu_seqlens", lambda kw: kw["cu_seqlens"].long(), "int64 offsets are cast"),
    ("sigma", lambda kw: kw["sigma"].double(), "float64 σ is cast"),
    ("prompt_lens", lambda kw: kw["prompt_lens"].int(), "int32 prompt lengths are cast"),
    ("priority", lambda kw: kw["priority"].int(), "integer priority becomes bool"),
])
def test_refuses_arguments_it_would_copy(name, value, needs):
    kw = packed_case([4, 6], seed=2)
    with pytest.raises(ValueError, match=f"^{name}: a MaskPlan runs on the given tensor"):
        dm.MaskPlan(**dict(kw, **{name: value(kw)}))


def test_refuses_a_non_contiguous_padded_input_and_int_maskable():
    ids = torch.arange(40).reshape(8, 5).t()  # [5, 8], not contiguous: flattening copies
    with pytest.raises(ValueError, match="^input_ids: a MaskPlan runs on the given tensor"):
        dm.MaskPlan(ids, 0.5, mask_token_id=0)
    ids = torch.arange(40).reshape(5, 8)
    with pytest.raises(ValueError, match="^maskable: a MaskPlan runs on the given tensor"):
        dm.MaskPlan(ids, 0.5, mask_token_id=0, maskable=torch.ones(5, 8, dtype=torch.int32))


def test_a_layout_changed_in_place_is_refused():
    kw = packed_case([4, 6], seed=2)
    plan = dm.MaskPlan(**kw)
    plan.run()
    kw["cu_seqlens"][1] = 5
    with pytest.raises(ValueError, match="^cu_seqlens: changed in place since the plan"):
        plan.run()


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_values_at_a_run(backend):
    kw = packed_case([4, 6], seed=2)
    plan = dm.MaskPlan(**kw, backend=backend)
    kw["sigma"][0] = 1.5
    with pytest.raises(ValueError, match="sigma: must lie in"):
        plan.run()
    kw["sigma"][0] = 0.5
    kw["prompt_lens"][1] = 7
    with pytest.raises(ValueError, match="prompt_lens"):
        plan.run()


def test_bad_arguments_are_the_ops_errors():
    kw = packed_case([4, 6], seed=2)
    with pytest.raises(ValueError, match="^weight: must be in"):
        dm.MaskPlan(**dict(kw, weight=-1.0))
    with pytest.raises(TypeError, match="^input_ids: expected"):
        dm.MaskPlan(**dict(kw, input_ids=[1, 2]))
    plan = dm.MaskPlan(**kw)
    with pytest.raises(TypeError, match="^seed: expected an int"):
        plan.run(seed=1.5)
    with pytest.raises(TypeError, match="^seed: run\\(\\) takes ints"):
        plan.run(seed=torch.tensor(1))
    with pytest.raises(TypeError, match="^out: expected a MaskedBatch"):
        dm.MaskPlan(**kw, out=(1, 2))


def test_unknown_keyword_names_itself():
    with pytest.raises(TypeError, match="^cu_seqlen: not an argument of MaskPlan"):
        dm.MaskPlan(torch.arange(4), 0.5, mask_token_id=0, cu_seqlen=None)
    with pytest.raises(TypeError, match="^mask_token_id: required"):
        dm.MaskPlan(torch.arange(4), 0.5)
