"""The Triton kernel of ``priority_mask`` against the reference, bit for bit (docs/design.md §7).

Where the kernels run:
* ``TRITON_INTERPRET=1`` (tests/conftest.py sets it; CI): on CPU tensors in Triton's interpreter;
* ``TRITON_INTERPRET=0`` on a machine with CUDA (``benchmarks/gpu_check.py``): compiled, on the
  GPU, where the GPU-only tests (CUDA graphs, torch.compile, no host sync) run too.
The reference is always computed on the CPU: it is the oracle.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
from hypothesis import HealthCheck, given, settings  # noqa: E402

import dllm_masks as dm  # noqa: E402
from dllm_masks.testing import PHILOX_KNOWN_ANSWERS, VECTORS, assert_same, capture_graph, packed_case, random_cases  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available()
DEVICE = "cpu" if INTERPRET else ("cuda" if CUDA else None)
ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device"),
    # The interpreter evaluates 1/q on scalars where q = 0 (weights of tokens that are never masked).
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
]
gpu_only = pytest.mark.skipif(not (CUDA and not INTERPRET), reason="needs CUDA with TRITON_INTERPRET unset")

if DEVICE is not None:
    from dllm_masks.triton_kernels import priority_mask as tk
    from dllm_masks.triton_kernels.philox import philox4x32_10, philox_quads, pick_word, split_u64

    import triton.language as tl

    @triton.jit
    def _philox_kernel(ctr_ptr, seed_ptr, out_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        c0 = tl.load(ctr_ptr + 4 * i).to(tl.uint32)
        c1 = tl.load(ctr_ptr + 4 * i + 1).to(tl.uint32)
        c2 = tl.load(ctr_ptr + 4 * i + 2).to(tl.uint32)
        c3 = tl.load(ctr_ptr + 4 * i + 3).to(tl.uint32)
        k0, k1 = split_u64(tl.load(seed_ptr))
        w0, w1, w2, w3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
        tl.store(out_ptr + 4 * i, w0.to(tl.int64))
        tl.store(out_ptr + 4 * i + 1, w1.to(tl.int64))
        tl.store(out_ptr + 4 * i + 2, w2.to(tl.int64))
        tl.store(out_ptr + 4 * i + 3, w3.to(tl.int64))

    @triton.jit
    def _draws_kernel(seed_ptr, key_ptr, out_ptr, STREAM: tl.constexpr, G: tl.constexpr):
        quad = tl.arange(0, G)[:, None].to(tl.int64)
        lane = tl.arange(0, 4)[None, :].to(tl.int64)
        k0, k1 = split_u64(tl.load(seed_ptr))
        key_lo, key_hi = split_u64(tl.load(key_ptr))
        w0, w1, w2, w3 = philox_quads(quad, key_lo, key_hi, STREAM, k0, k1)
        tl.store(out_ptr + quad * 4 + lane, pick_word(w0, w1, w2, w3, lane).to(tl.int64))


def _i64(x: int) -> int:
    return (x + (1 << 63)) % (1 << 64) - (1 << 63)


def _to(kw, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _check(kw, what="", settings=None):
    """Triton on DEVICE equals the reference on the CPU, every output bit for bit. ``settings``:
    launch settings other than the defaults (the kernel called directly on the op's arguments)."""
    ref = dm.priority_mask(**kw, backend="ref")
    if settings is None:
        got = dm.priority_mask(**_to(kw, DEVICE), backend="triton")
    else:
        call = dm.ops.normalize(**_to(kw, DEVICE))
        got = dm.ops.wrap(tk.priority_mask_triton(*tuple(call.args), settings=settings), call)
    assert_same(ref, got, what)
    return got


# --------------------------------------------------------------------------------------------
# Philox in Triton: known answers and the golden draws of the counter layout
# --------------------------------------------------------------------------------------------
KNOWN = PHILOX_KNOWN_ANSWERS


@pytest.mark.parametrize("ctr,key,expected", KNOWN)
def test_philox_known_answers(ctr, key, expected):
    ctrs = torch.tensor([list(ctr)] * 2, dtype=torch.int64, device=DEVICE).reshape(-1)
    seed = torch.tensor([_i64(key[0] | key[1] << 32)], dtype=torch.int64, device=DEVICE)
    out = torch.zeros(8, dtype=torch.int64, device=DEVICE)
    _philox_kernel[(1,)](ctrs, seed, out, N=2)
    assert out.cpu().tolist() == list(expected) * 2


@pytest.mark.parametrize("stream", [0, 1])
def test_philox_golden_draws(stream):
    draws = json.loads(VECTORS.read_text())["draws"][f"seed=42 seq_key=5 stream={stream}"]
    out = torch.zeros(16, dtype=torch.int64, device=DEVICE)
    seed = torch.tensor([42], dtype=torch.int64, device=DEVICE)
    key = torch.tensor([5], dtype=torch.int64, device=DEVICE)
    _draws_kernel[(1,)](seed, key, out, STREAM=stream, G=4)
    assert out.cpu().tolist()[: len(draws)] == draws


# --------------------------------------------------------------------------------------------
# Bit-equality with the reference
# --------------------------------------------------------------------------------------------
# Tiny tiles and chunks: segments span many chunks (partial counts summed by the second launch,
# exact selection in the first), blocks start mid Philox group and mid chunk.
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(random_cases(max_len=70))
def test_random_cases_small_chunks(kw):
    _check(kw, settings=tk.LaunchSettings(tile=16, chunk=8, num_warps=1))


@pytest.mark.parametrize("st", [(16, 20), (64, 32)], ids=["tile16-chunk20", "tile64-chunk32"])
def test_long_segments_over_many_chunks(st):
    """Exact and Bernoulli over segments of hundreds of chunks, with prompts, blocks and both views."""
    settings = tk.LaunchSettings(tile=st[0], chunk=st[1], num_warps=1)
    for cfg in (dict(weight=3.0, sampling="exact", complementary=True, loss_weight="token"),
                dict(weight=0.25, block_size=70, complementary=True, loss_weight="sigma"),
                dict(weight=math.inf, sampling="exact", block_size=37)):
        _check(packed_case([450, 3, 130], seed=11, **cfg), f"{st} {cfg}", settings=settings)


def test_sigma_extremes_and_full_priority():
    """σ = 0 and σ = 1 segments, all-priority and no-priority segments, in both samplings."""
    lengths = [9, 16, 1, 40, 7]
    for sampling in ("bernoulli", "exact"):
        kw = packed_case(lengths, seed=5, prompt=False, prio_rate=0.5, sampling=sampling, weight=4.0,
                         complementary=True, loss_weight="token")
        kw["sigma"] = torch.tensor([0.0, 1.0, 1.0, 0.5, 0.0])
        kw["priority"][:9] = True
        kw["priority"][9:25] = False
        got = _check(kw, sampling)
        assert not bool(got.masked[:9].any()) and bool(got.masked[9 + 16 - 1])


def test_seed_and_offset_change_the_masks():
    """Guards against a kernel that ignores the rng tensor (the graph-replay contract)."""
    kw = packed_case([300, 200], seed=1, prompt=False)
    a = dm.priority_mask(**_to(kw, DEVICE), backend="triton")
    b = dm.priority_mask(**_to(dict(kw, seed=kw["seed"] + 1), DEVICE), backend="triton")
    c = dm.priority_mask(**_to(dict(kw, seq_offset=1), DEVICE), backend="triton")
    assert not torch.equal(a.masked, b.masked) and not torch.equal(a.masked, c.masked)


# --------------------------------------------------------------------------------------------
# No fused multiply-add, correctly rounded float64 division (docs/design.md §7), read from the PTX
# --------------------------------------------------------------------------------------------
_PTX_CHECK = r"""
import collections, json, sys
from dllm_masks.triton_kernels import priority_mask as tk
out = {}
for kern, exact, K in (("mask", False, 0), ("mask", True, 0), ("stats", True, 0), ("blocks", True, 32)):
    ptx = tk.compile_for_inspection(kern, exact=exact, block_size=K)["ptx"]
    ops = collections.Counter(l.split()[0] for l in ptx.splitlines()
                              if ".f64" in l and l.strip() and not l.strip().startswith("//"))
    out[f"{kern}-exact{int(exact)}-K{K}"] = dict(ops)
json.dump(out, sys.stdout)
"""


def test_ptx_float64_is_fma_free_and_div_rn():
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", _PTX_CHECK], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0 and "GPUTarget" in r.stderr and "ImportError" in r.stderr:
        pytest.skip("this Triton build has no NVIDIA backend")
    assert r.returncode == 0, r.stderr[-3000:]
    kernels = json.loads(r.stdout)
    for name, ops in kernels.items():
        assert not [op for op in ops if op.startswith("fma")], f"{name}: fused multiply-add in float64: {ops}"
        assert not [op for op in ops if op.startswith("div") and op != "div.rn.f64"], f"{name}: {ops}"
        assert ops.get("div.rn.f64", 0) > 0 and ops.get("mul.rn.f64", 0) > 0, f"{name}: {ops}"


# --------------------------------------------------------------------------------------------
# GPU only: the dispatcher, no host sync, CUDA graphs, torch.compile
# --------------------------------------------------------------------------------------------
def _graph_args(lengths, block_size=None):
    kw = packed_case(lengths, seed=21, weight=2.0, complementary=True, loss_weight="sigma", block_size=block_size)
    dev = _to(kw, "cuda")
    dev["seed"] = torch.tensor(5, dtype=torch.int64, device="cuda")
    dev["seq_offset"] = torch.tensor(0, dtype=torch.int64, device="cuda")
    return kw, dev


@gpu_only
def test_cuda_dispatcher_serves_triton():
    assert dm.available_backends()["triton"] is None
    kw = packed_case([100, 33, 0, 4097], seed=2, weight=2.0, complementary=True)
    ref = dm.priority_mask(**kw, backend="ref")
    assert_same(ref, dm.priority_mask(**_to(kw, "cuda")), "dispatcher on CUDA")


@gpu_only
@pytest.mark.parametrize("block_size", [None, 32])
def test_no_host_sync_with_validate_false(block_size):
    kw, dev = _graph_args([2048, 100, 4097], block_size)
    dm.priority_mask(**dev, validate=False)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dm.priority_mask(**dev, validate=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@gpu_only
@pytest.mark.parametrize("block_size", [None, 32])
def test_cuda_graph_replay_draws_fresh_numbers(block_size):
    kw, dev = _graph_args([2048, 100, 0, 4097, 5], block_size)
    fn = lambda: dm.priority_mask(**dev, validate=False)  # noqa: E731
    replay, out = capture_graph(fn)
    seen = []
    for seed, off in ((5, 0), (6, 0), (_i64(2**64 - 3), 1234), (5, 7)):
        dev["seed"].fill_(seed)
        dev["seq_offset"].fill_(off)
        replay()
        torch.cuda.synchronize()
        ref = dm.priority_mask(**dict(kw, seed=seed, seq_offset=off), backend="ref")
        assert_same(ref, out, f"replay seed={seed} offset={off}")
        seen.append(out.masked.clone())
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], seen[3])


