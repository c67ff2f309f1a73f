"""SFT data: samples (JSONL, ``datasets``, bundled), tokenization with priority bits, packing into
varlen batches, and masking collation for block-diffusion training."""
from .collate import MaskConfig, StepDataset, TrainBatch, keyed_sigma, mask_batch
from .pack import PackedBatch, StepPlan, pack
from .samples import Sample, load_jsonl, load_samples, save_jsonl
from .tokenize import CompactTokenizer, TextTokenizer, TokenizedSample, load_tokenizer, tokenize_samples

__all__ = ["Sample", "load_jsonl", "load_samples", "save_jsonl", "TextTokenizer", "CompactTokenizer",
           "load_tokenizer", "TokenizedSample", "tokenize_samples", "PackedBatch", "pack", "StepPlan",
           "MaskConfig", "keyed_sigma", "TrainBatch", "mask_batch", "StepDataset"]
