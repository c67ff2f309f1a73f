"""Code span extraction: AST rules (exact offsets), fallback, Markdown blocks, HumanEval."""
import ast
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dllm_masks.extract import align, code_spans, merge_spans
from dllm_masks.extract.code import FALLBACK_RULES, RULES, fallback_spans
from dllm_masks.data.bundled import humaneval_samples

from _extract_helpers import deepseek_tokenizer  # noqa: F401 (fixture)


def _char_offset(src: str, lineno: int, col: int) -> int:
    """Independent oracle: ast position -> character offset (sources here use \\n only)."""
    lines = src.split("\n")
    before = sum(len(ln) + 1 for ln in lines[:lineno - 1])
    return before + len(lines[lineno - 1].encode("utf-8")[:col].decode("utf-8"))


def _node_span(src, node):
    return _char_offset(src, node.lineno, node.col_offset), _char_offset(src, node.end_lineno, node.end_col_offset)


def _tests(tree):
    """Every node the 'condition' rule must mark."""
    for n in ast.walk(tree):
        if isinstance(n, (ast.If, ast.While, ast.Assert, ast.IfExp)):
            yield n.test
        elif isinstance(n, ast.comprehension):
            yield from n.ifs
        elif isinstance(n, ast.match_case) and n.guard is not None:
            yield n.guard


def _inside(span, spans):
    return any(a <= span[0] and span[1] <= b for a, b in spans)


@pytest.fixture(scope="module")
def humaneval():
    return humaneval_samples()


def test_humaneval_every_if_elif_while_test_is_inside_a_span(humaneval):
    assert len(humaneval) == 164
    checked = 0
    for s in humaneval:
        src, P = s["prompt"] + s["answer"], len(s["prompt"])
        spans = code_spans(s["answer"], prefix=s["prompt"])
        assert spans.meta["method"] == "ast" and spans.meta["parsed"] == "prefix+source", s["id"]
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, (ast.If, ast.While)):
                a, b = _node_span(src, n.test)
                if a >= P:  # in the solution (prompts of a few tasks hold helper functions)
                    assert _inside((a - P, b - P), spans), (s["id"], src[a:b])
                    checked += 1
    assert checked > 150  # HumanEval's solutions hold a few hundred if/elif/while tests


def test_humaneval_condition_rule_is_exactly_the_tests(humaneval):
    """With rules=['condition'] the spans are exactly the (merged) test expressions."""
    for s in humaneval:
        src, P = s["prompt"] + s["answer"], len(s["prompt"])
        want = merge_spans(((a - P, b - P) for a, b in (_node_span(src, t) for t in _tests(ast.parse(src)))),
                           lo=0, hi=len(s["answer"]))
        got = code_spans(s["answer"], prefix=s["prompt"], rules=["condition"])
        assert list(got) == want, s["id"]


def test_humaneval_rho_code(humaneval, deepseek_tokenizer):
    rhos = []
    for s in humaneval:
        spans = code_spans(s["answer"], prefix=s["prompt"])
        enc = deepseek_tokenizer.encode(s["answer"], add_special_tokens=False)
        rhos.append(align.dense_fraction(enc.offsets, spans))
    rho = sum(rhos) / len(rhos)
    print(f"\nrho_code (HumanEval canonical solutions, deepseek tokens, all rules) = {rho:.3f}")
    # HumanEval solutions are short and nearly all logic; the value is documented in docs/extraction.md
    assert 0.35 < rho < 0.75


def test_solution_without_its_prompt_parses_as_a_wrapped_body(humaneval):
    for s in humaneval[:40]:
        alone = code_spans(s["answer"])
        assert alone.meta["method"] == "ast" and alone.meta["parsed"] == "wrapped", s["id"]
        assert list(alone) == list(code_spans(s["answer"], prefix=s["prompt"])), s["id"]


SNIPPET = '''def search(xs, target):
    lo, hi = 0, len(xs) - 1
    total = 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        elif xs[mid] < target:
            lo = mid + 1
        else:
            hi -= 1
    assert total >= 0, "never"
    evens = [x for x in xs if x % 2 == 0]
    label = "big" if total > 10 else "small"
    return search(xs[1:], target) + xs[hi - 1]

def gen(n):
    for i in range(n):
        yield i * i
'''


@pytest.mark.parametrize("rule,texts", [
    ("condition", ["lo <= hi", "xs[mid] == target", "xs[mid] < target", "total >= 0", "x % 2 == 0", "total > 10"]),
    ("iterable", ["xs", "range(n)"]),
    ("return", ["mid", "search(xs[1:], target) + xs[hi - 1]", "i * i"]),
    ("update", ["mid = (lo + hi) // 2", "lo = mid + 1", "hi -= 1"]),
    ("recursion", ["search(xs[1:], target)"]),
    ("index", ["xs[hi - 1]"]),
])
def test_each_rule_alone(rule, texts):
    spans = code_spans(SNIPPET, rules=[rule])
    assert spans.meta["rules"] == [rule]
    assert spans.texts(SNIPPET) == texts


