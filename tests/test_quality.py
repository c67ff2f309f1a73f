"""The ablation harness of benchmarks/quality: the task, the runner on a 1-cell micro grid, the report."""
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from quality import cell as C  # noqa: E402
from quality import report as R  # noqa: E402
from quality import run_grid as G  # noqa: E402
from dllm_masks.data import tiny_task as T  # noqa: E402

from dllm_masks.extract import code_spans, math_spans  # noqa: E402
from dllm_masks.train.config import TrainConfig  # noqa: E402
from dllm_masks.eval.scoring import evaluate_code, math_accuracy  # noqa: E402

torch.set_num_threads(1)


# --- the task ---------------------------------------------------------------------------------

def test_generator_is_deterministic_and_prefix_stable():
    a, b = T.generate(120, seed=3), T.generate(120, seed=3)
    assert a == b
    assert T.generate(150, seed=3)[:120] == a  # problem i depends on (seed, i) only
    assert [p.answer for p in T.generate(120, seed=4)] != [p.answer for p in a]
    assert {p.domain for p in a} == {"math", "code"}
    assert {p.template for p in a} == set(T.MATH_TEMPLATES) | set(T.CODE_TEMPLATES)


def _covered(spans, start, end):
    return any(a <= start and end <= b for a, b in spans)


def test_spans_cover_the_dense_parts_and_match_the_rule_extractors():
    probs = T.generate(300, seed=0)
    for p in probs:
        spans = list(p.spans)
        assert spans == sorted(spans) and all(a < b for a, b in spans)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # disjoint
        assert 0 < sum(b - a for a, b in spans) < len(p.answer)  # some tokens dense, some not
        rules = math_spans(p.answer) if p.domain == "math" else code_spans(p.answer, prefix=p.prompt)
        assert [tuple(s) for s in rules] == spans, (p.id, T.problem_spans(p))
        if p.domain == "math":
            calcs = list(re.finditer(r"<<([^=>]+)=(-?\d+)>>(-?\d+)", p.answer))
            assert len(calcs) == 2
            for m in calcs:
                assert m.group(2) == m.group(3)
                assert _covered(spans, m.start(), m.end())
            fin = re.search(r"#### (\d+)$", p.answer)
            assert int(fin.group(1)) == p.final and _covered(spans, fin.start(1), fin.end(1))
        else:
            for m in re.finditer(r"^ *(if|for|return) (.+?):?$", p.answer, re.M):
                part = m.group(2)
                if m.group(1) == "for":
                    part = part.split(" in ", 1)[1]
                    start = m.start(2) + m.group(2).index(" in ") + 4
                else:
                    start = m.start(2)
                assert _covered(spans, start, start + len(part)), (p.id, part)


def test_references_score_right_and_wrong_answers_score_wrong():
    probs = T.generate(40, seed=1)
    maths = [p for p in probs if p.domain == "math"][:6]
    assert math_accuracy([p.answer for p in maths], [p.answer for p in maths]) == 1.0
    assert math_accuracy([p.answer.rsplit("#### ", 1)[0] + f"#### {p.final + 1}" for p in maths],
                         [p.answer for p in maths]) == 0.0
    codes = [p for p in probs if p.domain == "code"][:4]
    problems = [{"prompt": p.prompt, "test": p.test, "entry_point": p.entry_point} for p in codes]
    good = evaluate_code(problems, [p.answer for p in codes], workers=2, timeout=10.0)
    assert good.pass_at_1 == 1.0, good.status_counts
    # the tests catch an off-by-one in the first returned value or accumulating update
    wrong = [re.sub(r"^( +(?:return x|s \+=|c \+=) .*)$", r"\1 + 1", p.answer, count=1, flags=re.M) for p in codes]
    assert all(w != p.answer for w, p in zip(wrong, codes))
    bad = evaluate_code(problems, wrong, workers=2, timeout=10.0)
    assert bad.pass_at_1 == 0.0, bad.status_counts


def test_held_out_prompts_are_unseen_and_both_domains_are_held_out():
    train, held = T.make_split(400, 60, seed=0)
    assert len(held) == 60 and not {p.prompt for p in train} & {p.prompt for p in held}
    assert {p.domain for p in held} == {"math", "code"}
    assert T.make_split(400, 60, seed=0) == (train, held)


