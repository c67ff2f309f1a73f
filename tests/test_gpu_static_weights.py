"""benchmarks/gpu_static_weights.py: the float32 importance-weights Triton kernel compiled for sm_80
/ sm_90 without a GPU (a quick subset here; the full report is in docs/importance.md). Fails on
any register spill, and checks that the write pass moves what the op must."""
import json
import sys
from pathlib import Path

import pytest

from dllm_masks.testing import skip_without_nvidia_triton

skip_without_nvidia_triton()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gpu_static  # noqa: E402
import gpu_static_weights  # noqa: E402


def test_quick_report_has_no_spills(tmp_path, capsys):
    out = tmp_path / "gpu_static_weights.json"
    rc = gpu_static_weights.main(["--quick", "--json", str(out)])
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rc == 0 and not rep["spills"], text
    assert {k["arch"] for k in rep["kernels"]} == {80, 90}
    assert {(k["exact"], k["block_size"]) for k in rep["kernels"]} >= {(e, K) for e in (False, True) for K in (0, 32)}
    for k in rep["kernels"]:
        assert k["ptxas_rc"] == 0 and k["registers"] and k["spill_stores"] == 0 and k["spill_loads"] == 0, k
    # The write pass moves exactly the op's essential bytes per token: ids and weights in, both
    # views out (the boolean op's figure, with 4 B of float32 weight for its 1 B of priority).
    want = gpu_static.essential_bytes(True, True, "int64") + 3
    for row in rep["model"]:
        assert row["bytes_per_token"]["write"] == pytest.approx(want), row


def test_quick_specializations_cover_both_archs_and_modes():
    specs = gpu_static_weights.specializations(quick=True)
    assert specs[:4] == [dict(gpu_static_weights.DEFAULTS, arch=90, exact=e, block_size=K)
                         for K in (0, 32) for e in (False, True)]
    full = gpu_static_weights.specializations(quick=False)
    assert len({json.dumps(s, sort_keys=True) for s in full}) == len(full)
    assert {s["block_size"] for s in full} == {0, *gpu_static_weights.BLOCK_CLASSES}
    assert {(s["arch"], s["exact"], s["maskable"]) for s in full} == {
        (a, e, m) for a in (80, 90) for e in (False, True) for m in (False, True)}
