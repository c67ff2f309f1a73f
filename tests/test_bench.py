"""The benchmark's baselines and plumbing stay runnable (timings themselves live in benchmarks/)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_priority_mask as bench  # noqa: E402
import common  # noqa: E402


def test_dfactory_baseline_masks_at_rate_t_outside_prompts():
    kw = common.workload(64 * 2048)
    g = torch.Generator().manual_seed(0)
    noisy, labels, masked = common.dfactory_mask(kw["input_ids"], kw["sigma"], kw["prompt_lens"], 7, generator=g)
    B = kw["sigma"].numel()
    m = masked.view(B, -1)
    pos = torch.arange(m.shape[1])
    assert not bool(m[pos[None, :] < kw["prompt_lens"][:, None]].any())
    rate = m.sum(1) / (m.shape[1] - kw["prompt_lens"])
    assert torch.allclose(rate.float(), kw["sigma"], atol=0.05)
    ids = kw["input_ids"].view(B, -1)
    assert torch.equal(noisy[m], torch.full_like(noisy[m], 7)) and torch.equal(labels[m], ids[m])
    assert bool((labels[~m] == -100).all())


def test_essential_bytes():
    kw = common.workload(4096)
    b = common.essential_bytes(kw)
    assert b["write"] == 2 * 4096 * (8 + 1 + 8)
    assert b["read"] >= 4096 * 9


def test_bench_runs_small(tmp_path, capsys):
    out = tmp_path / "r.json"
    png = tmp_path / "r.png"
    assert bench.main(["--sizes", "4K", "--providers", "ref,dfactory,copy", "--budget", "0.05", "--min-reps", "2",
                       "--out", str(out), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "ref" in text and "dfactory" in text and "copy" in text
    import json

    rec = json.loads(out.read_text())[-1]
    assert {r["provider"] for r in rec["results"]} == {"ref", "dfactory", "copy"}
    assert all(r["median_ms"] > 0 for r in rec["results"])
    assert png.stat().st_size > 1000


def test_cpp_call_cost_runs_small(capsys):
    from dllm_masks import ops

    if ops._cpp is None:
        pytest.skip("C++ extension not built")
    import cpp_call_cost

    assert cpp_call_cost.main(["--sizes", "2048", "--calls", "20", "--repeats", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "µs/call" in ln]
    assert len(lines) == 2 and "per sequence" in lines[0] and "block of 32" in lines[1]
