"""From a data config to tokenized train and held-out sets: load, annotate a seeded fraction per
domain, split, tokenize (compacting the vocabulary if asked), and fingerprint the result."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import List

import torch

from .samples import Sample, load_samples
from .tokenize import CompactTokenizer, TokenizedSample, load_tokenizer, tokenize_samples

__all__ = ["SFTData", "build_data", "split_samples"]


@dataclass
class SFTData:
    """Everything a run reads from its data.

    Attributes
    ----------
    tokenizer : TextTokenizer or CompactTokenizer
    train, eval : list of TokenizedSample
        ``index`` points into ``train_samples`` / ``eval_samples``.
    train_samples, eval_samples : list of Sample
        The text (and evaluation metadata) behind them.
    digest : str
        SHA-256 over the tokenized training set: a resumed run must see the same data.
    dropped : int
        Samples longer than ``max_length``.
    """

    tokenizer: object
    train: List[TokenizedSample]
    eval: List[TokenizedSample]
    train_samples: List[Sample]
    eval_samples: List[Sample]
    digest: str
    dropped: int


def split_samples(samples: List[Sample], fraction: float, seed: int):
    """Seeded split into (train, held-out) with ``round(fraction · N)`` held out."""
    n_eval = int(round(fraction * len(samples)))
    if n_eval == 0:
        return list(samples), []
    g = torch.Generator().manual_seed(seed + 7)
    perm = torch.randperm(len(samples), generator=g).tolist()
    held = set(perm[:n_eval])
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def _digest(seqs: List[TokenizedSample], tok_name: str, vocab: int) -> str:
    h = hashlib.sha256(f"{tok_name}|{vocab}|{len(seqs)}".encode())
    for s in seqs:
        h.update(s.ids.numpy().tobytes())
        h.update(s.prompt_len.to_bytes(4, "little"))
        h.update(s.priority.numpy().tobytes())
    return h.hexdigest()


def build_data(data_cfg, block_size: int, seed: int, *, progress: bool = True, log=None) -> SFTData:
    """Load, annotate, split and tokenize the samples a :class:`DataConfig` names.

    Parameters
    ----------
    data_cfg : DataConfig
    block_size : int
        For rounding sequences up with ``<eos>`` (``data.round_to_block``).
    seed : int
        Seeds the held-out split and the annotated fraction.
    progress : bool
    log : callable, optional
        Receives one-line status messages.
    """
    samples = load_samples(data_cfg.source, split=data_cfg.split)
    if not samples:
        raise ValueError("data.source: no samples")
    if data_cfg.eval_source is not None:
        train_s, eval_s = samples, load_samples(data_cfg.eval_source)
    else:
        train_s, eval_s = split_samples(samples, data_cfg.eval_fraction, seed)
    tok = load_tokenizer(data_cfg.tokenizer, eos_token=data_cfg.eos_token, mask_token=data_cfg.mask_token)
    if data_cfg.annotate is not None:
        from .annotate import annotate_fraction

        # a density budget counts the answer's tokens (tok's offsets, those of the sequences)
        rho = dict(target_rho=data_cfg.target_rho, tokenizer=tok)
        train_s = annotate_fraction(train_s, data_cfg.annotate, seed=seed, progress=progress, **rho)
        # held-out samples are annotated in full: their priority bits only split the held-out
        # accuracy into dense tokens and the rest (held-out masks are uniform)
        eval_s = annotate_fraction(eval_s, {d: 1.0 for d in data_cfg.annotate}, seed=seed, progress=progress, **rho)
        if log:
            n = sum(s.spans is not None for s in train_s)
            log(f"annotated {n}/{len(train_s)} training samples with the rule extractors "
                f"({', '.join(f'{k} {v:.0%}' for k, v in data_cfg.annotate.items())})"
                + (f", density budget {data_cfg.target_rho}" if data_cfg.target_rho is not None else ""))
    if data_cfg.compact_vocab:
        used = set()
        for s in train_s + eval_s:
            used.update(tok.encode(s.prompt)[0])
            used.update(tok.encode(s.answer)[0])
        tok = CompactTokenizer(tok, used)
    K = block_size if data_cfg.round_to_block else None
    train = tokenize_samples(train_s, tok, block_size=K, max_length=data_cfg.max_length, progress=progress)
    ev = tokenize_samples(eval_s, tok, block_size=K, max_length=data_cfg.max_length, progress=progress)
    dropped = len(train_s) + len(eval_s) - len(train) - len(ev)
    if not train:
        raise ValueError(f"data.max_length: every training sample is longer than {data_cfg.max_length} tokens")
    return SFTData(tok, train, ev, train_s, eval_s, _digest(train, tok.name, tok.vocab_size), dropped)

