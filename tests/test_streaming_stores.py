"""The C++ kernel's streaming-store path (``DLLM_MASKS_CPU_STREAM_BYTES=0`` streams every output).

Each output stream is written through per-thread line writers that hold an unfinished 64-byte
line until the next chunk completes it, so chunk, sequence, view and work-item boundaries fall
anywhere in a line. Whatever the boundaries and the thread count, the bytes must equal the
reference's, and nothing outside the outputs may be written (the buffers sit between guard bytes).
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import dllm_masks as dm
from dllm_masks import ops
from dllm_masks.testing import AWKWARD, assert_same, packed_case, random_cases, with_threads

pytestmark = [pytest.mark.skipif(ops._cpp is None, reason="C++ extension not built"),
              pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")]

OPTIONS = [
    dict(complementary=True, loss_weight="sigma", weight=2.0),
    dict(block_size=3, complementary=True, loss_weight="token", sampling="exact"),
    dict(block_size=32, weight=0.5),
]


@pytest.fixture
def stream_all(monkeypatch):
    monkeypatch.setenv("DLLM_MASKS_CPU_STREAM_BYTES", "0")


def _guarded_out(kw, guard=77):
    """``out=`` buffers that are views into larger tensors filled with a guard value, starting at
    an odd element so that no stream begins on a line boundary; returns (out, the backing tensors)."""
    like = dm.empty_masked_batch(kw["input_ids"], cu_seqlens=kw.get("cu_seqlens"), block_size=kw.get("block_size"),
                                 complementary=kw.get("complementary", False), loss_weight=kw.get("loss_weight"))
    backing, views = [], {}
    for name in ("noisy_ids", "labels", "masked", "loss_weight", "rates"):
        x = getattr(like, name)
        if x is None:
            continue
        big = torch.full((x.numel() + 80,), guard, dtype=x.dtype)
        views[name] = big[3:3 + x.numel()].view(x.shape)
        backing.append((name, big, x.numel(), big[0].clone()))
    return like._replace(**views), backing


def _assert_guards(backing, what):
    for name, big, n, guard in backing:
        assert (big[:3] == guard).all() and (big[3 + n:] == guard).all(), f"{what}: wrote outside out.{name}"


@pytest.mark.parametrize("opts", OPTIONS, ids=str)
@pytest.mark.parametrize("lengths,why", AWKWARD, ids=[w for _, w in AWKWARD])
def test_awkward_shapes_streamed(stream_all, lengths, why, opts):
    kw = packed_case(lengths, seed=len(lengths) + 1, **opts)
    want = dm.priority_mask(**kw, backend="ref")
    assert_same(dm.priority_mask(**kw, backend="cpp"), want, why)
    out, backing = _guarded_out(kw)
    assert_same(dm.priority_mask(**kw, backend="cpp", out=out), want, f"{why}, out= at an odd offset")
    _assert_guards(backing, why)


@pytest.mark.parametrize("isa", ["default", "baseline"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("opts", OPTIONS + [dict(complementary=True, loss_weight="token", float_weights=True)], ids=str)
def test_many_items_and_threads_streamed(stream_all, monkeypatch, isa, threads, opts):
    """~140K tokens of uneven sequences: several work items per thread, items split inside long
    sequences, lines shared between items of different threads; both builds of the kernel."""
    if isa == "baseline":
        monkeypatch.setenv("DLLM_MASKS_CPU_ISA", "baseline")
    opts = dict(opts)
    float_weights = opts.pop("float_weights", False)
    lengths = torch.randint(1, 9000, (40,), generator=torch.Generator().manual_seed(threads)).tolist()
    lengths[5:8] = [0, 1, 33]
    kw = packed_case(lengths, seed=threads, **opts)
    if float_weights:
        kw["priority"] = torch.rand(sum(lengths), generator=torch.Generator().manual_seed(9)) * 4
    want = dm.priority_mask(**kw, backend="ref")
    assert_same(with_threads(threads, lambda: dm.priority_mask(**kw, backend="cpp")), want, f"{threads} threads")
    out, backing = _guarded_out(kw)
    got = with_threads(threads, lambda: dm.priority_mask(**kw, backend="cpp", out=out))
    assert_same(got, want, f"{threads} threads, out=")
    _assert_guards(backing, f"{threads} threads")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(kw=random_cases())
def test_hypothesis_streamed(stream_all, kw):
    assert_same(dm.priority_mask(**kw, backend="cpp"), dm.priority_mask(**kw, backend="ref"), "streamed")
