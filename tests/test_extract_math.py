"""Math span extraction: GSM8K annotations, prose equations, final answers, LaTeX; the generator."""
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dllm_masks.extract import align, math_spans
from dllm_masks.data.gsm8k_synth import TEMPLATES, evaluate, generate
from dllm_masks.extract.math import RULES, detect_format

from _extract_helpers import deepseek_tokenizer  # noqa: F401 (fixture)

ANNOTATION = re.compile(r"<<[^<>]*>>")
FINAL = re.compile(r"^####\s*(.+?)\s*$", re.M)


def _inside(a, b, spans):
    return any(s <= a and b <= e for s, e in spans)


def _assert_annotations_and_final_covered(text):
    spans = math_spans(text)
    anns = list(ANNOTATION.finditer(text))
    for m in anns:
        assert _inside(*m.span(), spans), (m.group(), spans.texts(text))
    finals = list(FINAL.finditer(text))
    for m in finals:
        assert _inside(*m.span(1), spans), (m.group(1), spans.texts(text))
    return spans, len(anns), len(finals)


@pytest.fixture(scope="module")
def synth():
    return generate(400, seed=0)


def test_generator_is_deterministic_prefix_stable_and_seeded(synth):
    again = generate(50, seed=0)
    assert again == synth[:50]
    other = generate(50, seed=1)
    assert [p.answer for p in other] != [p.answer for p in again]
    assert {p.template for p in synth} == {name for name, _ in TEMPLATES}
    assert len({p.answer for p in synth}) == len(synth)


def test_generated_solutions_are_correct_gsm8k_format(synth):
    for p in synth:
        lines = p.answer.split("\n")
        assert lines[-1] == f"#### {p.final}"
        anns = ANNOTATION.findall(p.answer)
        assert [a[2:-2] for a in anns] == [f"{e}={v}" for e, v in p.calculations]
        assert 2 <= len(anns) <= 4
        for expr, value in p.calculations:
            assert evaluate(expr) == value and isinstance(value, int)
            assert f"<<{expr}={value}>>{value}" in p.answer  # the result is written after it
        assert p.calculations[-1][1] == p.final
        assert p.question.endswith("?")
        rec = p.to_record()
        assert rec == {"id": p.id, "prompt": p.question, "answer": p.answer, "domain": "math"}


def test_synthetic_every_annotation_and_final_answer_in_a_span(synth):
    n_ann = 0
    for p in synth:
        spans, k, f = _assert_annotations_and_final_covered(p.answer)
        assert spans.meta == {"method": "rules", "format": "gsm8k", "rules": list(RULES), "error": None}
        assert f == 1
        n_ann += k
    assert n_ann > 1000


# Hand-written GSM8K-style solutions: annotations, prose equations, money, decimals, commas,
# percentages, multi-operand expressions, and text around them.
HAND = [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
     "in April and May.\n#### 72", ["48/2 = <<48/2=24>>24", "48+24 = <<48+24=72>>72", "72"]),
    ("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
     "$<<0.2*50=10>>10.\n#### 10", ["12/60 = $<<12/60=0.2>>0.2", "0.2 x 50 = $<<0.2*50=10>>10", "10"]),
    ("In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her 15 * 2 = "
     "$<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5",
     ["100 / 2 = $<<100/2=50>>50", "15 * 2 = $<<15*2=30>>30", "100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5", "5"]),
    ("He writes each friend 3*2=<<3*2=6>>6 pages a week\nSo he writes 6*2=<<6*2=12>>12 pages every week\n"
     "That means he writes 12*52=<<12*52=624>>624 pages a year\n#### 624",
     ["3*2=<<3*2=6>>6", "6*2=<<6*2=12>>12", "12*52=<<12*52=624>>624", "624"]),
    ("The discount is 20% of $1,500, which is 1,500 * 20/100 = $<<1500*20/100=300>>300.\nSo she pays "
     "1,500 - 300 = $<<1500-300=1200>>1,200.\n#### 1200",
     ["1,500 * 20/100 = $<<1500*20/100=300>>300", "1,500 - 300 = $<<1500-300=1200>>1,200", "1200"]),
    ("There are <<4*3=12>>12 eggs in the boxes. Half of them break: <<12/2=6>>6 are left.\n#### 6",
     ["<<4*3=12>>12", "<<12/2=6>>6", "6"]),
    ("Without annotations: he earns 12 * 5 = 60 dollars a day and (60 + 40) * 7 = 700 a week.\n#### 700",
     ["12 * 5 = 60", "(60 + 40) * 7 = 700", "700"]),
    ("Tom is 2 years older: 10 + 2 = <<10+2=12>>12.\n#### 12", ["10 + 2 = <<10+2=12>>12", "12"]),
]


