"""Conformance: every available backend equals the reference (the oracle) bit for bit.

One suite, parametrized over the backends that can serve here: ``cpp`` (the C++ CPU kernel;
required when ``DLLM_MASKS_REQUIRE_CPP=1``), ``triton`` (on the GPU, or on CPU tensors under
``TRITON_INTERPRET=1``) and ``dispatch`` (no ``backend=``: what the dispatcher picks). Each runs
the golden vectors, the awkward shapes under several option sets, and hypothesis-drawn packed and
padded batches. Backend-specific checks (instruction-set builds, threads, fuzzing; PTX, graphs,
launch settings) stay in ``test_priority_mask_cpp.py`` and ``test_priority_mask_triton.py``.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import dllm_masks as dm
from dllm_masks.testing import AWKWARD, assert_same, golden_cases, packed_case, padded_cases, random_cases

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
DEVICE = {"cpp": "cpu", "triton": TRITON_DEVICE, "dispatch": "cuda" if torch.cuda.is_available() else "cpu"}
# hypothesis examples per backend: the Triton interpreter is ~100x slower than the C++ kernel
EXAMPLES = {"cpp": 250, "triton": 60 if not INTERPRET else 40, "dispatch": 40}
PADDED_EXAMPLES = {"cpp": 120, "triton": 20, "dispatch": 20}

pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # interpreter: 1/q at q = 0


@pytest.fixture(params=["cpp", "triton", "dispatch"])
def backend(request):
    name = request.param
    if name == "cpp":
        why = dm.available_backends()["cpp"]
        if why is not None and os.environ.get("DLLM_MASKS_REQUIRE_CPP") != "1":
            pytest.skip(f"cpp not available: {why}")
    if name == "triton":
        if TRITON_DEVICE is None:
            pytest.skip("triton needs TRITON_INTERPRET=1 (CPU) or a CUDA device")
        why = dm.available_backends()["triton"]
        if why is not None:
            pytest.skip(f"triton not available: {why}")
    return name


def _to(kw, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def check(kw, backend, what=""):
    """``backend`` on its device equals the reference on the CPU, every output bit for bit."""
    want = dm.priority_mask(**kw, backend="ref")
    got = dm.priority_mask(**_to(kw, DEVICE[backend]), backend=None if backend == "dispatch" else backend)
    assert_same(want, got, f"{backend}: {what}")
    return got


@pytest.mark.parametrize("name,kw,expected", golden_cases(), ids=[c[0] for c in golden_cases()])
def test_golden_vectors(backend, name, kw, expected):
    got = check(kw, backend, name)
    for field in ("noisy_ids", "masked", "labels", "rates"):
        assert getattr(got, field).cpu().tolist() == expected[field], f"{name}: {field}"


CONFIGS = [  # every value of each option, mixed
    ("uniform", dict()),
    ("w=2, complement, sigma weights", dict(weight=2.0, complementary=True, loss_weight="sigma")),
    ("w=0.5 exact, token weights, int32 ids, no prompt",
     dict(weight=0.5, sampling="exact", loss_weight="token", dtype=torch.int32, prompt=False)),
    ("hard sample: w=inf exact, complement, token weights",
     dict(weight=math.inf, sampling="exact", complementary=True, loss_weight="token")),
    ("w=0.5 exact, blocks of 48, sample_ids", dict(weight=0.5, sampling="exact", block_size=48, sample_ids=True)),
    ("w=0 bernoulli, blocks of 29 (mid Philox group), maskable, one sigma, int32 ids",
     dict(weight=0.0, block_size=29, maskable=True, prompt=False, per_seg_sigma=False, dtype=torch.int32,
          complementary=True, loss_weight="token")),
    ("w=1 exact, blocks of 3 (not a Philox group), complement", dict(sampling="exact", block_size=3,
                                                                     complementary=True, loss_weight="token")),
    ("w=5, blocks of 4 (one Philox group), sigma weights", dict(weight=5.0, block_size=4, loss_weight="sigma")),
    ("w=inf, blocks of 1 (one token per segment), complement",
     dict(weight=math.inf, block_size=1, complementary=True, dtype=torch.int32)),
]


def _config_case(lengths, cfg):
    cfg = dict(cfg)
    sample_ids, maskable = cfg.pop("sample_ids", False), cfg.pop("maskable", False)
    kw = packed_case(lengths, seed=len(lengths) + 1, **cfg)
    g = torch.Generator().manual_seed(7)
    if sample_ids:
        kw["sample_ids"] = torch.randint(-(2**62), 2**62, (len(lengths),), generator=g)
    if maskable:
        kw["maskable"] = torch.rand(sum(lengths), generator=g) < 0.7
    return kw


@pytest.mark.parametrize("lengths,why", AWKWARD, ids=[w for _, w in AWKWARD])
@pytest.mark.parametrize("name,cfg", CONFIGS, ids=[n for n, _ in CONFIGS])
def test_awkward_shapes(backend, lengths, why, name, cfg):
    if backend == "triton" and INTERPRET and cfg.get("block_size", 64) <= 4 and sum(lengths) > 100:
        pytest.skip("the interpreter takes about 0.2 s per step of 64-256 tiny blocks: blocks of 1-4 over "
                    "thousands of tokens take minutes; the short shapes cover them here, "
                    "tests/test_triton_block_programs.py the long ones, and a GPU all shapes")
    check(_config_case(lengths, cfg), backend, f"{why} / {name}")


def test_random_packed_batches(backend):
    @settings(max_examples=EXAMPLES[backend], suppress_health_check=[HealthCheck.too_slow])
    @given(random_cases())
    def run(kw):
        check(kw, backend, "hypothesis packed")

    run()


def test_random_padded_batches(backend):
    """Padded [B, L] batches with padding and prompts through ``maskable`` and a uint8 priority."""
    @settings(max_examples=PADDED_EXAMPLES[backend], suppress_health_check=[HealthCheck.too_slow])
    @given(padded_cases())
    def run(kw):
        check(kw, backend, "hypothesis padded")

    run()
