"""Per-block σ on the Triton path with one program per block (blocks no longer than a chunk):
program s is segment s, launch 1 is skipped, and every output stays bit-identical to the
reference (interpreter on CPU tensors; compiled on a GPU)."""
import math
import os

import pytest
import torch

triton = pytest.importorskip("triton")

import dllm_masks as dm  # noqa: E402
from dllm_masks.testing import AWKWARD, assert_same, packed_case  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
pytestmark = [pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device"),
              pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")]
OPTIONS = [dict(), dict(sampling="exact", complementary=True, loss_weight="token", weight=3.0),
           dict(complementary=True, loss_weight="sigma", weight=math.inf)]


def _check(kw, what=""):
    dev = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    assert_same(dm.priority_mask(**kw, backend="ref"), dm.priority_mask(**dev, backend="triton"), what)


@pytest.mark.parametrize("K", [1, 3, 4, 32, 33, 1021])
def test_awkward_lengths(K):
    # still past one 1021-block; tiny blocks mean one interpreted program per 1-4 tokens, so
    # their sequences stay short enough for the interpreter (the conformance suite has the rest)
    cap = 1100 if K > 4 else 70
    for lengths, why in AWKWARD:
        lengths = [min(n, cap) for n in lengths]
        for opt in OPTIONS:
            _check(packed_case(lengths, seed=K + len(lengths), block_size=K, **opt), f"K={K} {why} {opt}")


def test_blocks_up_to_a_chunk_skip_launch_1(monkeypatch):
    from dllm_masks.triton_kernels import priority_mask as tk

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("launch 1 ran for blocks no longer than a chunk")

    monkeypatch.setattr(tk, "_stats_kernel", NoLaunch())
    _check(packed_case([70, 5, 0, 33], seed=1, block_size=32, sampling="exact", complementary=True))
    with pytest.raises(AssertionError, match="launch 1 ran"):  # per sequence still needs it
        _check(packed_case([70, 5], seed=1))