def test_annotated_fraction_is_seeded_and_about_right():
    probs = T.generate(1000, seed=0)
    recs = C.train_records(probs, 0.1, seed=5)
    n = sum(r["spans"] is not None for r in recs)
    assert 60 <= n <= 140  # ~10% (binomial sd ≈ 9.5)
    assert C.train_records(probs, 0.1, seed=5) == recs
    assert [r["spans"] is None for r in C.train_records(probs, 0.1, seed=6)] != [r["spans"] is None for r in recs]
    assert all(r["spans"] is not None for r in C.train_records(probs, 1.0, seed=5))


# --- the grid and the runner ------------------------------------------------------------------

def test_grid_runs_w1_once_per_complement_and_seed():
    cells = G.grid_cells((0, 1, 2))
    assert len(cells) == 3 * 2 * (1 + 4 * 2)
    assert len({c["key"] for c in cells}) == len(cells)
    w1 = [c for c in cells if c["weight"] == 1.0]
    assert len(w1) == 6 and all(c["fraction"] == G.ANY for c in w1)
    assert [c["seed"] for c in cells] == sorted(c["seed"] for c in cells)  # seed-major


@pytest.mark.parametrize("size", sorted(C.SIZES))
def test_every_size_makes_a_valid_train_config(size, tmp_path):
    s = C.SIZES[size]
    train, held = T.make_split(50, 10, seed=0, cfg=s.task)
    for w in (math.inf, 2.0):
        d = C.train_config(s, weight=w, complementary=False, fraction=0.1, seed=0, train_problems=train,
                           eval_problems=held, run_dir=str(tmp_path))
        cfg = TrainConfig.from_dict(d)
        assert cfg.mask.weight == w and cfg.mask.complementary is False
        assert cfg.mask.sampling == ("exact" if math.isinf(w) else "bernoulli")
        assert cfg.data.max_length % cfg.mask.block_size == 0