@pytest.mark.parametrize("text,want", HAND)
def test_hand_written_gsm8k(text, want):
    spans, k, f = _assert_annotations_and_final_covered(text)
    assert f == 1
    assert spans.texts(text) == want


def test_prose_is_not_dense():
    text = HAND[0][0]
    spans = math_spans(text)
    for word in ("Natalia sold", "clips in May", "altogether"):
        i = text.index(word)
        assert not any(s < i + len(word) and i < e for s, e in spans), word


def test_latex_solutions():
    text = (r"We solve $x^2 - 5x + 6 = 0$, which factors as \[(x-2)(x-3)=0.\] "
            r"The roots are $x=2$ and $x=3$, so their product is $2 \cdot 3 = 6$. "
            r"The answer is $\boxed{6}$. Note that $x$ alone is not dense.")
    spans = math_spans(text)
    assert spans.meta["format"] == "latex"
    texts = spans.texts(text)
    assert texts == ["x^2 - 5x + 6 = 0", "(x-2)(x-3)=0.", "x=2", "x=3", r"2 \cdot 3 = 6", "6"]
    i = text.index("Note that $x$")
    assert not any(s <= i + 11 < e for s, e in spans)


def test_boxed_with_nested_braces_and_answer_is():
    t = r"Therefore the area is \boxed{\frac{3}{4}\pi}."
    assert math_spans(t).texts(t) == [r"\frac{3}{4}\pi"]
    t = "So the final answer is 1,250 apples."
    assert math_spans(t).texts(t) == ["1,250"]


def test_dollar_signs_in_gsm8k_are_money_not_latex():
    t = "A shirt costs $20 and a hat costs $5, so 20 + 5 = $<<20+5=25>>25.\n#### 25"
    assert detect_format(t) == "gsm8k"
    assert math_spans(t).texts(t) == ["20 + 5 = $<<20+5=25>>25", "25"]


def test_fallback_marks_numbers_when_no_rule_fires():
    t = "She had 7 apples and 3 pears."
    s = math_spans(t)
    assert s.meta["method"] == "fallback" and "numbers" in s.meta["error"]
    assert s.texts(t) == ["7", "3"]
    e = math_spans("")
    assert list(e) == [] and e.meta["method"] == "rules"


def test_single_letter_words_do_not_join_equations():
    t = "He pays 24x23 = $<<24*23=552>>552 a week. I think a = 5 is wrong."
    texts = math_spans(t).texts(t)
    assert texts[0] == "24x23 = $<<24*23=552>>552"
    assert "a = 5" in texts


@pytest.mark.parametrize("rule,want", [
    ("calculator", ["<<48/2=24>>24"]),
    ("equation", ["48/2 = <<48/2=24>>24", "3 * 4"]),
    ("final", ["24"]),
])
def test_rule_subsets(rule, want):
    t = "Natalia sold 48/2 = <<48/2=24>>24 clips, not 3 * 4.\n#### 24"
    s = math_spans(t, rules=[rule])
    assert s.meta["rules"] == [rule]
    assert s.texts(t) == want


def test_argument_errors():
    with pytest.raises(TypeError, match="text"):
        math_spans(None)
    with pytest.raises(ValueError, match="rules"):
        math_spans("1+1", rules=["calc"])
    with pytest.raises(TypeError, match="n"):
        generate("3")
    with pytest.raises(ValueError, match="n"):
        generate(-1)
    with pytest.raises(ValueError, match="expr"):
        evaluate("__import__('os')")


def test_rho_math(synth, deepseek_tokenizer):
    rhos = []
    for p in synth:
        spans = math_spans(p.answer)
        enc = deepseek_tokenizer.encode(p.answer, add_special_tokens=False)
        rhos.append(align.dense_fraction(enc.offsets, spans))
    hand = []
    for text, _ in HAND:
        enc = deepseek_tokenizer.encode(text, add_special_tokens=False)
        hand.append(align.dense_fraction(enc.offsets, math_spans(text)))
    rho, rho_hand = sum(rhos) / len(rhos), sum(hand) / len(hand)
    print(f"\nrho_math (synthetic GSM8K, deepseek tokens) = {rho:.3f}; hand-written = {rho_hand:.3f}")
    assert 0.3 < rho < 0.8 and 0.3 < rho_hand < 0.8


@given(st.text(max_size=300))
def test_never_raises_on_text(text):
    s = math_spans(text)
    prev = -1
    for a, b in s:
        assert prev < a < b <= len(text)
        prev = b


@pytest.mark.parametrize("bad", ["1" * 200_000, "1+" * 50_000, "(" * 100_000 + "1", "$" * 100_000,
                                 "\\(" * 50_000, "<<" * 50_000, "1 = " * 30_000, "x" * 100_000,
                                 "\\boxed{" * 20_000])
def test_adversarial_inputs_stay_fast(bad):
    t = time.perf_counter()
    math_spans(bad)
    assert time.perf_counter() - t < 5.0
