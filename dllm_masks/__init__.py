"""dllm-masks: fused, exact and reproducible masking for training masked-diffusion language models.

>>> import dllm_masks as dm
>>> out = dm.priority_mask(ids, sigma, cu_seqlens=cu, priority=prio, weight=2.0,
...                        complementary=True, mask_token_id=MASK, seed=0)
"""
from .ops import MaskedBatch, available_backends, num_segments, priority_mask
from .rates import solve_rates
from .schedules import keyed_sigma, sample_sigma
from .stats import MaskStats, mask_stats

__version__ = "0.1.0"

__all__ = ["priority_mask", "MaskedBatch", "solve_rates", "sample_sigma", "keyed_sigma", "num_segments", "available_backends",
           "mask_stats", "MaskStats"]
