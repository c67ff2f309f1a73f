"""Regression tests of the op's argument handling: int64 offsets checked before their cast, huge
block sizes, seeds out of range, numpy bools, meta tensors and torch.compile (fullgraph)."""
import numpy as np
import pytest
import torch

import dllm_masks as dm
from dllm_masks.data.collate import MaskConfig
from dllm_masks.testing import assert_same, packed_case

BACKENDS = ["ref", "cpp", "triton"]


def _skip_unavailable(backend):
    why = dm.available_backends()[backend]
    if why is not None:
        pytest.skip(f"{backend} not available: {why}")


# --------------------------------------------------------------------------------------------
# 7: int64 cu_seqlens
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cu", [[0, 2**32 + 4, 10], [0, 4, 2**32 + 10], [-2**32, 4, 10], [0, 2**31, 10]])
def test_int64_offsets_are_checked_before_their_cast(backend, cu):
    _skip_unavailable(backend)
    with pytest.raises(ValueError, match="^cu_seqlens: "):
        dm.priority_mask(torch.arange(10), 0.5, mask_token_id=0, cu_seqlens=torch.tensor(cu), backend=backend)


def test_int64_offsets_that_fit_still_work():
    a = dm.priority_mask(torch.arange(10), 0.5, mask_token_id=0, cu_seqlens=torch.tensor([0, 4, 10]), seed=3)
    b = dm.priority_mask(torch.arange(10), 0.5, mask_token_id=0, seed=3,
                         cu_seqlens=torch.tensor([0, 4, 10], dtype=torch.int32))
    assert_same(a, b)


@pytest.mark.parametrize("cu", [[0, 5, 3], [0, 2**32 + 4, 10]])
def test_num_segments_refuses_negative_lengths(cu):
    with pytest.raises(ValueError, match="^cu_seqlens: .*non-decreasing"):
        dm.num_segments(torch.tensor(cu), 4)
    with pytest.raises(ValueError, match="^cu_seqlens: .*non-decreasing"):
        dm.num_segments(cu, 4)


# --------------------------------------------------------------------------------------------
# 8: huge block_size: one block per sequence
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("K", [2**31, 2**63 - 1, 2**63, 2**64 + 3])
def test_a_block_larger_than_any_sequence_is_one_block_per_sequence(backend, K):
    _skip_unavailable(backend)
    lengths = [0, 1, 5, 33, 0]
    base = packed_case(lengths, seed=4, block_size=64, loss_weight="token")
    assert dm.num_segments(base["cu_seqlens"], K) == 3
    want = dm.priority_mask(**base, backend="ref")
    got = dm.priority_mask(**dict(base, block_size=K), backend=backend)
    assert_same(want, got, f"K={K}")
    single = dm.priority_mask(**dict(base, block_size=K, sigma=0.4), backend=backend)
    assert single.rates.shape == (3, 2)


def test_reference_and_triton_segment_counts_do_not_overflow():
    from dllm_masks.reference import priority_mask_ref
    case = packed_case([3, 0, 7], seed=1, block_size=4)
    call = dm.ops.normalize(**case)
    args = call.args._replace(block_size=2**63 - 1, num_segments=2, sigma=call.args.sigma[:2])
    ref = priority_mask_ref(*args)
    assert ref[4].shape == (2, 2)
    if dm.available_backends()["cpp"] is None:
        cpp = dm.ops._cpp.priority_mask(*args)
        assert all(torch.equal(x, y) for x, y in zip(ref, cpp))


# --------------------------------------------------------------------------------------------
# 9: seeds out of range
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["seed", "seq_offset"])
@pytest.mark.parametrize("value", [2**64, 2**64 + 5, -2**63 - 1, 2**100])
def test_seeds_outside_the_uint64_int64_range_are_refused(name, value):
    with pytest.raises(ValueError, match=f"^{name}: "):
        dm.priority_mask(torch.arange(10), 0.5, mask_token_id=0, **{name: value})