def test_all_rules_merge_overlaps_into_sorted_disjoint_spans():
    spans = code_spans(SNIPPET)
    assert spans.meta["rules"] == list(RULES)
    assert all(a < b for a, b in spans)
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # disjoint, not touching
    # the recursive call and the index arithmetic lie inside the (merged) return value
    assert "search(xs[1:], target) + xs[hi - 1]" in spans.texts(SNIPPET)


def test_utf8_columns_are_converted_to_characters():
    src = 's = "é中文🙂"; ok = 1 if "ü" == s[0] else 2\nwhile len(s) > 0 and "ß" != s:\n    s = s[1:]\n'
    spans = code_spans(src, rules=["condition"])
    assert spans.texts(src) == ['"ü" == s[0]', 'len(s) > 0 and "ß" != s']


def test_line_endings_crlf_and_cr():
    for nl in ("\r\n", "\r"):
        src = nl.join(["x = 'é'", "if x != 'ü':", "    y = 1", "while x: x = x[:-1]", ""])
        spans = code_spans(src, rules=["condition", "index"])
        assert spans.meta["method"] == "ast"
        assert spans.texts(src) == ["x != 'ü'", "x", "x[:-1]"], repr(nl)


_ident = st.from_regex(r"[a-zà-ÿ][a-z0-9_à-ÿ]{0,6}", fullmatch=True).filter(
    lambda s: s.isidentifier() and s not in {"if", "in", "is", "or", "as", "and", "def", "for", "not", "del"})
_strlit = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"),
                                         blacklist_characters="\\'\"\r\n\x0c\x0b\x1c\x1d\x1e\x85"),
                  max_size=6)


@given(st.lists(st.tuples(_ident, _strlit, _ident), min_size=1, max_size=6))
def test_spans_equal_ast_source_segments_on_unicode_code(parts):
    """The condition spans are exactly ast.get_source_segment of the tests (an independent
    byte->character conversion), for sources with arbitrary non-ASCII text before them."""
    lines = []
    for a, s, b in parts:
        lines.append(f"{a} = '{s}'; {b} = {a} if '{s}' == {a} else '{s}'")
        lines.append(f"while {a} != '{s}' and {b}: {a} = '{s}'")
    src = "\n".join(lines) + "\n"
    tree = ast.parse(src)
    want = sorted(ast.get_source_segment(src, t) for t in _tests(tree))
    got = code_spans(src, rules=["condition"])
    texts = got.texts(src)
    assert sorted(texts) == want


# ---------------------------------------------------------------------------------------------
# Fallback
# ---------------------------------------------------------------------------------------------
CPP = """#include <vector>
int best(const std::vector<int>& a, int n) {
  int lo = 0, sum = 0;
  for (int i = 0; i < n; i++) {
    if (a[i] > a[lo] && !seen[i]) lo = i;
    sum += a[i - 1] * 2;
  }
  while (n != 0) { n >>= 1; }
  return sum / n;
}
"""


def test_fallback_on_cpp():
    spans = code_spans(CPP)
    assert spans.meta["method"] == "fallback"
    assert spans.meta["error"].startswith("SyntaxError")
    texts = spans.texts(CPP)
    for want in ["int i = 0; i < n; i++", "a[i] > a[lo] && !seen[i]", "sum += a[i - 1] * 2", "n != 0",
                 "n >>= 1", "sum / n"]:
        assert want in texts, (want, texts)
    # generics and includes are not comparisons
    assert not any("vector" in t for t in texts)


@pytest.mark.parametrize("lang,src,wants", [
    ("java", "class A { int f(int x) { if (x % 2 == 0 || x < 0) { return x / 2; } return 3 * x + 1; } }",
     ["x % 2 == 0 || x < 0", "x / 2", "3 * x + 1"]),
    ("go", "func f(n int) int {\n\tif n <= 1 {\n\t\treturn n\n\t}\n\tfor i := 0; i < n; i++ {\n\t\tn--\n\t}\n}",
     ["n <= 1", "n", "i := 0; i < n; i++", "n--"]),
    ("js", "const g = (xs) => {\n  while (xs.length > 0) xs.pop();\n  return xs.filter(x => x !== null);\n};",
     ["xs.length > 0", "xs.filter(x => x !== null)"]),
    ("rust", "fn f(v: &[i32]) -> i32 {\n    if v.len() == 0 { return 0; }\n    v[0] + f(&v[1..])\n}",
     ["v.len() == 0", "0"]),
])
def test_fallback_other_languages(lang, src, wants):
    spans = code_spans(src)
    assert spans.meta["method"] == "fallback", lang
    texts = spans.texts(src)
    for w in wants:
        assert any(w in t for t in texts), (lang, w, texts)


