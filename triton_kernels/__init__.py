"""Triton GPU kernels, installed as ``dllm_masks.triton_kernels`` (DESIGN §6)."""