@pytest.mark.parametrize("name", ["seed", "seq_offset"])
def test_seeds_at_the_edges_of_the_range_work(name):
    ids = torch.arange(40)
    a = dm.priority_mask(ids, 0.5, mask_token_id=0, **{name: 2**64 - 1})
    b = dm.priority_mask(ids, 0.5, mask_token_id=0, **{name: -1})
    assert_same(a, b)
    dm.priority_mask(ids, 0.5, mask_token_id=0, **{name: -2**63})


# --------------------------------------------------------------------------------------------
# 11: numpy bools, meta tensors
# --------------------------------------------------------------------------------------------

def test_numpy_bools_are_bools():
    case = packed_case([5, 9], seed=2)
    a = dm.priority_mask(**case, complementary=True)
    b = dm.priority_mask(**dict(case, validate=np.bool_(True)), complementary=np.bool_(True))
    assert_same(a, b)
    assert MaskConfig(complementary=np.bool_(False)).complementary is False
    with pytest.raises(TypeError, match="^complementary: expected a bool, got int"):
        dm.priority_mask(**case, complementary=1)
    with pytest.raises(TypeError, match="^validate: expected a bool"):
        dm.priority_mask(**dict(case, validate="yes"))


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("complementary", [True, False])
def test_meta_tensors_get_the_fake_kernels_shapes(validate, complementary):
    case = packed_case([5, 0, 9], seed=2, block_size=4, loss_weight="sigma", complementary=complementary)
    real = dm.priority_mask(**case)
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    out = dm.priority_mask(**meta, validate=validate)
    for name in dm.MaskedBatch._fields:
        x, y = getattr(real, name), getattr(out, name)
        if x is None:  # optional fields (maskable) are absent in both
            assert y is None, name
            continue
        assert y.device.type == "meta" and x.shape == y.shape and x.dtype == y.dtype, name


def test_meta_tensors_that_need_a_segment_count_say_so():
    case = packed_case([5, 0, 9], seed=2, block_size=4)
    meta = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    with pytest.raises(ValueError, match="^sigma: .*meta"):
        dm.priority_mask(**dict(meta, sigma=0.5))


# --------------------------------------------------------------------------------------------
# 10: torch.compile
# --------------------------------------------------------------------------------------------

def _compiled(fn, **kw):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="eager", **kw)


@pytest.mark.parametrize("backend", [None, "cpp", "ref"])
def test_compiled_capturable_call_with_a_float_sigma_argument(backend):
    _skip_unavailable(backend or "ref")
    case = packed_case([5, 0, 9], seed=2)
    ids, cu, prio = case["input_ids"], case["cu_seqlens"], case["priority"]
    seed = torch.tensor(11)

    def f(ids, cu, prio, sigma, weight, seed):
        return dm.priority_mask(ids, sigma, cu_seqlens=cu, priority=prio, weight=weight, seed=seed, mask_token_id=3,
                                complementary=True, validate=False, backend=backend)

    g = _compiled(f, dynamic=True)
    for sigma, weight in ((0.3, 2.0), (0.6, 0.5)):
        assert_same(f(ids, cu, prio, sigma, weight, seed), g(ids, cu, prio, sigma, weight, seed), f"σ={sigma}")


@pytest.mark.parametrize("backend", [None, "cpp"])
def test_compiled_validating_call_does_not_break_the_graph(backend):
    _skip_unavailable(backend or "ref")
    case = packed_case([5, 0, 9, 31], seed=3)
    call = dict(case, backend=backend)

    def f(**kw):
        return dm.priority_mask(**kw)

    assert_same(f(**call), _compiled(f)(**call))


def test_the_cpp_backend_goes_through_the_registered_op():
    _skip_unavailable("cpp")
    assert dm.ops.kernel_for("cpp", torch.device("cpu")) is torch.ops.dllm_masks.priority_mask.default
