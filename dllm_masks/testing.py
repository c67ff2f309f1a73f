"""Shared test data and comparisons for every backend's tests and for the benchmarks.

Every kernel is compared to the reference bit-for-bit (``torch.equal``) on the same cases:
``AWKWARD`` packed batches, the golden vectors (``tests/data/priority_mask_vectors.json`` of a
source checkout), hypothesis-drawn inputs (:func:`random_cases`, needs ``hypothesis``) and the
Philox known answers (``PHILOX_KNOWN_ANSWERS``). :func:`capture_graph` captures a CUDA graph.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import dllm_masks as dm

try:  # a dev dependency: random_cases exists only where hypothesis is installed
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    st = None

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "data" / "priority_mask_vectors.json"

PHILOX_KNOWN_ANSWERS = [  # Random123's known answers for Philox4x32-10: (counter, key, output)
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# Lengths of the sequences of one packed batch, and why each is there.
AWKWARD = [
    ([], "empty batch (B = 0)"),
    ([0], "one empty sequence"),
    ([0, 0, 3], "empty sequences before a short one"),
    ([1], "a single token"),
    ([3, 4, 5], "around one Philox group of four"),
    ([31, 33], "around a power of two"),
    ([4097], "one long sequence, past 4096"),
    ([5, 0, 1, 31, 33, 4097, 3], "everything mixed"),
]


# Keyword sets that change the op's output layout and modes, for tests that run every backend.
OPTION_SETS = [
    dict(),
    dict(complementary=True, loss_weight="sigma", weight=2.0),
    dict(block_size=32, complementary=True, loss_weight="token", weight=3.0),
    dict(block_size=3, sampling="exact", weight=0.5),
    dict(sampling="exact", complementary=True, loss_weight="sigma", weight=float("inf")),
]


def packed_case(lengths, seed=0, *, prompt=True, prio_rate=0.25, per_seg_sigma=True, block_size=None, dtype=torch.int64,
                device="cpu", **kw):
    """Keyword arguments of ``dm.priority_mask`` for a packed batch of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), sum(lengths)
    cu = torch.zeros(B + 1, dtype=torch.int32)
    if B:
        cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    ids = torch.randint(5, 50000, (T,), generator=g, dtype=torch.int64).to(dtype)
    S = dm.num_segments(cu, block_size)
    sigma = torch.rand(S if per_seg_sigma else 1, generator=g)
    args = dict(input_ids=ids, sigma=sigma, cu_seqlens=cu, priority=torch.rand(T, generator=g) < prio_rate,
                mask_token_id=3, seed=seed * 7919 + 1, block_size=block_size)
    if prompt and B:
        lens = torch.tensor(lengths)
        args["prompt_lens"] = (torch.rand(B, generator=g) * (lens + 1).float()).long().clamp(max=lens)
    args.update(kw)
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}


def backends_here() -> list:
    """The backends a CPU test can compare: "ref", "cpp" where the extension is built, and
    "triton" where it loads under ``TRITON_INTERPRET=1`` (set before import)."""
    import os

    from . import ops
    found = ["ref"]
    if ops._cpp is not None:
        found.append("cpp")
    if os.environ.get("TRITON_INTERPRET") == "1" and ops._load_triton() is not None:
        found.append("triton")
    return found


def skip_without_nvidia_triton() -> None:
    """Skip the calling test module unless Triton imports with its NVIDIA backend: what compiling
    the kernels for sm_80 / sm_90 without a GPU needs (``benchmarks/gpu_static*.py``)."""
    import pytest

    pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:  # pragma: no cover
        pytest.skip("this Triton build has no NVIDIA backend", allow_module_level=True)


