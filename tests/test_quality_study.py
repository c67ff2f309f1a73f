"""The powered study of benchmarks/quality: its statistics against hand-computed values, and the
harness end to end on a minuscule size (pairing checked inside the loop, resume, report)."""
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from quality import study as S  # noqa: E402
from quality import study_report as SR  # noqa: E402
from quality.study_stats import (CONTRADICTED, NOT_RESOLVED, SUPPORTED, TRADE_OFF, Paired, mde,
                                 paired_ci, t_cdf, t_quantile, verdict)

torch.set_num_threads(1)


# --- statistics -------------------------------------------------------------------------------

@pytest.mark.parametrize("p, df, want", [
    (0.975, 1, 12.7062), (0.975, 3, 3.1824), (0.975, 7, 2.3646), (0.975, 9, 2.2622), (0.975, 30, 2.0423),
    (0.8, 7, 0.8960), (0.8, 9, 0.8834), (0.95, 5, 2.0150), (0.975, 1e7, 1.9600), (0.5, 4, 0.0)])
def test_t_quantiles_match_the_tables(p, df, want):
    assert t_quantile(p, df) == pytest.approx(want, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-want, abs=1e-4)


def test_t_cdf_known_values_and_bad_input():
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/π
    assert t_cdf(2.0, 2) == pytest.approx(0.5 + 1 / math.sqrt(6), abs=1e-12)  # df 2: 1/2 + t/(2√(2+t²))
    with pytest.raises(ValueError, match="^p:"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="^df:"):
        t_cdf(1.0, 0)


def test_paired_interval_by_hand():
    # differences 1, 2, 3, 4: mean 2.5, sd √(5/3) = 1.290994, se 0.645497, t(0.975, 3) = 3.182446
    p = paired_ci({0: 2.0, 1: 3.0, 2: 5.0, 3: 4.0, 9: 1.0}, {0: 1.0, 1: 1.0, 2: 2.0, 3: 0.0, 4: 7.0})
    assert p.n == 4 and p.diffs == (1.0, 2.0, 3.0, 4.0)  # seeds 4 and 9 are not in both
    assert p.mean == pytest.approx(2.5)
    assert p.sd == pytest.approx(math.sqrt(5 / 3))
    assert p.se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert p.lo == pytest.approx(2.5 - 3.182446 * 0.645497, abs=1e-5)
    assert p.hi == pytest.approx(2.5 + 3.182446 * 0.645497, abs=1e-5)
    assert p.excludes_zero()
    # MDE = (t(0.975, 3) + t(0.8, 3)) · sd / √4 = (3.182446 + 0.978472) · 0.645497
    assert p.mde == pytest.approx((3.182446 + 0.978472) * 0.645497, abs=1e-5)
    one = paired_ci({0: 1.0}, {0: 0.5})
    assert one.n == 1 and one.mean == 0.5 and one.lo is None and not one.excludes_zero()
    assert paired_ci({0: None}, {0: 1.0}).n == 0


def test_mde_by_hand():
    assert mde(1.0, 8) == pytest.approx((2.364624 + 0.896030) / math.sqrt(8), abs=1e-5)
    assert mde(0.2, 10) == pytest.approx((2.262157 + 0.883304) * 0.2 / math.sqrt(10), abs=1e-5)
    with pytest.raises(ValueError, match="^n:"):
        mde(1.0, 1)


def _p(lo, hi):
    return Paired(8, (lo + hi) / 2, 1.0, 0.1, lo, hi, 0.3, ())


def test_verdict_logic():
    lower = [-1, -1]  # two cross-entropies: negative favours a
    assert verdict([_p(-0.3, -0.1), _p(-0.1, 0.1)], lower) == SUPPORTED
    assert verdict([_p(0.1, 0.3), _p(-0.1, 0.1)], lower) == CONTRADICTED
    assert verdict([_p(-0.3, -0.1), _p(0.05, 0.2)], lower) == TRADE_OFF
    assert verdict([_p(-0.3, 0.01), _p(-0.01, 0.1)], lower) == NOT_RESOLVED
    assert verdict([_p(0.1, 0.3)], [+1]) == SUPPORTED  # accuracy: positive favours a
    with pytest.raises(ValueError, match="^better:"):
        verdict([_p(0, 1)], [0])
    with pytest.raises(ValueError, match="^better:"):
        verdict([_p(0, 1)], [1, 1])


def test_seeds_needed_by_hand():
    # sd 1, mean 1: the smallest n with (t(.975, n-1) + t(.8, n-1)) / √n <= 1 is 10 (n = 9 gives 1.0134)
    p = Paired(3, 1.0, 1.0, None, None, None, None, ())
    assert SR.seeds_needed(p) == 10
    assert SR.seeds_needed(Paired(3, 0.0, 1.0, None, None, None, None, ())) is None


def test_collapse_verdict():
    seeds = range(4)
    data = {"rules10": {"ce_dense": {s: 1.0 for s in seeds},
                        "stat:v0:dense_both_neighbours": {s: 0.30 + 0.01 * s for s in seeds},
                        "stat:v0:full_blocks": {s: 0.01 for s in seeds}},
            "hard": {"ce_dense": {s: 1.1 + 0.01 * s for s in seeds},
                     "stat:v0:dense_both_neighbours": {s: 0.50 + 0.02 * s for s in seeds},
                     "stat:v0:full_blocks": {s: 0.02 for s in seeds}}}
    assert SR.collapse(data)["verdict"] == SUPPORTED
    data["hard"]["ce_dense"] = {s: 0.9 - 0.01 * s for s in seeds}
    assert SR.collapse(data)["verdict"] == CONTRADICTED
    data["hard"]["ce_dense"] = {s: 1.0 + (0.1 if s % 2 else -0.1) for s in seeds}
    assert SR.collapse(data)["verdict"] == NOT_RESOLVED
    # worse on dense tokens, but with fewer dense tokens masked beside their neighbours: the harm
    # without the collapse
    data["hard"]["ce_dense"] = {s: 1.1 + 0.01 * s for s in seeds}
    data["hard"]["stat:v0:dense_both_neighbours"] = {s: 0.20 + 0.02 * s for s in seeds}
    assert SR.collapse(data)["verdict"] == CONTRADICTED


