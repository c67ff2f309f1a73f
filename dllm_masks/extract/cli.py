"""``dllm-masks extract``: annotate a JSONL file of SFT samples with information-dense spans.

Input: one JSON object a line with ``prompt`` (str), ``answer`` (str), optional ``domain``
(``"code"``/``"math"``) and optional ``id``. Output: the same objects, in the same order, with

* ``domain``: the domain used (``--domain``, else the record's, else a guess);
* ``spans``: ``[[start, end], ...]`` character offsets into ``answer``, or ``null`` for a sample
  left unannotated (it then masks uniformly, as in the paper);
* ``extract``: ``{"method", "error", ...}`` for annotated samples, else ``null``.

Which samples are annotated is a deterministic function of the sample (its ``id``, else a hash
of prompt and answer), ``--seed`` and ``--fraction``: the same sample is chosen wherever it sits
in the file and whatever else the file holds. The paper annotates 10% of code and 50% of math.

An interrupted run resumes: complete lines already in OUT are kept (and checked against IN), a
line cut short is dropped, and the rest is appended. Malformed input lines are reported with
their line number and skipped (``--strict``: stop there with exit status 2).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Iterator, List, Optional, Tuple

from tqdm.auto import tqdm

from .align import dense_fraction
from .auto import DOMAINS, detect_domain, rule_spans, sample_key, selected  # noqa: F401 (re-exported)
from .budget import measure_for, parse_target_rho, target_for

BATCH = 64


def _check_record(obj) -> Optional[str]:
    """Why a parsed line is not a sample, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for k in ("prompt", "answer"):
        if not isinstance(obj.get(k), str):
            return f"field {k!r} must be a string" if k in obj else f"missing field {k!r}"
    d = obj.get("domain")
    if d is not None and d not in DOMAINS:
        return f"field 'domain' must be 'code' or 'math', got {d!r}"
    return None