@gpu_only
def test_torch_compile_fullgraph_two_shapes():
    torch._dynamo.reset()

    def step(ids, cu, prio, plen, sigma, seed, off):
        out = dm.priority_mask(ids, sigma, cu_seqlens=cu, priority=prio, prompt_lens=plen, weight=2.0,
                               complementary=True, mask_token_id=3, seed=seed, seq_offset=off, loss_weight="sigma",
                               validate=False)
        return out.noisy_ids, out.labels, out.masked, out.loss_weight, out.rates

    compiled = torch.compile(step, fullgraph=True)
    for lengths in ([5, 0, 33], [2048, 64, 4097, 1]):
        kw = _to(packed_case(lengths, 4), "cuda")
        args = (kw["input_ids"], kw["cu_seqlens"], kw["priority"], kw["prompt_lens"], kw["sigma"],
                torch.tensor(5, device="cuda"), torch.tensor(3, device="cuda"))
        eager = step(*args)  # eager first: ops.py logs its first dispatch, which dynamo cannot trace
        for a, b in zip(compiled(*args), eager):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# benchmarks/gpu_check.py: its dry run (interpreter, tiny sizes) walks every phase but the tests
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not INTERPRET, reason="the dry run is the CPU stand-in for the GPU run")
def test_gpu_check_dry_run(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path),
                        "--skip", "pytest,variants", "--sizes", "4096",
                        "--providers", "copy,triton,triton_blocks,dfactory,ref"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rec = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rec["dry_run"] and rec["env"]["ptx_ok"]
    assert all(v["ok"] for v in rec["graph"].values()) and set(rec["graph"]) == {"block_size=None", "block_size=32"}
    assert {row["provider"] for row in rec["results"]} == {"copy", "triton", "triton_blocks", "dfactory", "ref"}
    assert all(v is True for v in rec["equal_to_ref"].values()) and len(rec["equal_to_ref"]) == 2
    assert all(row["median_ms"] > 0 and row["T"] == 4096 for row in rec["results"])
    assert all(t["pass"] is None for t in rec["targets"].values())  # nothing at 1M/16M: not measured
    assert "DRY RUN" in r.stdout and (tmp_path / "mask_kernel.ptx").stat().st_size > 1000
