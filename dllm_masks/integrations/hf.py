"""Hugging Face ``transformers.Trainer`` integration: a collator for SFT features and a trainer
whose loss is the masked-diffusion loss of :class:`dllm_masks.Masker` masks.

>>> masker = dm.Masker(tok.mask_token_id, weight=2.0, complementary=True, sigma=(0.3, 0.8))
>>> trainer = DiffusionTrainer(model=model, args=args, train_dataset=ds, masker=masker,
...                            data_collator=DiffusionCollator(pad_token_id=tok.pad_token_id),
...                            loss_norm="sequence")
>>> trainer.train()

How a step runs: :meth:`DiffusionTrainer.get_batch_samples` masks the step's micro-batches (the
masker's call counter gives fresh, rank-distinct masks) and counts the step's normalizer D over
all of them and every rank (it is HF's ``num_items_in_batch``); :meth:`compute_loss` builds the
model input (the noisy views with a bidirectional 4-D mask, or with ``block_size`` the rows
``[view 0 | … | x_0]`` with the block-diffusion 4-D mask of
:func:`dllm_masks.blockdiff.attention_mask_4d`), and returns ``Σ c·CE / D`` times the number of
processes (DDP/FSDP average gradients over ranks). The sum over micro-batches and ranks is then
the gradient of one big batch. The masker's state is saved in each checkpoint and restored on
``resume_from_checkpoint``, so a resumed run draws the masks of the uninterrupted one.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
import transformers

from .. import validation
from ..loss import NORMS, diffusion_loss, loss_normalizer
from ..masker import Masker
from ..ops import MaskedBatch
from .recipes import bidirectional_mask_4d, model_inputs

__all__ = ["DiffusionCollator", "DiffusionTrainer", "bidirectional_mask_4d", "MASKER_STATE"]

MASKER_STATE = "dllm_masks_masker.json"
_FIELDS = ("noisy_ids", "labels", "masked", "loss_weight", "cu_seqlens", "rates", "sigma", "maskable")
_EXTRA_COLUMNS = ["prompt_len", "priority", "priority_spans", "priority_token_spans", "offset_mapping", "sample_id"]


def _spans_to_tokens(n: int, offsets, spans) -> List[int]:
    """0/1 per token: 1 where the token's character range [a, b) overlaps a span [s, e)."""
    out = [0] * n
    for i, (a, b) in enumerate(offsets[:n]):
        if b > a and any(a < e and s < b for s, e in spans):
            out[i] = 1
    return out


