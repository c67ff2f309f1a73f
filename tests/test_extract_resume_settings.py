"""`dllm-masks extract` resumed with other settings than the output was written with refuses,
instead of mixing two density budgets or two sample choices in one file."""
import json

import pytest

from dllm_masks import cli
from dllm_masks.data.gsm8k_synth import generate


def _run(*argv):
    return cli.main(["extract", *map(str, argv), "--no-progress"])


@pytest.fixture()
def files(tmp_path):
    recs = [p.to_record() for p in generate(12, seed=3)]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return inp, tmp_path / "out.jsonl"


def _cut(out, n):
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:n]), encoding="utf-8")


def test_resume_with_another_target_rho_refuses(files, capsys):
    inp, out = files
    assert _run(inp, out, "--target-rho", "0.3") == 0
    _cut(out, 5)
    before = out.read_text(encoding="utf-8")
    capsys.readouterr()
    assert _run(inp, out, "--target-rho", "0.2") == 2
    err = capsys.readouterr().err
    assert "--target-rho:" in err and "budget of 0.3" in err and "asks for 0.2" in err
    assert _run(inp, out) == 2 and "asks for None" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == before  # nothing written, nothing lost
    assert _run(inp, out, "--target-rho", "0.3") == 0  # the same value resumes
    assert len(out.read_text(encoding="utf-8").splitlines()) == 12


def test_resume_with_another_fraction_refuses(files, capsys):
    inp, out = files
    assert _run(inp, out, "--fraction", "0.5", "--seed", "1") == 0
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert 0 < sum(r["extract"] is not None for r in recs) < 12
    _cut(out, 8)
    capsys.readouterr()
    assert _run(inp, out, "--fraction", "1.0") == 2
    assert "--fraction/--seed:" in capsys.readouterr().err
    assert _run(inp, out, "--fraction", "0.5", "--seed", "1") == 0
