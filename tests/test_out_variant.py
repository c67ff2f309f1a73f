"""``priority_mask(..., out=...)``: outputs written into reused buffers, on every backend.

The out-variant must give exactly the allocating path's result (``torch.equal``) on the awkward
shapes and on hypothesis-drawn inputs, write in place (the returned tensors are the buffers given),
reject buffers that do not fit (``TypeError`` / ``ValueError`` starting with ``out``), and be one
op with a mutable schema (``dllm_masks::priority_mask.out``) for ``torch.library.opcheck`` and
``torch.compile(fullgraph=True)``.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import dllm_masks as dm
from dllm_masks import ops
from dllm_masks.testing import AWKWARD, OPTION_SETS, assert_same, backends_here, packed_case, random_cases

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = backends_here()
# The interpreter evaluates 1/q on scalars where q = 0 (weights of tokens that are never masked).
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")


def _shape_kw(kw):
    return {k: kw.get(k) for k in ("cu_seqlens", "block_size")} | dict(
        complementary=kw.get("complementary", False), loss_weight=kw.get("loss_weight"))


def _check_out(kw, backend, out=None):
    """out= equals the allocating call bit for bit, and writes the given buffers."""
    want = dm.priority_mask(**kw, backend=backend)
    if out is None:
        out = dm.empty_masked_batch(kw["input_ids"], **_shape_kw(kw))
    got = dm.priority_mask(**kw, backend=backend, out=out)
    assert_same(want, got, f"{backend}")
    for name in ("noisy_ids", "labels", "masked", "loss_weight", "rates"):
        assert getattr(got, name) is getattr(out, name), name
    return got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt", OPTION_SETS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_awkward_shapes(backend, opt):
    for lengths, why in AWKWARD:
        if backend == "triton" and sum(lengths) > 1000:
            lengths = [min(n, 300) for n in lengths]  # the interpreter is slow
        kw = packed_case(lengths, seed=len(lengths) + 3, **opt)
        _check_out(kw, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reuse_across_calls(backend):
    """The result of one call is the out= of the next (same shapes, new σ, seed and priority)."""
    kw = packed_case([5, 0, 33, 70], seed=1, block_size=4, complementary=True, loss_weight="sigma", weight=2.0)
    first = dm.priority_mask(**kw, backend=backend)
    ptrs = [t.data_ptr() for t in (first.noisy_ids, first.labels, first.masked, first.loss_weight, first.rates)]
    for step in range(3):
        kw2 = packed_case([5, 0, 33, 70], seed=10 + step, block_size=4, complementary=True, loss_weight="sigma",
                          weight=2.0)
        got = _check_out(kw2, backend, out=first)
        assert [t.data_ptr() for t in (got.noisy_ids, got.labels, got.masked, got.loss_weight, got.rates)] == ptrs


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_batch(backend):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 1000, (3, 37), generator=g, dtype=torch.int32)
    kw = dict(input_ids=ids, sigma=torch.rand(3, generator=g), maskable=torch.rand(3, 37, generator=g) < 0.8,
              priority=torch.rand(3, 37, generator=g) < 0.3, weight=2.0, complementary=True, mask_token_id=0,
              seed=99, sampling="exact", loss_weight="token")
    got = _check_out(kw, backend, out=dm.empty_masked_batch(ids, complementary=True, loss_weight="token"))
    assert got.noisy_ids.shape == (6, 37)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(random_cases())
def test_random_cases(backend, kw):
    _check_out(kw, backend)


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the Triton interpreter")
@settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow])
@given(random_cases())
def test_random_cases_triton(kw):
    _check_out(kw, "triton")


def test_dispatcher_default_backend():
    kw = packed_case([31, 33], seed=2, complementary=True, loss_weight="token", weight=2.0)
    _check_out(kw, None)


def test_empty_masked_batch_shapes():
    ids = torch.zeros(70, dtype=torch.int32)
    cu = torch.tensor([0, 5, 5, 70], dtype=torch.int32)
    b = dm.empty_masked_batch(ids, cu_seqlens=cu, block_size=32, complementary=True, loss_weight="sigma")
    assert b.noisy_ids.shape == (140,) and b.noisy_ids.dtype == torch.int32
    assert b.labels.dtype == torch.int64 and b.masked.dtype == torch.bool and b.loss_weight.dtype == torch.float32
    assert b.rates.shape == (1 + 0 + 3, 2) and b.cu_seqlens.shape == (7,) and b.sigma.shape == (4,)
    assert dm.empty_masked_batch(ids, cu_seqlens=cu).loss_weight is None
    assert dm.empty_masked_batch(ids, cu_seqlens=cu, block_size=32, num_segments=4).rates.shape == (4, 2)
    with pytest.raises(ValueError, match="^block_size"):
        dm.empty_masked_batch(ids, block_size=0)
    with pytest.raises(TypeError, match="^input_ids"):
        dm.empty_masked_batch(ids.float())


# --------------------------------------------------------------------------------------------
# Buffers that do not fit
# --------------------------------------------------------------------------------------------
def _bad_cases():
    kw = packed_case([5, 9], seed=4, complementary=True, loss_weight="sigma")
    good = lambda: dm.empty_masked_batch(kw["input_ids"], **_shape_kw(kw))  # noqa: E731
    yield "type", kw, (1, 2, 3), TypeError, "out: expected a MaskedBatch"
    yield "dtype", kw, good()._replace(labels=torch.empty(28, dtype=torch.int32)), TypeError, "out: labels: expected dtype int64"
    yield "ids dtype", kw, good()._replace(noisy_ids=torch.empty(28, dtype=torch.int32)), TypeError, "out: noisy_ids"
    yield "shape", kw, good()._replace(masked=torch.empty(14, dtype=torch.bool)), ValueError, r"out: masked: expected shape \(28,\)"
    yield "rates", kw, good()._replace(rates=torch.empty(3, 2, dtype=torch.float64)), ValueError, "out: rates"
    yield "device", kw, good()._replace(labels=torch.empty(28, dtype=torch.int64, device="meta")), ValueError, "out: labels: is on meta"
    yield "strided", kw, good()._replace(labels=torch.empty(56, dtype=torch.int64)[::2]), ValueError, "out: labels: must be contiguous"
    yield "lw missing", kw, good()._replace(loss_weight=None), ValueError, "out: loss_weight: expected a float32"
    yield "lw extra", dict(kw, loss_weight=None), good(), ValueError, r"out: loss_weight: expected None"
    shared = torch.empty(28, dtype=torch.int64)
    yield "overlap", kw, good()._replace(noisy_ids=shared, labels=shared), ValueError, "out: noisy_ids: shares memory with out.labels"
    ids2 = torch.empty(28, dtype=torch.int64)
    kw2 = dict(kw, input_ids=ids2[:14])
    yield "input", kw2, good()._replace(noisy_ids=ids2), ValueError, "out: noisy_ids: shares memory with the input input_ids"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_rejects_buffers_that_do_not_fit(backend, case):
    _, kw, out, err, msg = case
    with pytest.raises(err, match=f"^{msg}"):
        dm.priority_mask(**kw, backend=backend, out=out)


@pytest.mark.skipif(ops._cpp is None, reason="C++ extension not built")
def test_cpp_checks_its_buffers():
    """The C++ out-variant checks what it writes, whoever calls it (no write out of bounds)."""
    call = ops.normalize(**packed_case([5, 9], seed=4, complementary=True, loss_weight="sigma"))
    bufs = dict(noisy=torch.empty(28, dtype=torch.int64), masked=torch.empty(28, dtype=torch.bool),
                labels=torch.empty(28, dtype=torch.int64), loss_weight=torch.empty(28, dtype=torch.float32),
                rates=torch.empty(2, 2, dtype=torch.float64))
    ops._cpp.priority_mask_out(*call.args, **bufs)
    for name, bad in (("noisy", torch.empty(27, dtype=torch.int64)), ("labels", torch.empty(28, dtype=torch.int32)),
                      ("loss_weight", torch.empty(0, dtype=torch.float32)), ("rates", torch.empty(4, dtype=torch.float64)),
                      ("masked", torch.empty(56, dtype=torch.bool)[::2])):
        with pytest.raises((ValueError, TypeError), match=f"priority_mask: {name}"):
            ops._cpp.priority_mask_out(*call.args, **dict(bufs, **{name: bad}))
    with pytest.raises(ValueError, match="priority_mask: noisy: shares memory with labels"):
        ops._cpp.priority_mask_out(*call.args, **dict(bufs, noisy=bufs["labels"]))
    ids = torch.empty(28, dtype=torch.int64)
    ids[:14] = call.args.input_ids
    args = call.args._replace(input_ids=ids[:14])
    with pytest.raises(ValueError, match="priority_mask: noisy: shares memory with the input input_ids"):
        ops._cpp.priority_mask_out(*args, **dict(bufs, noisy=ids))


# --------------------------------------------------------------------------------------------
# The op boundary: opcheck, torch.compile
# --------------------------------------------------------------------------------------------
def _op_call(lengths=(5, 0, 33), complementary=True, lw="token", block=None, exact=False):
    kw = packed_case(list(lengths), 2, block_size=block, complementary=complementary, loss_weight=lw, weight=2.0,
                     sampling="exact" if exact else "bernoulli")
    call = ops.normalize(**kw)
    b = dm.empty_masked_batch(kw["input_ids"], **_shape_kw(kw))
    return tuple(call.args), dict(zip(ops.OUT_NAMES, ops.check_out(b, call)))


@pytest.mark.parametrize("call", [_op_call(), _op_call(complementary=False, lw=None), _op_call(block=4, lw="sigma"),
                                  _op_call(block=32, exact=True)], ids=["comp-token", "plain", "block4", "block32-exact"])
def test_opcheck(call):
    args, kwargs = call
    torch.library.opcheck(torch.ops.dllm_masks.priority_mask.out, args, kwargs)


def test_schema_is_mutable_and_returns_nothing():
    schema = torch.ops.dllm_masks.priority_mask.out._schema
    assert schema.is_mutable and len(schema.returns) == 0
    assert [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write] == list(ops.OUT_NAMES)


def test_torch_compile_fullgraph_one_op():
    """Dynamo sees one call of the out-variant; the compiled step writes the buffers like eager does."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(ids, cu, prio, sigma, seed, out):
        r = dm.priority_mask(ids, sigma, cu_seqlens=cu, priority=prio, weight=2.0, complementary=True, mask_token_id=3,
                             seed=seed, loss_weight="sigma", validate=False, out=out)
        return r.noisy_ids, r.loss_weight, r.rates

    kw = packed_case([5, 0, 33], 4, complementary=True, loss_weight="sigma")
    args = (kw["input_ids"], kw["cu_seqlens"], kw["priority"], kw["sigma"], torch.tensor(5))
    eager = dm.empty_masked_batch(kw["input_ids"], cu_seqlens=kw["cu_seqlens"], complementary=True, loss_weight="sigma")
    step(*args, eager)
    for compiler in (backend, "aot_eager"):
        torch._dynamo.reset()
        buf = dm.empty_masked_batch(kw["input_ids"], cu_seqlens=kw["cu_seqlens"], complementary=True,
                                    loss_weight="sigma")
        res = torch.compile(step, fullgraph=True, backend=compiler)(*args, buf)
        for a, b in zip(res, (eager.noisy_ids, eager.loss_weight, eager.rates)):
            assert torch.equal(a, b)
        for name in ("noisy_ids", "labels", "masked", "loss_weight", "rates"):
            assert torch.equal(getattr(buf, name), getattr(eager, name)), name
    calls = [n for n in graphs[0].graph.nodes if n.op == "call_function" and "dllm_masks" in str(n.target)]
    assert [str(n.target) for n in calls] == ["dllm_masks.priority_mask.out"]


