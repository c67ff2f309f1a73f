"""Triton GPU kernels, installed as ``dllm_masks.triton_kernels`` (docs/design.md §10)."""
