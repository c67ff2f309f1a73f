// dllm_masks._C: registers the CPU kernels into the ops whose schemas dllm_masks/ops.py defines
// (the schema lives in Python, so the op exists even when this extension did not build), and
// exposes them as plain functions for backend="cpp".
#include <torch/extension.h>
#include <torch/library.h>

#include "priority_mask.h"

TORCH_LIBRARY_IMPL(dllm_masks, CPU, m) { m.impl("priority_mask", &dllm_masks::priority_mask_cpu); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dllm-masks C++ CPU kernels (Philox4x32-10, OpenMP over segments)";
  m.def("priority_mask", &dllm_masks::priority_mask_cpu,
        "priority_mask on CPU tensors, with the normalized arguments of the op dllm_masks::priority_mask "
        "(see dllm_masks.reference.priority_mask_ref); returns (noisy_ids, masked, labels, loss_weight, rates).",
        pybind11::arg("input_ids"), pybind11::arg("cu_seqlens"), pybind11::arg("sigma"), pybind11::arg("priority"),
        pybind11::arg("maskable"), pybind11::arg("prompt_lens"), pybind11::arg("sample_ids"), pybind11::arg("rng"),
        pybind11::arg("weight"), pybind11::arg("block_size"), pybind11::arg("num_segments"), pybind11::arg("exact"),
        pybind11::arg("complementary"), pybind11::arg("loss_weight_mode"), pybind11::arg("mask_token_id"));
  m.def("kernel_isa", &dllm_masks::kernel_isa,
        "Instruction set of the kernel build this CPU runs: 'avx512' (x86-64-v4) or 'baseline' "
        "(DLLM_MASKS_CPU_ISA=baseline forces the baseline).");
}
