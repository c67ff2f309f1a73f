"""Integrations with the trainers people use. Each submodule imports its framework on import, so
``import dllm_masks`` never imports transformers; import what you use:

* :mod:`dllm_masks.integrations.hf`: ``DiffusionCollator`` and ``DiffusionTrainer``
  (``transformers.Trainer``; accelerate, DDP, FSDP, DeepSpeed through it);
* :mod:`dllm_masks.integrations.recipes`: dllm's MDLM / BD3LM normalizations and a
  dFactory-style per-example SFT transform, built on ``dm.Masker`` and ``dm.diffusion_loss``.
"""
import importlib

__all__ = ["hf", "recipes"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