def _strict(path):
    def refuse(c):
        raise AssertionError(f"non-standard JSON constant {c}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_runner_micro_grid_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "grid.json"
    argv = ["--size", "micro", "--weights", "inf", "--fractions", "1", "--complement", "on", "--jobs", "1",
            "--out", str(out), "--no-progress", "--work-dir", str(tmp_path / "work")]
    assert G.main(argv) == 0
    doc = _strict(out)
    assert doc["size"] == "micro" and len(doc["cells"]) == 1 and len(doc["runs"]) == 1
    c = doc["cells"][0]
    assert c["key"] == "w=inf|comp=1|frac=1|seed=0"
    assert c["config"]["mask"]["weight"] == "inf" and c["config"]["mask"]["sampling"] == "exact"
    assert c["config"]["mask"]["complementary"] is True
    assert c["train"]["steps"] == C.SIZES["micro"].steps and c["train"]["annotated"] == C.SIZES["micro"].n_train
    acc = c["accuracy"]
    assert acc["math_n"] + acc["code_n"] == C.SIZES["micro"].n_eval
    parts = [acc[k] for k in ("math", "code") if acc[k] is not None]
    assert parts and acc["avg"] == sum(parts) / len(parts)  # the paper's AVG: mean over the domains
    for sigma in ("0.25", "0.5", "0.75"):
        v = c["ce"]["by_sigma"][sigma]
        assert v["n_dense"] > 0 and v["n_other"] > 0
        # three steps from a random init: near log(vocab) on both kinds of tokens, and "all" is
        # their token-weighted mean
        for k in ("dense", "other"):
            assert abs(v[k] - math.log(c["train"]["vocab"])) < 1.0, (sigma, k, v[k])
        n = v["n_dense"] + v["n_other"]
        assert v["all"] == pytest.approx((v["dense"] * v["n_dense"] + v["other"] * v["n_other"]) / n, rel=1e-9)
    # three steps from a random init: CE near log(vocab) (the metric is in nats, per token)
    assert abs(c["ce"]["all"] - math.log(c["train"]["vocab"])) < 1.0
    assert not list((tmp_path / "work").iterdir())  # run dirs removed
    # resumable: nothing left to run, the file is unchanged
    before = out.read_text()
    assert G.main(argv) == 0
    assert "0 to run" in capsys.readouterr().out and out.read_text() == before
    # a file of another size config is refused
    doc["size_config"]["steps"] += 1
    out.write_text(json.dumps(doc))
    assert G.main(argv) == 2


# --- the report -------------------------------------------------------------------------------

def _cell(w, comp, frac, seed, avg, ce_dense):
    return {"key": f"w={w}|comp={int(comp)}|frac={frac}|seed={seed}", "weight": w, "complementary": comp,
            "fraction": frac, "seed": seed,
            "accuracy": {"math": avg, "code": avg, "avg": avg},
            "ce": {"dense": ce_dense, "other": 0.1}}


def test_report_turns_a_fixture_into_a_table_and_a_plot(tmp_path):
    cells = []
    for s, (base, up) in enumerate([(0.30, 0.36), (0.32, 0.37), (0.28, 0.35)]):
        cells.append(_cell("1", True, "any", s, base, 1.0))
        cells.append(_cell("2", True, 0.1, s, up, 0.9 + 0.01 * s))
        cells.append(_cell("inf", False, 1.0, s, base, 1.2))
    src = tmp_path / "grid.json"
    src.write_text(json.dumps({"format": 1, "size": "fixture", "size_config": {"steps": 5}, "runs": [],
                               "metrics": {"sigma_grid": [0.5]}, "cells": cells}))
    md, png = tmp_path / "R.md", tmp_path / "g.png"
    assert R.main([str(src), "--md", str(md), "--png", str(png)]) == 0
    text = md.read_text()
    # w=2 avg: 36, 37, 35 -> 36.0 ± 0.577; paired Δ vs w=1: 6, 5, 7 -> 6.0 ± 0.577
    row = next(line for line in text.splitlines() if line.startswith("| on | 10% | 2 |"))
    assert "| 3 | 36.0 ± 0.6 |" in row and "| 6.0 ± 0.6 |" in row and "| 59.19 | +3.87 |" in row
    assert any(line.startswith("| on | 10% | 1 |") for line in text.splitlines())  # w=1 in both fraction rows
    assert any(line.startswith("| on | 100% | 1 |") for line in text.splitlines())
    assert "| off | 100% | ∞ |" in text
    claim = next(line for line in text.splitlines() if "10% annotated: w = 2 beats w = 1" in line)
    assert "+6.00 ± 0.58 (t = 10.4, n = 3): agrees" in claim and "+0.09 ± 0.01 (t = 15.6, n = 3): agrees" in claim
    assert "not run" in next(line for line in text.splitlines() if "w = 0.5 beats w = 2" in line)
    # the resolved differences: w=2 vs w=1 on accuracy and CE dense; nothing where the values are equal
    tail = text.split("## Every difference a paired t-test resolves", 1)[1]
    assert "All 3 paired comparisons" in tail and "2 pass" in tail
    assert "| w = 2, with complement, 10% annotated | w = 1, with complement, any fraction | avg % | +6.0 ± 0.6 |" in tail
    assert "CE dense (nats) | -0.090 ± 0.006 | 15.6 (3) | better |" in tail
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_verdicts_need_a_paired_t_test_not_two_standard_errors():
    assert R.t_critical(2) == pytest.approx(4.303) and R.t_critical(100) == pytest.approx(1.96)
    assert R._verdict(3.0, 1.0, 3, +1).endswith("no difference detected (not resolved)")  # t = 3 < 4.30
    assert R._verdict(3.0, 1.0, 6, +1).endswith("agrees")  # t = 3 > 2.57
    assert R._verdict(-3.0, 1.0, 6, +1).endswith("opposite sign (disagrees)")
    assert R._verdict(0.5, 1.0, 6, 0).endswith("(consistent)") and R._verdict(9.0, 1.0, 6, 0).endswith("(disagrees)")
    assert R._verdict(None, None, 0, +1) == "not run"
    assert R._verdict(0.0, 0.0, 3, +1).endswith("(not resolved)")  # equal values: no evidence either way


def test_paired_difference_and_standard_error():
    g = R.summarize([_cell("1", True, "any", 0, 0.1, 1.0), _cell("1", True, "any", 1, 0.3, 1.0),
                     _cell("2", True, 0.1, 0, 0.2, 1.0), _cell("2", True, 0.1, 1, 0.4, 1.0),
                     _cell("2", True, 0.1, 2, 0.9, 1.0)])
    m, se = g[("2", True, "0.1")]["stats"]["avg"]
    assert m == pytest.approx(50.0) and se == pytest.approx(math.sqrt(((20 - 50) ** 2 + (40 - 50) ** 2 + 40 ** 2) / 2 / 3))
    d, dse, n = R.paired(g, ("2", True, "0.1"), ("1", True, "any"), "avg")
    assert n == 2 and d == pytest.approx(10.0) and dse == pytest.approx(0.0)  # seed 2 has no baseline