# --- the harness, end to end ------------------------------------------------------------------

def test_arms_cover_the_issue():
    assert {"uniform", "rules10", "rules10_rho", "loss", "confidence", "hard", "rules10_nocomp"} <= set(S.ARMS)
    assert all(a.complementary for n, a in S.ARMS.items() if n != "rules10_nocomp")
    nc = S.ARMS["rules10_nocomp"]
    assert not nc.complementary and nc.batch_mult == 2 and nc.weight == 2.0 and nc.annotate == 0.1
    assert S.ARMS["hard"].mask_overrides()["sampling"] == "exact"
    assert len(S.SIZES["study"].seeds) >= 8
    for name in ("loss", "confidence"):  # mask.priority is in this library
        assert S.arm_available(S.ARMS[name]) is None
        assert S.ARMS[name].mask_overrides()["priority"] == name
    assert S.arm_available(S.Arm("x", "x", priority="telepathy")).startswith("mask.priority='telepathy': ")


def test_study_micro_end_to_end(tmp_path, capsys):
    out = tmp_path / "study.json"
    argv = ["--size", "micro", "--out", str(out), "--arms", "uniform,rules10_rho,rules10_nocomp", "--jobs", "1",
            "--no-progress"]
    assert S.main(argv) == 0
    doc = json.loads(out.read_text())
    assert {(c["arm"], c["seed"]) for c in doc["cells"]} == {(a, s) for a in ("uniform", "rules10_rho", "rules10_nocomp")
                                                             for s in (0, 1)}
    # ρ calibrated to the paper's, measured on the sequences the loop trains on
    cal = doc["calibration"]
    for dom, want in S.PAPER_RHO.items():
        assert abs(cal["realized"]["budget"][dom] - want) < 0.03, cal["realized"]
        assert cal["realized"]["all_spans"][dom] > want + 0.1
    # pairing, checked inside the loop: same init, batches and σ for the arms of a seed; not across seeds
    fp = {(c["arm"], c["seed"]): c["mask_stats"] for c in doc["cells"]}
    for s in (0, 1):
        assert fp[("uniform", s)]["init"] == fp[("rules10_rho", s)]["init"] == fp[("rules10_nocomp", s)]["init"]
        assert fp[("uniform", s)]["batches"] == fp[("rules10_rho", s)]["batches"]
        assert fp[("uniform", s)]["batches"] != fp[("rules10_nocomp", s)]["batches"]  # twice the problems per step
        assert fp[("uniform", s)]["calls"] == 3 and fp[("uniform", s)]["batches_measured"] == 3
    assert fp[("uniform", 0)]["init"] != fp[("uniform", 1)]["init"]
    assert fp[("uniform", 0)]["batches"] != fp[("uniform", 1)]["batches"]
    assert all(v["same_init"] and v["same_batches"] for v in SR.pairing_check(doc["cells"], doc["arms"]).values())
    # the masks differ: a complement has two views, no complement one; uniform masks dense and other alike-ish
    st = fp[("rules10_rho", 0)]
    assert "v1" in st and "v1" not in fp[("rules10_nocomp", 0)]
    for v in ("v0", "v1"):
        assert 1.0 <= st[v]["run_mean"] and 0.0 <= st[v]["dense_both_neighbours"] <= 1.0
    for c in doc["cells"]:
        assert c["ce"]["dense"] > 0 and c["ce"]["other"] > 0 and c["train"]["steps"] == 3
    assert fp and doc["skipped"] == {}
    # resume: nothing left to run
    capsys.readouterr()
    assert S.main(argv) == 0
    assert "0 to run" in capsys.readouterr().out
    # the report
    md, png = tmp_path / "STUDY.md", tmp_path / "study.png"
    assert SR.main([str(out), "--md", str(md), "--png", str(png)]) == 0
    text = md.read_text()
    assert png.stat().st_size > 10_000
    assert "2 of 2 seeds started every arm from identical parameters" in text
    assert "| `rules10_rho` | 2 |" in text
    assert "The complementary view helps" in text and "not run" in text  # the rules10 arm was not run


def test_a_probe_mismatch_is_caught(tmp_path):
    """The report flags a seed whose arms were not fed the same batches."""
    cells = [{"arm": "uniform", "seed": 0, "mask_stats": {"init": "a", "batches": "b"}},
             {"arm": "rules10", "seed": 0, "mask_stats": {"init": "a", "batches": "c"}},
             {"arm": "rules10_nocomp", "seed": 0, "mask_stats": {"init": "a", "batches": "d"}}]
    arms = {"rules10_nocomp": {"batch_mult": 2}}
    assert SR.pairing_check(cells, arms) == {0: {"arms": 3, "same_init": True, "same_batches": False}}
    cells[1]["mask_stats"]["batches"] = "b"
    assert SR.pairing_check(cells, arms)[0]["same_batches"]