class DiffusionCollator:
    """Pad HF-tokenized SFT features into a diffusion batch.

    Each feature is a dict with ``input_ids`` (list of int) and either ``labels`` (−100 on the
    prompt, the usual SFT convention) or ``prompt_len`` (int); optionally the information-dense
    tokens as ``priority`` (0/1 per token), ``priority_token_spans`` ([start, end) token ranges),
    or ``priority_spans`` ([start, end) character ranges, with the tokenizer's ``offset_mapping``),
    and ``sample_id`` (int, for ``DiffusionTrainer(use_sample_ids=True)``).

    Parameters
    ----------
    pad_token_id : int
    max_length : int, optional
        Truncate longer features.
    pad_to_multiple_of : int, optional
        Round the padded length up (e.g. to the block size).

    Returns (from ``__call__``)
    -------
    dict of tensors: ``input_ids`` int64 [B, L] (right padded), ``attention_mask`` int64 [B, L],
    ``labels`` int64 [B, L] (−100 on prompt and padding), and where given ``priority`` bool [B, L]
    and ``sample_id`` int64 [B].
    """

    def __init__(self, pad_token_id: int, *, max_length: Optional[int] = None,
                 pad_to_multiple_of: Optional[int] = None):
        self.pad_token_id = validation.check_int("pad_token_id", pad_token_id)
        self.max_length = None if max_length is None else validation.check_int("max_length", max_length, low=1)
        self.multiple = None if pad_to_multiple_of is None else validation.check_int("pad_to_multiple_of", pad_to_multiple_of, low=1)

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        if not features:
            raise ValueError("features: empty batch")
        rows = []
        for i, f in enumerate(features):
            ids = list(f["input_ids"])[: self.max_length]
            n = len(ids)
            if "labels" in f and f["labels"] is not None:
                labels = list(f["labels"])[:n]
                if len(labels) != n:
                    raise ValueError(f"features: feature {i} has {len(labels)} labels for {n} input_ids")
            elif "prompt_len" in f:
                p = min(int(f["prompt_len"]), n)
                labels = [-100] * p + ids[p:]
            else:
                raise ValueError(f"features: feature {i} needs labels (-100 on the prompt) or prompt_len")
            prio = None
            if f.get("priority") is not None:
                prio = [int(x != 0) for x in list(f["priority"])[:n]]
            elif f.get("priority_token_spans") is not None:
                prio = [0] * n
                for s, e in f["priority_token_spans"]:
                    for j in range(max(0, s), min(n, e)):
                        prio[j] = 1
            elif f.get("priority_spans") is not None:
                if f.get("offset_mapping") is None:
                    raise ValueError(f"features: feature {i} has character priority_spans but no offset_mapping "
                                     "(tokenize with return_offsets_mapping=True)")
                prio = _spans_to_tokens(n, f["offset_mapping"], f["priority_spans"])
            rows.append((ids, labels, prio, f.get("sample_id")))
        L = max(len(r[0]) for r in rows)
        if self.multiple:
            L = -(-L // self.multiple) * self.multiple
        B = len(rows)
        out = {"input_ids": torch.full((B, L), self.pad_token_id, dtype=torch.int64),
               "attention_mask": torch.zeros(B, L, dtype=torch.int64),
               "labels": torch.full((B, L), -100, dtype=torch.int64)}
        has_prio = any(r[2] is not None for r in rows)
        if has_prio:
            out["priority"] = torch.zeros(B, L, dtype=torch.bool)
        for b, (ids, labels, prio, _) in enumerate(rows):
            n = len(ids)
            out["input_ids"][b, :n] = torch.tensor(ids, dtype=torch.int64)
            out["attention_mask"][b, :n] = 1
            out["labels"][b, :n] = torch.tensor(labels, dtype=torch.int64)
            if prio is not None:
                out["priority"][b, :n] = torch.tensor(prio, dtype=torch.bool)
        if all(r[3] is not None for r in rows):
            out["sample_id"] = torch.tensor([int(r[3]) for r in rows], dtype=torch.int64)
        return out


class DiffusionTrainer(transformers.Trainer):
    """``transformers.Trainer`` with the masked-diffusion loss.

    Parameters (besides ``transformers.Trainer``'s)
    ----------
    masker : dllm_masks.Masker
        Its ``block_size`` selects block diffusion (BD3-LM rows ``[views | x_0]``); None: MDLM
        (the noisy views only, bidirectional attention).
    loss_norm : {"masked", "maskable", "sequence", "batch"}
        See :data:`dllm_masks.loss.NORMS`.
    shift : bool
        Next-token-shifted logits (Dream / DiffuCoder style models).
    use_sample_ids : bool
        Key masks by the batch's ``sample_id`` (masks then depend on (seed, sample) only).
    attention_block_size : int, optional
        Block size of the attention rows (default: the masker's ``block_size``).

    The model must take ``input_ids``, ``attention_mask`` (a 4-D mask is used as given; SDPA
    and eager attention accept it, flash-attention kernels do not) and ``position_ids``, and
    return ``.logits``.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the step's global normalizer

    def __init__(self, *args, masker: Masker, loss_norm: str = "sequence", shift: bool = False,
                 use_sample_ids: bool = False, attention_block_size: Optional[int] = None, **kwargs):
        if not isinstance(masker, Masker):
            raise TypeError(f"masker: expected a dllm_masks.Masker, got {type(masker).__name__}")
        validation.check_choice("loss_norm", loss_norm, tuple(NORMS))
        self.masker, self.loss_norm, self.shift, self.use_sample_ids = masker, loss_norm, bool(shift), use_sample_ids
        self.attention_block_size = attention_block_size if attention_block_size is not None else masker.block_size
        self._eval_masker = None
        super().__init__(*args, **kwargs)
        impl = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        if impl is not None and "flash" in str(impl):
            raise ValueError(f"model: attention implementation {impl!r} ignores 4-D masks; use 'sdpa' or 'eager'")

    # -- data ----------------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [c for c in _EXTRA_COLUMNS
                                                                   if c not in self._signature_columns]

    def _mask(self, masker: Masker, inputs: Dict[str, Any]) -> MaskedBatch:
        ids = inputs["input_ids"]
        kw = {"attention_mask": inputs.get("attention_mask"), "priority": inputs.get("priority")}
        if inputs.get("labels") is not None:
            kw["labels"] = inputs["labels"]
        if self.use_sample_ids:
            if inputs.get("sample_id") is None:
                raise ValueError("inputs: use_sample_ids=True needs a sample_id per example")
            kw["sample_ids"] = inputs["sample_id"]
        return masker(ids, **kw)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches, masked, and the step's normalizer D over every rank."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        local = 0.0
        for b in batches:
            mb = self._mask(self.masker, b)
            for name in _FIELDS:
                value = getattr(mb, name)
                if value is not None:
                    b[f"dm_{name}"] = value
            local += loss_normalizer(mb, self.loss_norm)
        total = torch.tensor(local, dtype=torch.float64, device=device)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return batches, total

    @staticmethod
    def _masked_batch(inputs: Dict[str, Any]) -> Optional[MaskedBatch]:
        if "dm_noisy_ids" not in inputs:
            return None
        return MaskedBatch(**{name: inputs.get(f"dm_{name}") for name in _FIELDS})

    # -- loss ----------------------------------------------------------------------------------
    def _model_inputs(self, model, inputs, mb: MaskedBatch):
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
        dtype = next(model.parameters()).dtype if impl == "eager" else torch.bool
        return model_inputs(inputs["input_ids"], inputs.get("attention_mask"), mb,
                            block_size=self.attention_block_size, dtype=dtype)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mb = self._masked_batch(inputs)
        if mb is None:  # evaluation: a separate mask stream, restarted at each evaluate()
            if self._eval_masker is None:
                self._eval_masker = self._fresh_eval_masker()
            mb = self._mask(self._eval_masker, inputs)
            num_items_in_batch = None
        outputs = model(**self._model_inputs(model, inputs, mb), use_cache=False)
        logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
        if num_items_in_batch is not None:
            loss = diffusion_loss(logits, mb, norm=self.loss_norm, shift=self.shift, normalizer=num_items_in_batch)
            loss = loss * self.accelerator.num_processes
        else:
            loss = diffusion_loss(logits, mb, norm=self.loss_norm, shift=self.shift)
        return (loss, outputs) if return_outputs else loss

    def _fresh_eval_masker(self) -> Masker:
        m = copy.copy(self.masker)
        m.seed = self.masker.seed ^ 0x5EED5EED
        m.step = 0
        return m

    def evaluate(self, *args, **kwargs):
        """``transformers.Trainer.evaluate`` on masks of their own stream, the same at every call."""
        self._eval_masker = self._fresh_eval_masker()
        return super().evaluate(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The diffusion loss only (logits of the noisy views do not line up with ``labels``)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- checkpoints ---------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial),
                              f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            with open(os.path.join(folder, MASKER_STATE), "w") as fh:
                json.dump(self.masker.state_dict(), fh)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``transformers.Trainer.train``; on resume, the masker continues from the checkpoint's state
        (loaded before the first batch is masked)."""
        ckpt = resume_from_checkpoint
        if isinstance(ckpt, bool) and ckpt:
            ckpt = transformers.trainer_utils.get_last_checkpoint(self.args.output_dir)
        if isinstance(ckpt, str):
            path = os.path.join(ckpt, MASKER_STATE)
            if os.path.isfile(path):
                with open(path) as fh:
                    self.masker.load_state_dict(json.load(fh))
        return super().train(resume_from_checkpoint, *args, **kwargs)
