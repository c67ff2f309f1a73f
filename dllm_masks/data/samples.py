"""SFT samples: ``prompt``, ``answer``, optional ``spans`` (character offsets into the answer) and
``domain``, read from JSONL, a Hugging Face ``datasets`` dataset (optional import), Python records
or the bundled demo data."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple, Union

from ..extract.spans import check_spans

__all__ = ["Sample", "sample_from_record", "load_jsonl", "load_hf", "load_samples", "save_jsonl"]

Span = Tuple[int, int]


@dataclass
class Sample:
    """One SFT example.

    Attributes
    ----------
    prompt : str
        Conditioning text; its tokens are never masked nor supervised.
    answer : str
        Target text; its tokens (and the ``<eos>`` after it) are maskable.
    spans : list of (int, int) or None
        Half-open character spans of information-dense regions of ``answer`` (priority tokens).
        None: the sample is not annotated (uniform masking). ``[]``: annotated, nothing dense.
    domain : str or None
        e.g. ``"code"`` or ``"math"``; used for evaluation and reporting.
    meta : dict
        Anything else the record carried (tests, entry points, final answers for evaluation).
    """

    prompt: str
    answer: str
    spans: Optional[List[Span]] = None
    domain: Optional[str] = None
    meta: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        """The JSONL record of this sample (``meta`` keys at the top level)."""
        rec = {"prompt": self.prompt, "answer": self.answer}
        if self.spans is not None:
            rec["spans"] = [list(s) for s in self.spans]
        if self.domain is not None:
            rec["domain"] = self.domain
        rec.update(self.meta)
        return rec


def sample_from_record(rec, where: str = "record", *, prompt_field: str = "prompt",
                       answer_field: str = "answer") -> Sample:
    """Validate one record (a mapping) into a :class:`Sample`.

    Raises
    ------
    TypeError, ValueError
        Naming ``where`` (e.g. ``"data.jsonl:12"``) and the offending field.
    """
    if not isinstance(rec, dict):
        try:
            rec = dict(rec)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: expected a mapping with '{prompt_field}' and '{answer_field}', "
                            f"got {type(rec).__name__}") from None
    for f in (prompt_field, answer_field):
        if f not in rec:
            raise ValueError(f"{where}: missing field '{f}'")
        if not isinstance(rec[f], str):
            raise TypeError(f"{where}: field '{f}' must be a string, got {type(rec[f]).__name__}")
    answer = rec[answer_field]
    spans = rec.get("spans")
    if spans is not None:
        spans = check_spans(f"{where}: spans", spans, length=len(answer))
    domain = rec.get("domain")
    if domain is not None and not isinstance(domain, str):
        raise TypeError(f"{where}: field 'domain' must be a string, got {type(domain).__name__}")
    meta = {k: v for k, v in rec.items() if k not in (prompt_field, answer_field, "spans", "domain")}
    return Sample(rec[prompt_field], answer, spans, domain, meta)


def load_jsonl(path: Union[str, os.PathLike], **fields) -> List[Sample]:
    """Read one JSON object per line (blank lines skipped) into samples.

    Parameters
    ----------
    path : str or PathLike
    **fields
        ``prompt_field`` / ``answer_field`` to read other column names.
    """
    if not os.path.isfile(path):
        raise ValueError(f"data.source: no such file {os.fspath(path)!r}")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            out.append(sample_from_record(rec, where, **fields))
    return out


def save_jsonl(samples: Iterable[Sample], path: Union[str, os.PathLike]) -> None:
    """Write samples as JSONL (the format :func:`load_jsonl` reads)."""
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.to_record(), ensure_ascii=False) + "\n")


def load_hf(dataset, split: Optional[str] = None, **fields) -> List[Sample]:
    """Samples from a Hugging Face ``datasets`` dataset (the package is an optional import).

    Parameters
    ----------
    dataset : datasets.Dataset, datasets.DatasetDict, or str
        A dataset object, or a local path saved with ``save_to_disk`` (nothing is downloaded).
    split : str, optional
        The split of a ``DatasetDict`` (default: ``"train"``).
    """
    if isinstance(dataset, (str, os.PathLike)):
        try:
            import datasets
        except ImportError:
            raise ValueError("data.source: 'hf:' sources need the optional package `datasets` "
                             "(pip install datasets)") from None
        if not os.path.exists(dataset):
            raise ValueError(f"data.source: {os.fspath(dataset)!r} is not a local dataset folder "
                             "(save one with Dataset.save_to_disk; hub downloads are not made at run time)")
        dataset = datasets.load_from_disk(os.fspath(dataset))
    cols = getattr(dataset, "column_names", None)
    if isinstance(cols, dict) or (cols is None and hasattr(dataset, "keys")):  # a DatasetDict
        split = split or "train"
        if split not in dataset:
            raise ValueError(f"data.split: {split!r} not in the dataset's splits {list(dataset.keys())}")
        dataset = dataset[split]
    return [sample_from_record(rec, f"dataset row {i}", **fields) for i, rec in enumerate(dataset)]


def load_samples(source, *, split: Optional[str] = None, **fields) -> List[Sample]:
    """Samples from any supported source.

    Parameters
    ----------
    source : str, PathLike, list of dict/Sample, or a datasets object
        ``"path.jsonl"``; ``"hf:PATH"`` (a ``datasets`` folder saved to disk); ``"bundled"`` or
        ``"bundled:N"`` (the demo data of :mod:`dllm_masks.data.bundled`: the 164 HumanEval
        problems and N generated GSM8K-style ones); a list of records or samples; a dataset.
    """
    if isinstance(source, (list, tuple)):
        return [s if isinstance(s, Sample) else sample_from_record(s, f"record {i}", **fields)
                for i, s in enumerate(source)]
    if isinstance(source, (str, os.PathLike)):
        s = os.fspath(source)
        if s.startswith("hf:"):
            return load_hf(s[3:], split, **fields)
        if s == "bundled" or s.startswith("bundled:"):
            from .bundled import bundled_samples

            n = s.partition(":")[2]
            if n and not n.isdigit():
                raise ValueError(f"data.source: 'bundled:N' takes the number of math samples, got {s!r}")
            return load_samples(list(bundled_samples(int(n)) if n else bundled_samples()))
        return load_jsonl(s, **fields)
    if hasattr(source, "column_names"):
        return load_hf(source, split, **fields)
    raise TypeError(f"data.source: expected a path, 'hf:PATH', 'bundled', a list of records or a dataset, "
                    f"got {type(source).__name__}")
