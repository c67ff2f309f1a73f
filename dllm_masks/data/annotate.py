"""Annotate a fraction of each domain with the rule extractors, as the paper annotates only part
of its data (its best mix: 10% of code, 50% of math) and leaves the rest unmarked.

The choice of samples is the one ``dllm-masks extract --fraction F --seed S`` makes (a function of
the sample's id, or of its text, and the seed), so a run that annotates on the fly and a run that
reads a file annotated by the CLI see the same annotated subset.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Union

from tqdm.auto import tqdm

from .samples import Sample

__all__ = ["annotate_fraction"]


def annotate_fraction(samples: List[Sample], fractions: Dict[str, float], *, seed: int = 0,
                      progress: bool = True, target_rho: Union[None, float, Dict[str, float]] = None,
                      tokenizer=None) -> List[Sample]:
    """Spans from the rule extractors on a seeded fraction of each domain; no spans elsewhere.

    Parameters
    ----------
    samples : list of Sample
        Their ``domain`` (``"code"`` or ``"math"``) picks the extractor.
    fractions : dict
        ``{"code": 0.1, "math": 0.5}``: sample i of domain d is annotated when
        ``dllm_masks.extract.auto.selected(record_i, fractions[d], seed)``; a domain not named is
        not annotated.
    seed : int
    progress : bool
    target_rho : float or dict, optional
        Density budget of the rule spans (:mod:`dllm_masks.extract.budget`): a share in (0, 1]
        for every domain, or ``{"code": 0.42, "math": 0.37}``. None: every rule span.
    tokenizer : optional
        Measure the budget in its tokens (a ``TextTokenizer``: the answer's offsets are those of
        the training sequence); None: in characters.

    Returns
    -------
    list of Sample (copies): chosen samples carry the extracted spans, every other sample has
    ``spans=None`` (unannotated: uniform masking).
    """
    from ..extract.auto import DOMAINS, rule_spans, selected
    from ..extract.budget import measure_for, target_for

    if not isinstance(fractions, dict):
        raise TypeError(f"data.annotate: expected a dict domain -> fraction, got {type(fractions).__name__}")
    for dom, f in fractions.items():
        if dom not in DOMAINS:
            raise ValueError(f"data.annotate: no rule extractor for domain {dom!r} (known: {', '.join(DOMAINS)})")
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise ValueError(f"data.annotate: fraction of {dom!r} must be in [0, 1], got {f!r}")
    for dom in DOMAINS:
        target_for(target_rho, dom, "data.target_rho")  # validates
    out = []
    for s in tqdm(samples, desc="annotate", disable=not progress, leave=False):
        rec = {"prompt": s.prompt, "answer": s.answer, "id": s.meta.get("id")}
        chosen = s.domain in fractions and selected(rec, fractions[s.domain], seed)
        if chosen:
            target = target_for(target_rho, s.domain, "data.target_rho")
            m = measure_for(tokenizer, s.answer) if target is not None else None
            spans = [tuple(x) for x in rule_spans(s.prompt, s.answer, s.domain, target_rho=target, measure=m)]
        else:
            spans = None
        out.append(replace(s, spans=spans))
    return out
