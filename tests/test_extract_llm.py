"""LLM extraction against a real HTTP server on loopback (tests/_extract_helpers.FakeLLM)."""
import json
import time

import pytest

from dllm_masks.extract import LLMExtractor, align_quotes
from dllm_masks.data.gsm8k_synth import generate
from dllm_masks.extract.llm import PROMPT_VERSION, JsonlCache, _retry_after, build_messages, parse_quotes
from dllm_masks.data.bundled import humaneval_samples

from _extract_helpers import default_quotes, fake_llm  # noqa: F401 (fixture)

KEY_ENV = "DLLM_MASKS_TEST_LLM_KEY"


def _expected(answer, quotes):
    spans, _ = align_quotes(answer, quotes)
    return spans


@pytest.fixture
def samples():
    code = humaneval_samples(12)
    math = [p.to_record() for p in generate(8, seed=3)]
    return code + math


def _client(srv, tmp_path, **kw):
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("max_retries", 3)
    return LLMExtractor(srv.base_url, "test-model", api_key_env=KEY_ENV,
                        cache_path=str(tmp_path / "cache.jsonl"), **kw)


def test_happy_path_concurrent_then_second_run_from_cache_sends_nothing(fake_llm, samples, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-secret-123")
    ex = _client(fake_llm, tmp_path, concurrency=4)
    res = ex.extract_many(samples, progress=False)
    assert fake_llm.count() == len(samples) == ex.stats["requests"]
    for s, sp in zip(samples, res):
        quotes = default_quotes(s["answer"])
        assert list(sp) == _expected(s["answer"], quotes) and len(sp) > 0
        assert sp.meta["method"] == "llm" and not sp.meta["failed"] and not sp.meta["cached"]
        assert sp.meta["exact"] == len(quotes) and sp.meta["unmatched"] == 0
        # every quote maps back to exactly its text
        assert all(any(q == s["answer"][a:b] or q in s["answer"][a:b] for a, b in sp) for q in quotes)
    # what the server saw: model, auth from the env var, the domain's rules, prompt and answer
    _, headers, body = fake_llm.requests[0]
    assert body["model"] == "test-model" and body["temperature"] == 0.0
    assert headers["Authorization"] == "Bearer sk-secret-123"
    domains = {json.dumps(r[2]["messages"]).count("control-flow conditions") > 0 for r in fake_llm.requests}
    assert domains == {True, False}  # both code and math prompts were sent
    # the cache holds no secret
    assert "sk-secret-123" not in (tmp_path / "cache.jsonl").read_text()

    ex2 = _client(fake_llm, tmp_path)
    res2 = ex2.extract_many(samples, progress=False)
    assert fake_llm.count() == len(samples)  # not one more request
    assert ex2.stats["requests"] == 0 and ex2.stats["cache_hits"] == len(samples)
    assert [list(r) for r in res2] == [list(r) for r in res]
    assert all(r.meta["cached"] for r in res2)

    # another model or prompt version is another key
    ex3 = LLMExtractor(fake_llm.base_url, "other-model", cache_path=str(tmp_path / "cache.jsonl"))
    assert ex3.cache_key("p", "a", "code") != ex2.cache_key("p", "a", "code")
    ex3.extract(samples[0]["prompt"], samples[0]["answer"], "code")
    assert fake_llm.count() == len(samples) + 1


def test_429_honours_retry_after(fake_llm, tmp_path):
    s = humaneval_samples(1)[0]
    fake_llm.plans[s["answer"]] = ["429", "ok"]
    slept = []
    ex = _client(fake_llm, tmp_path, sleep=lambda d: (slept.append(d), time.sleep(d)))
    sp = ex.extract(s["prompt"], s["answer"], "code")
    assert not sp.meta["failed"] and len(sp) > 0
    assert slept == [0.3]
    t0, t1 = fake_llm.requests[0][0], fake_llm.requests[1][0]
    assert t1 - t0 >= 0.3
    assert ex.stats["retries"] == 1 and fake_llm.count() == 2


def test_retry_after_http_date_and_cap():
    now = 1_700_000_000.0
    date = "Tue, 14 Nov 2023 22:13:30 GMT"  # now + 10 s
    assert _retry_after(date, now=lambda: now) == pytest.approx(10.0)
    assert _retry_after("7") == 7.0 and _retry_after(None) is None and _retry_after("soon") is None
    ex = LLMExtractor("http://127.0.0.1:9/v1", "m", max_retry_after=5.0)
    assert ex._delay(0, 120.0) == 5.0
    d = [ex._delay(a, None) for a in range(8)]
    assert all(0.5 * min(60.0, 2.0 ** a) <= x <= min(60.0, 2.0 ** a) for a, x in enumerate(d))


def test_5xx_backoff_then_success(fake_llm, tmp_path):
    s = humaneval_samples(2)[1]
    fake_llm.plans[s["answer"]] = ["500", "503", "ok"]
    slept = []
    ex = _client(fake_llm, tmp_path, sleep=slept.append)
    sp = ex.extract(s["prompt"], s["answer"], "code")
    assert not sp.meta["failed"] and fake_llm.count() == 3
    assert len(slept) == 2 and 0.005 <= slept[0] <= 0.01 and 0.01 <= slept[1] <= 0.02  # exponential


def test_hung_connection_times_out_and_retries(fake_llm, tmp_path):
    s = humaneval_samples(3)[2]
    fake_llm.plans[s["answer"]] = ["hang", "ok"]
    ex = _client(fake_llm, tmp_path, timeout=0.4)
    t = time.monotonic()
    sp = ex.extract(s["prompt"], s["answer"], "code")
    assert time.monotonic() - t < 3.0
    assert not sp.meta["failed"] and len(sp) > 0 and fake_llm.count() == 2


def test_dropped_connection_retries(fake_llm, tmp_path):
    s = humaneval_samples(4)[3]
    fake_llm.plans[s["answer"]] = ["drop", "ok"]
    sp = _client(fake_llm, tmp_path).extract(s["prompt"], s["answer"], "code")
    assert not sp.meta["failed"] and fake_llm.count() == 2


def test_malformed_body_and_content_are_retried(fake_llm, tmp_path):
    s = humaneval_samples(5)[4]
    fake_llm.plans[s["answer"]] = ["badbody", "badcontent", "ok"]
    ex = _client(fake_llm, tmp_path)
    sp = ex.extract(s["prompt"], s["answer"], "code")
    assert not sp.meta["failed"] and fake_llm.count() == 3 and ex.stats["retries"] == 2


def test_persistent_failure_is_reported_not_cached_and_retried_next_run(fake_llm, tmp_path):
    s = humaneval_samples(6)[5]
    fake_llm.plans[s["answer"]] = ["500"] * 3
    ex = _client(fake_llm, tmp_path, max_retries=2)
    sp = ex.extract(s["prompt"], s["answer"], "code")
    assert sp.meta["failed"] and list(sp) == [] and "HTTP 500" in sp.meta["error"]
    assert fake_llm.count() == 3 and ex.stats["failures"] == 1
    sp2 = _client(fake_llm, tmp_path).extract(s["prompt"], s["answer"], "code")
    assert not sp2.meta["failed"] and fake_llm.count() == 4


def test_client_errors_are_not_retried(fake_llm, tmp_path):
    s = humaneval_samples(7)[6]
    fake_llm.plans[s["answer"]] = ["400"]
    ex = _client(fake_llm, tmp_path)
    sp = ex.extract(s["prompt"], s["answer"], "code")
    assert sp.meta["failed"] and "HTTP 400" in sp.meta["error"] and fake_llm.count() == 1


def test_quotes_not_in_the_answer_are_dropped_and_counted(fake_llm, tmp_path):
    answer = ("def f(xs):\n    total = 0\n    for x in xs:\n        if x % 2 == 0 and x > 10:\n"
              "            total += x\n    return total\n")
    fake_llm.replies[answer] = [
        "x % 2 == 0 and x > 10",                 # exact
        "total   +=\n x",                          # whitespace differs
        "retrun total",                           # a typo: fuzzy
        "if y is None: raise ValueError",         # hallucinated
        "def helper(n):",                         # from nowhere
        "   ",                                    # blank: dropped when the reply is parsed
    ]
    sp = _client(fake_llm, tmp_path).extract("Sum the big even numbers.", answer, "code")
    assert sp.meta["quotes"] == 5
    assert (sp.meta["exact"], sp.meta["whitespace"], sp.meta["fuzzy"], sp.meta["unmatched"]) == (1, 1, 1, 2)
    assert sp.texts(answer) == ["x % 2 == 0 and x > 10", "total += x", "return total"]


def test_reply_in_a_markdown_fence_with_objects(fake_llm, tmp_path):
    p = generate(1, seed=5)[0]
    fake_llm.replies[p.answer] = ('Here you go:\n```json\n{"spans": [{"text": "' + p.answer.splitlines()[-1]
                                  + '"}]}\n```')
    sp = _client(fake_llm, tmp_path).extract(p.question, p.answer, "math")
    assert sp.texts(p.answer) == [p.answer.splitlines()[-1]]


def test_align_quotes_prefers_the_next_occurrence():
    answer = "if a < b:\n    x = 1\nif a < b:\n    y = 2\n"
    spans, stats = align_quotes(answer, ["a < b", "x = 1", "a < b"])
    assert spans == [(3, 8), (14, 19), (23, 28)] and stats["exact"] == 3


def test_parse_quotes_variants():
    assert parse_quotes('{"spans": ["a", "b"]}') == ["a", "b"]
    assert parse_quotes('["a", {"quote": "b"}, 3, ""]') == ["a", "b"]
    assert parse_quotes('Sure: {"spans": ["x > 1"]} hope this helps') == ["x > 1"]
    with pytest.raises(ValueError, match="content"):
        parse_quotes("no json here")


def test_prompt_carries_rules_prompt_and_answer():
    msgs = build_messages("Add two numbers.", "return a + b", "code")
    assert msgs[0]["role"] == "system" and "verbatim" in msgs[0]["content"]
    assert "control-flow conditions" in msgs[1]["content"]
    assert "### Prompt\nAdd two numbers." in msgs[1]["content"] and "### Answer\nreturn a + b" in msgs[1]["content"]
    assert "intermediate" in build_messages("q", "a", "math")[1]["content"]
    assert PROMPT_VERSION


def test_configuration_from_environment_and_errors(monkeypatch, tmp_path, fake_llm):
    monkeypatch.setenv("DLLM_MASKS_LLM_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DLLM_MASKS_LLM_MODEL", "env-model")
    monkeypatch.delenv(KEY_ENV, raising=False)
    ex = LLMExtractor(api_key_env=KEY_ENV, cache_path=str(tmp_path / "c.jsonl"))
    sp = ex.extract("p", "if x:\n    return 1\n", "code")
    _, headers, body = fake_llm.requests[-1]
    assert body["model"] == "env-model" and "Authorization" not in headers and len(sp) == 2
    monkeypatch.delenv("DLLM_MASKS_LLM_BASE_URL")
    with pytest.raises(ValueError, match="base_url"):
        LLMExtractor(model="m")
    with pytest.raises(ValueError, match="base_url"):
        LLMExtractor("ftp://x", "m")
    with pytest.raises(ValueError, match="timeout"):
        LLMExtractor("http://h/v1", "m", timeout=0)
    with pytest.raises(ValueError, match="concurrency"):
        LLMExtractor("http://h/v1", "m", concurrency=0)
    with pytest.raises(ValueError, match="domain"):
        ex.extract("p", "a", "poetry")
    with pytest.raises(TypeError, match="answer"):
        ex.extract("p", None, "code")


def test_cache_survives_a_truncated_last_line(tmp_path, fake_llm):
    path = tmp_path / "c.jsonl"
    ex = _client(fake_llm, tmp_path)
    ex.cache = JsonlCache(str(path))
    ex.extract("p", "if a:\n    return b\n", "code")
    with open(path, "a") as f:
        f.write('{"key": "abc", "quo')  # a write cut short by a crash
    c = JsonlCache(str(path))
    assert c.skipped == 1 and len(c.entries) == 1
    c.put("k2", {"quotes": ["x"]})
    c2 = JsonlCache(str(path))
    assert c2.skipped == 1 and set(c2.entries) == set(c.entries)
    assert c2.get("k2")["quotes"] == ["x"]
