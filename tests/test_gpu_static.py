"""benchmarks/gpu_static.py: the Triton kernels compiled for sm_80 / sm_90 without a GPU (a quick
subset here; the full report is in docs/performance.md). Fails on any register spill, and checks
that the memory traffic read from the PTX is what the op must move."""
import json
import sys
from pathlib import Path

import pytest

from dllm_masks.testing import skip_without_nvidia_triton

skip_without_nvidia_triton()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gpu_static  # noqa: E402


def test_quick_report_has_no_spills_and_reads_the_expected_bytes(tmp_path, capsys):
    out = tmp_path / "gpu_static.json"
    rc = gpu_static.main(["--quick", "--json", str(out)])
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rc == 0 and not rep["spills"], text
    assert "ROOFLINE MODEL (not a measurement)" in text
    for k in rep["kernels"]:
        assert k["ptxas_rc"] == 0 and k["registers"] and k["spill_stores"] == 0 and k["spill_loads"] == 0, k
        assert 0 < k["occupancy"] <= 1
    # The write loop of the per-sequence kernel moves exactly the op's essential bytes per token
    # (ids and priority in; noisy ids, mask, labels and weights out, for both views).
    seq = next(m for m in rep["roofline_model"] if m["block_size"] == 0 and m["arch"] == 90)
    want = gpu_static.essential_bytes(seq["complementary"], seq["loss_weight"], seq["ids"])
    assert seq["bytes_per_token"]["write_loop"] == pytest.approx(want)
    assert seq["bytes_per_token"]["count_and_select_loops"] == pytest.approx(1.0)  # priority, read again to count
    # The run kernel (per-block σ, K = 32) loads each token's bytes once: its tile operations move
    # exactly the essential bytes, and its whole traffic stays within 1.3x the per-sequence kernel's.
    blk = next(m for m in rep["roofline_model"] if m["kernel"] == "blocks" and m["arch"] == 90 and m["T"] == "16M")
    assert blk["bytes_per_token"]["write_loop"] == pytest.approx(want)
    assert blk["bytes_per_token"]["count_and_select_loops"] == 0
    ratio = gpu_static.per_block_ratio(rep)
    assert ratio and all(v <= 1.3 for v in ratio.values()), ratio


def test_ttgir_memory_reads_shapes():
    ir = "\n".join([
        "%a = tt.load %p, %m, %o : tensor<8x8x4x!tt.ptr<i64>, #blocked> loc(#loc1)",
        "tt.store %q, %v, %m : tensor<8x8x4x!tt.ptr<i8>, #blocked> loc(#loc2)",
        "%b = tt.load %r, %k, %o : tensor<8x!tt.ptr<i32>, #ttg.slice<{dim = 1, parent = #blocked}>> loc(#loc3)",
        "tt.store %s, %w, %k : tensor<8x!tt.ptr<f64>, #blocked2> loc(#loc4)",
        "%c = tt.load %rng_ptr : !tt.ptr<i64> loc(#loc5)",
        "%d = arith.addi %a, %a : tensor<8x8x4xi64, #blocked>"])
    assert gpu_static.ttgir_memory(ir) == {"tile_ld": 8, "tile_st": 1, "row_ld": 4, "row_st": 8, "scalar_ld": 8,
                                           "scalar_st": 0}


def test_occupancy_model():
    # 8 warps of 118 registers on sm_90: 120 regs/thread rounded -> 3840 per warp, 17 warps -> 2 blocks
    occ = gpu_static.occupancy(90, 118, 8, 4096)
    assert occ["blocks_per_sm"] == 2 and occ["warps_per_sm"] == 16 and occ["limiter"] == "registers"
    assert gpu_static.occupancy(90, 27, 1, 0)["blocks_per_sm"] == 32  # one-warp programs: the block limit