@pytest.mark.skipif(ops._cpp is None, reason="C++ extension not built")
def test_benchmark_out_provider_and_reused_copy_floor(tmp_path, capsys):
    """The benchmark's out= provider and reused-buffer copy floor run (timings live in benchmarks/)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_priority_mask as bench

    out = tmp_path / "r.json"
    assert bench.main(["--sizes", "4K,8K", "--providers", "cpp,out,copy,copy_reused", "--samplings", "bernoulli",
                       "--block-size", "32", "--budget", "0.02", "--min-reps", "2", "--out", str(out),
                       "--plot", str(tmp_path / "r.png")]) == 0
    rec = json.loads(out.read_text())[-1]
    assert {r["provider"] for r in rec["results"]} == {"cpp", "out", "copy", "copy_reused"}
    assert rec["config"]["block_size"] == 32
    assert all(r["x_copy_reused"] > 0 for r in rec["results"])
    assert set(rec["flatness"]) == {"cpp/bernoulli", "out/bernoulli", "copy/-", "copy_reused/-"}
    assert "flatness out/bernoulli" in capsys.readouterr().out


@pytest.mark.skipif(not (torch.cuda.is_available() and not INTERPRET), reason="needs CUDA with TRITON_INTERPRET unset")
def test_cuda_graph_replays_into_the_same_buffers():
    """A graph captured around the out= call writes the caller's buffers on every replay, with the
    seed read from a device tensor (fresh masks per replay, each equal to the reference)."""
    from dllm_masks.testing import capture_graph

    kw = packed_case([300, 5, 33], seed=3, complementary=True, loss_weight="sigma", weight=2.0)
    dev = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    seed, off = torch.tensor(5, device="cuda"), torch.tensor(0, device="cuda")
    buf = dm.empty_masked_batch(dev["input_ids"], cu_seqlens=dev["cu_seqlens"], complementary=True, loss_weight="sigma")
    replay, res = capture_graph(lambda: dm.priority_mask(**dict(dev, seed=seed, seq_offset=off), validate=False,
                                                         out=buf))
    assert res.noisy_ids is buf.noisy_ids
    masks = []
    for s in (7, 8):
        seed.fill_(s)
        replay()
        torch.cuda.synchronize()
        assert_same(dm.priority_mask(**dict(kw, seed=s), backend="ref"), res, f"seed {s}")
        masks.append(buf.masked.clone())
    assert not torch.equal(masks[0], masks[1])