def read_records(path: str) -> Iterator[Tuple[int, Optional[dict], Optional[str]]]:
    """(line number, record or None, error or None) for each non-blank line of a JSONL file."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                yield n, None, f"invalid JSON ({type(e).__name__}: {str(e)[:120]})"
                continue
            err = _check_record(obj)
            yield n, (obj if err is None else None), err


def _resume_state(out_path: str) -> List[dict]:
    """Complete records already in OUT; a trailing line cut short is removed from the file."""
    if not os.path.exists(out_path):
        return []
    done, keep = [], 0
    with open(out_path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # no newline: a write cut short
        line = data[pos:nl]
        try:
            obj = json.loads(line.decode("utf-8")) if line.strip() else None
        except (UnicodeDecodeError, ValueError):
            break  # a corrupt line: redo from here
        if obj is not None:
            done.append(obj)
        pos = keep = nl + 1
    if keep < len(data):
        with open(out_path, "r+b") as f:
            f.truncate(keep)
    return done


class _Stats:
    def __init__(self, unit: str):
        self.unit = unit
        self.by = {d: {"samples": 0, "annotated": 0, "rho_sum": 0.0, "rho_n": 0, "fallback": 0, "failed": 0}
                   for d in DOMAINS}

    def add(self, rec: dict, tok) -> None:
        s = self.by[rec["domain"]]
        s["samples"] += 1
        meta = rec.get("extract")
        if rec.get("spans") is None:
            if meta and meta.get("failed"):
                s["annotated"] += 1
                s["failed"] += 1
            return
        s["annotated"] += 1
        if meta and meta.get("method") in ("fallback", "mixed"):
            s["fallback"] += 1
        ans = rec["answer"]
        if not ans:
            return
        spans = [tuple(x) for x in rec["spans"]]
        if tok is not None:
            enc = tok.encode(ans, add_special_tokens=False)
            if not enc.offsets:
                return
            rho = dense_fraction(enc.offsets, spans, answer_end=len(ans))
        else:
            rho = sum(e - s for s, e in spans) / len(ans)
        s["rho_sum"] += rho
        s["rho_n"] += 1

    def report(self) -> dict:
        out = {"unit": self.unit}
        for d, s in self.by.items():
            out[d] = {k: s[k] for k in ("samples", "annotated", "fallback", "failed")}
            out[d]["rho"] = s["rho_sum"] / s["rho_n"] if s["rho_n"] else None
        return out


def _annotate(batch: List[dict], args, extractor, tok=None) -> List[dict]:
    """Fill domain/spans/extract for a batch of records, in order."""
    todo = []
    for rec in batch:
        if args.domain != "auto":
            rec["domain"] = args.domain
        elif rec.get("domain") not in DOMAINS:
            rec["domain"] = detect_domain(rec["prompt"], rec["answer"])
        if selected(rec, args.fraction, args.seed):
            todo.append(rec)
        else:
            rec["spans"], rec["extract"] = None, None
    if extractor is not None:
        results = extractor.extract_many(todo, progress=False) if todo else []
    else:
        # the budget counts what the ρ report counts: answer tokens with --tokenizer, else characters
        def budget(r):
            return {} if args.target_rho is None else {"target_rho": args.target_rho,
                                                       "measure": measure_for(tok, r["answer"])}
        results = [rule_spans(r["prompt"], r["answer"], r["domain"], **budget(r)) for r in todo]
    for rec, sp in zip(todo, results):
        meta = {k: v for k, v in sp.meta.items() if k in ("method", "error", "failed", "parsed", "format",
                                                           "quotes", "unmatched", "fuzzy", "cached", "budget")}
        rec["spans"] = None if meta.get("failed") else [list(x) for x in sp]
        rec["extract"] = meta
    return batch


class _UsageError(Exception):
    """A bad argument or input file: printed as one line, exit status 2."""


def _setup(args):
    """Check the arguments; load the tokenizer and the LLM extractor they ask for."""
    if not 0.0 <= args.fraction <= 1.0:
        raise _UsageError(f"--fraction must lie in [0, 1], got {args.fraction}")
    if args.target_rho is not None and args.method != "rules":
        raise _UsageError("--target-rho applies to --method rules")
    if not os.path.exists(args.input):
        raise _UsageError(f"{args.input}: no such file")
    tok = None
    if args.tokenizer:
        try:
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(args.tokenizer)
        except Exception as e:  # noqa: BLE001 - any load failure is a usage error
            raise _UsageError(f"--tokenizer {args.tokenizer}: {type(e).__name__}: {e}") from e
    extractor = None
    if args.method == "llm":
        from .llm import LLMExtractor
        try:
            extractor = LLMExtractor(args.base_url, args.model, api_key_env=args.api_key_env,
                                     cache_path=args.cache or args.output + ".llm-cache.jsonl",
                                     timeout=args.timeout, deadline=args.deadline,
                                     max_response_bytes=max(1, int(args.max_response_mb * (1 << 20))),
                                     max_retries=args.max_retries,
                                     concurrency=args.concurrency)
        except (TypeError, ValueError) as e:
            raise _UsageError(str(e)) from e
    return tok, extractor


def _check_resumed(prev: dict, args, k: int) -> None:
    """A resumed record must be what this run would have written: the same choice of annotated
    samples (``--fraction``, ``--seed``) and the same density budget (``--target-rho``)."""
    meta = prev.get("extract")
    if (meta is not None) != selected(prev, args.fraction, args.seed):
        raise _UsageError(f"--fraction/--seed: {args.output} record {k} was {'' if meta else 'not '}annotated, "
                          f"which --fraction {args.fraction} --seed {args.seed} would not do; resume with the "
                          "values it was written with, or write to a new file")
    if meta is None or meta.get("failed") or args.method != "rules" or prev.get("domain") not in DOMAINS:
        return
    was = (meta.get("budget") or {}).get("target_rho")
    now = target_for(args.target_rho, prev["domain"], "--target-rho")
    if was != now:
        raise _UsageError(f"--target-rho: {args.output} record {k} ({prev['domain']}) was written with a density "
                          f"budget of {was}, this run asks for {now}; resume with the value it was written with, "
                          "or write to a new file")


def _annotate_file(args, tok, extractor, done: List[dict], stats: "_Stats", bad: List[int]) -> int:
    """Append the annotations of the input's records that ``done`` (the output so far) does not
    hold yet; returns how many were written. Raises _UsageError when the output does not continue
    the input, or at a malformed line with ``--strict``."""
    with open(args.input, "rb") as f:
        total = sum(1 for _ in f)
    n_new = 0
    with open(args.output, "a", encoding="utf-8") as out, \
            tqdm(total=total, desc="extract", unit="line", disable=args.no_progress) as bar:
        k = 0  # index among the valid input records
        batch: List[dict] = []

        def flush() -> None:
            nonlocal n_new
            for rec in _annotate(batch, args, extractor, tok):
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                stats.add(rec, tok)
                n_new += 1
            out.flush()
            bar.update(len(batch))
            batch.clear()

        for n, rec, err in read_records(args.input):
            if err is not None:
                bad.append(n)
                bar.write(f"{args.input}:{n}: skipped: {err}", file=sys.stderr)
                bar.update(1)
                if args.strict:
                    flush()
                    raise _UsageError(f"stopped at malformed line {n} (--strict)")
                continue
            if k < len(done):
                prev = done[k]
                if not isinstance(prev, dict) or "prompt" not in prev or "answer" not in prev \
                        or sample_key(prev) != sample_key(rec) or prev.get("answer") != rec["answer"]:
                    raise _UsageError(f"{args.output} does not continue {args.input} (record {k + 1}, "
                                      f"line {n}); remove it to start over")
                _check_resumed(prev, args, k + 1)
                stats.add(prev, tok)
                k += 1
                bar.update(1)
                continue
            k += 1
            batch.append(rec)
            if len(batch) >= BATCH:
                flush()
        flush()
    return n_new


def _report(args, rep: dict, extractor, n_resumed: int, n_new: int, bad: List[int]) -> None:
    """Print the ρ summary; write it as JSON with ``--report``."""
    lines = [f"dense fraction ρ per annotated sample, unit: {rep['unit']}"]
    for d in DOMAINS:
        r = rep[d]
        rho = "n/a" if r["rho"] is None else f"{r['rho']:.3f}"
        lines.append(f"  {d:5s} samples={r['samples']} annotated={r['annotated']} ρ={rho} "
                     f"fallback={r['fallback']} failed={r['failed']}")
    lines.append(f"  resumed={n_resumed} written={n_new} malformed_lines={len(bad)}"
                 + (f" (lines {', '.join(map(str, bad[:20]))}{', ...' if len(bad) > 20 else ''})" if bad else ""))
    if extractor is not None:
        lines.append("  llm: " + " ".join(f"{k}={v}" for k, v in extractor.stats.items()))
    print("\n".join(lines))
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(rep, f, indent=2, ensure_ascii=False)


def run(args) -> int:
    try:
        tok, extractor = _setup(args)
        done = _resume_state(args.output)
        stats = _Stats("tokens (" + os.path.basename(args.tokenizer) + ")" if tok is not None else "characters")
        bad: List[int] = []
        n_new = _annotate_file(args, tok, extractor, done, stats, bad)
    except _UsageError as e:
        print(f"dllm-masks extract: {e}", file=sys.stderr)
        return 2
    rep = stats.report()
    rep.update(malformed_lines=bad, resumed=len(done), written=n_new,
               method=args.method, fraction=args.fraction, seed=args.seed, target_rho=args.target_rho)
    if extractor is not None:
        rep["llm"] = dict(extractor.stats)
    _report(args, rep, extractor, len(done), n_new, bad)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("extract", help="annotate JSONL samples with information-dense spans",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="input JSONL: prompt, answer, optional domain and id")
    p.add_argument("output", help="output JSONL (appended to / resumed when it exists)")
    p.add_argument("--domain", choices=("auto",) + DOMAINS, default="auto",
                   help="force a domain (default: the record's, else a guess)")
    p.add_argument("--method", choices=("rules", "llm"), default="rules")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="fraction of samples to annotate, chosen per sample (paper: 0.1 code, 0.5 math)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-sample choice")
    p.add_argument("--tokenizer", help="tokenizer.json: report ρ over tokens instead of characters")
    p.add_argument("--target-rho", type=parse_target_rho, default=None, metavar="RHO",
                   help="density budget per answer (rules): a number in (0, 1] or DOMAIN=NUMBER,...; "
                        "measured like the ρ report (see python -m dllm_masks.extract.calibrate)")
    p.add_argument("--strict", action="store_true", help="stop at the first malformed line (exit 2)")
    p.add_argument("--report", help="also write the summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("llm (--method llm)")
    g.add_argument("--base-url", help="OpenAI-compatible API root (default $DLLM_MASKS_LLM_BASE_URL)")
    g.add_argument("--model", help="model name (default $DLLM_MASKS_LLM_MODEL)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    g.add_argument("--cache", help="JSONL cache (default OUTPUT.llm-cache.jsonl)")
    g.add_argument("--concurrency", type=int, default=8)
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per connection and socket read")
    g.add_argument("--deadline", type=float, default=300.0, help="seconds for a whole request attempt")
    g.add_argument("--max-response-mb", type=float, default=16.0, help="largest response body, in MiB")
    g.add_argument("--max-retries", type=int, default=5)
    p.set_defaults(func=run)