def test_truncated_python_falls_back_and_still_finds_the_conditions(humaneval):
    s = next(x for x in humaneval if x["id"] == "HumanEval/129")
    cut = s["answer"][: s["answer"].index("if j != 0") + 6]  # cut inside a condition
    spans = code_spans(cut)
    assert spans.meta["method"] == "fallback" and spans.meta["error"]
    texts = spans.texts(cut)
    for w in ["grid[i][j] == 1", "i != 0"]:
        assert w in texts, texts


def test_fallback_rules_are_selectable():
    assert set(FALLBACK_RULES) <= set(RULES)
    only = code_spans(CPP, rules=["return"])
    assert only.texts(CPP) == ["sum / n"]
    assert code_spans(CPP, rules=["recursion"]) == []  # no fallback form
    assert fallback_spans("if (a == b) x++;", rules=["update"]) == [(12, 15)]


def test_markdown_blocks():
    md = ("Here is the solution. If n < 0 we stop.\n\n```python\ndef f(n):\n    if n < 0:\n        return 0\n"
          "    return n * f(n - 1)\n```\n\nAnd in C++:\n\n```cpp\nif (n < 0) return 0;\n```\nDone.\n")
    spans = code_spans(md)
    assert spans.meta["method"] == "mixed" and spans.meta["parsed"] == "blocks"
    assert [b["method"] for b in spans.meta["blocks"]] == ["ast", "fallback"]
    texts = spans.texts(md)
    assert texts[:3] == ["n < 0", "0", "n * f(n - 1)"]
    assert "n < 0" in texts[3:]
    assert all(a > md.index("```") for a, _ in spans)  # nothing in the prose


def test_prefix_that_does_not_parse_is_ignored():
    src = "x = 1\nif x > 0:\n    x -= 1\n"
    spans = code_spans(src, prefix="Write a program that counts down.\n")
    assert spans.meta["parsed"] == "source"
    assert spans.texts(src) == ["x > 0", "x -= 1"]


def test_argument_errors():
    with pytest.raises(TypeError, match="source"):
        code_spans(b"x = 1")
    with pytest.raises(TypeError, match="prefix"):
        code_spans("x", prefix=None)
    with pytest.raises(ValueError, match="rules"):
        code_spans("x", rules=["conditions"])
    with pytest.raises(TypeError, match="rules"):
        code_spans("x", rules=[1])


def _check_spans(text, spans):
    assert isinstance(spans.meta["method"], str)
    prev = -1
    for a, b in spans:
        assert isinstance(a, int) and isinstance(b, int)
        assert prev < a < b <= len(text)
        prev = b


@given(st.text(max_size=300))
def test_never_raises_on_text(text):
    _check_spans(text, code_spans(text))
    _check_spans(text, code_spans(text, prefix=text[:10]))


@given(st.lists(st.sampled_from(["if", "(", ")", "[", "]", "{", "}", " ", "\n", "x", "1", "==", "<", " < ",
                                 "&&", "return", ";", ":", "+=", "++", "for", "not", "and", "```", "```py\n",
                                 "\t", "'", '"', "#", "\x00", "é"]), max_size=80))
def test_never_raises_on_code_like_noise(parts):
    text = "".join(parts)
    _check_spans(text, code_spans(text))


@pytest.mark.parametrize("bad", [
    "(" * 100_000,                                   # deep nesting: ast raises, fallback must stay linear
    "if " * 40_000,
    "a < b " * 20_000,
    "x" * 200_000,
    "[" * 50_000 + "]" * 50_000,
    "```\n" * 20_000,
    "a[" * 30_000 + "1+1" + "]" * 30_000,            # nested subscripts with arithmetic inside
    "a" + "[i - 1]" * 30_000,                        # a long subscript chain
    "return (" * 30_000,
])
def test_adversarial_inputs_stay_fast(bad):
    t = time.perf_counter()
    spans = code_spans(bad)
    assert time.perf_counter() - t < 5.0
    _check_spans(bad, spans)


def test_null_bytes_fall_back():
    src = "if a == b:\x00\n    pass"
    spans = code_spans(src)
    assert spans.meta["method"] == "fallback" and "null" in spans.meta["error"]
    assert spans.texts(src) == ["a == b"]