def with_threads(n: int, fn):
    """``fn()`` with torch's intra-op thread count set to ``n`` (restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def assert_same(a: dm.MaskedBatch, b: dm.MaskedBatch, what=""):
    """Bit-for-bit equality of two results (dtype and shape included)."""
    for name in dm.MaskedBatch._fields:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, f"{what}: {name} is None in only one result"
            continue
        x, y = x.cpu(), y.cpu()
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: {name} {x.dtype}{tuple(x.shape)} != {y.dtype}{tuple(y.shape)}"
        if not torch.equal(x, y):
            diff = (x != y).nonzero()[:5].flatten().tolist()
            raise AssertionError(f"{what}: {name} differs (first positions {diff})")


def golden_cases():
    """(name, kwargs, expected) of the golden vectors computed from docs/design.md by an independent implementation."""
    data = json.loads(VECTORS.read_text())
    out = []
    for case in data["cases"]:
        inp = dict(case["inputs"])
        kw = {"input_ids": torch.tensor(inp.pop("input_ids"))}
        for k, v in inp.items():
            if k == "weight":
                v = math.inf if v == "inf" else float(v)
            elif k == "cu_seqlens":
                v = torch.tensor(v, dtype=torch.int32)
            elif k == "sigma":
                v = torch.tensor(v, dtype=torch.float32)
            elif k in ("priority", "maskable", "sample_ids"):
                v = torch.tensor(v)
            kw[k] = v
        out.append((case["name"], kw, case["expected"]))
    return out


def _random_cases(draw, max_len=40, max_seqs=5):
    """Small packed batches with every option drawn: for bit-equality between backends."""
    lengths = draw(st.lists(st.integers(0, max_len), min_size=0, max_size=max_seqs))
    block_size = draw(st.sampled_from([None, None, 1, 3, 4, 32]))
    weight = draw(st.sampled_from([1.0, 2.0, 0.5, 0.0, math.inf, 5.0, 1e-3, 1e3]))
    kw = packed_case(
        lengths,
        seed=draw(st.integers(0, 2**16)),
        prompt=draw(st.booleans()),
        prio_rate=draw(st.sampled_from([0.0, 0.25, 0.9, 1.0])),
        per_seg_sigma=draw(st.booleans()),
        block_size=block_size,
        dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        weight=weight,
        sampling=draw(st.sampled_from(["bernoulli", "exact"])),
        complementary=draw(st.booleans()),
        loss_weight=draw(st.sampled_from([None, "sigma", "token"])),
    )
    kw["seed"] = draw(st.integers(-(2**63), 2**64 - 1))
    if draw(st.booleans()):
        kw["seq_offset"] = draw(st.integers(-(2**40), 2**40))
    if draw(st.booleans()) and lengths:
        kw["sample_ids"] = torch.tensor(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=len(lengths),
                                                      max_size=len(lengths))), dtype=torch.int64)
    if draw(st.booleans()):
        kw["sigma"] = kw["sigma"].clone()
        kw["sigma"][: draw(st.integers(0, kw["sigma"].numel()))] = draw(st.sampled_from([0.0, 1.0]))
    return kw


def _padded_cases(draw):
    """Padded [B, L] batches whose padding and prompts come through a ``maskable`` tensor, with a
    uint8 priority holding values other than 0 / 1 (nonzero means priority)."""
    B, L = draw(st.integers(0, 4)), draw(st.integers(0, 70))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    block = draw(st.sampled_from([None, 2, 7]))
    return dict(
        input_ids=torch.randint(5, 1000, (B, L), generator=g, dtype=draw(st.sampled_from([torch.int32, torch.int64]))),
        sigma=torch.rand(B, generator=g) if block is None and draw(st.booleans()) else draw(st.floats(0, 1)),
        maskable=torch.rand(B, L, generator=g) < draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        priority=torch.tensor([0, 1, 2, 255], dtype=torch.uint8)[torch.randint(0, 4, (B, L), generator=g)],
        weight=draw(st.sampled_from([1.0, 2.0, 0.25, 0.0, math.inf])),
        sampling=draw(st.sampled_from(["bernoulli", "exact"])),
        complementary=draw(st.booleans()),
        block_size=block,
        loss_weight=draw(st.sampled_from([None, "sigma", "token"])),
        mask_token_id=-1, seed=draw(st.integers(0, 2**64 - 1)), seq_offset=draw(st.integers(-(2**62), 2**62)),
    )


# Float32 importance weights (docs/importance.md): values that stress the solve (zeros, 1e30,
# denormals down to the smallest, the largest finite float) and the kinds of weight vectors.
IMPORTANCE_SPECIAL = torch.tensor([0.0, 1.0, 2.0, 1e30, 1e-30, 1e-42, 1.4e-45, 3.0, 0.5, 7.25, 1e10, 3.4e38],
                                  dtype=torch.float32)
IMPORTANCE_KINDS = ("graded", "special", "ties", "two", "one")


def importance_weights(T: int, g: torch.Generator, kind: str) -> torch.Tensor:
    """float32 [T] weights of a kind: "graded" (uniform in [0, 4) with 10 % zeros and 5 % 1e30),
    "special" (drawn from IMPORTANCE_SPECIAL), "ties" (four values, 0 included), "two" (1 and 5:
    the boolean op's two levels), "one" (all 2.5)."""
    if kind == "graded":
        w = torch.rand(T, generator=g) * 4
        w = torch.where(torch.rand(T, generator=g) < 0.1, torch.zeros(()), w)
        return torch.where(torch.rand(T, generator=g) < 0.05, torch.tensor(1e30), w).to(torch.float32)
    if kind == "special":
        return IMPORTANCE_SPECIAL[torch.randint(0, IMPORTANCE_SPECIAL.numel(), (T,), generator=g)]
    if kind == "ties":
        return torch.randint(0, 4, (T,), generator=g).to(torch.float32) * 0.75
    if kind == "two":
        return torch.where(torch.rand(T, generator=g) < 0.3, torch.tensor(5.0), torch.tensor(1.0)).to(torch.float32)
    return torch.full((T,), 2.5, dtype=torch.float32)


random_cases = st.composite(_random_cases) if st is not None else None
padded_cases = st.composite(_padded_cases) if st is not None else None


def triton_device():
    """Where the Triton kernels' tests run: "cpu" under ``TRITON_INTERPRET=1`` (Triton's
    interpreter), "cuda" on a machine with CUDA and the interpreter unset, else None."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def to_device(kw: dict, device) -> dict:
    """The keyword arguments ``kw`` with every tensor moved to ``device``."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def assert_no_host_sync(fn):
    """Call ``fn`` once to compile, then again under ``torch.cuda.set_sync_debug_mode("error")``:
    raises if the second call synchronizes with the host."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def capture_graph(fn):
    """(replay, outputs) of ``fn`` captured in a CUDA graph after two warm-up calls on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out
