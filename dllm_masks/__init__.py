"""dllm-masks: fused, exact and reproducible masking for training masked-diffusion language models.

>>> import dllm_masks as dm
>>> out = dm.priority_mask(ids, sigma, cu_seqlens=cu, priority=prio, weight=2.0,
...                        complementary=True, mask_token_id=MASK, seed=0)
"""
from .ops import MaskedBatch, available_backends, empty_masked_batch, num_segments, priority_mask
from .rates import solve_rates
from . import schedules
from .loss import diffusion_loss, loss_normalizer
from .masker import Masker
from .buffers import OutputPool
from .plan import MaskPlan
from .schedules import Schedule, keyed_sigma, sample_sigma
from .stats import MaskStats, mask_stats

__version__ = "0.1.0"

__all__ = ["priority_mask", "MaskedBatch", "empty_masked_batch", "solve_rates", "sample_sigma", "keyed_sigma",
           "num_segments", "available_backends", "Masker", "OutputPool", "MaskPlan", "diffusion_loss", "loss_normalizer", "schedules", "Schedule",
           "mask_stats", "MaskStats"]
