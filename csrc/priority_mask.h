// dllm_masks::priority_mask on CPU tensors: the C++ kernel behind the op of dllm_masks/ops.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>

namespace dllm_masks {

// The op's normalized arguments (see SCHEMA in dllm_masks/ops.py and priority_mask_ref in
// dllm_masks/reference.py) and the same 5-tuple: noisy_ids [V*T], masked [V*T], labels [V*T],
// loss_weight [V*T] (or [0]), rates [S, 2]. Every argument is checked (TypeError / ValueError
// naming it) before any data pointer is dereferenced by the kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> priority_mask_cpu(
    const at::Tensor& input_ids, const at::Tensor& cu_seqlens, const at::Tensor& sigma,
    const std::optional<at::Tensor>& priority, const std::optional<at::Tensor>& maskable,
    const std::optional<at::Tensor>& prompt_lens, const std::optional<at::Tensor>& sample_ids,
    const at::Tensor& rng, double weight, int64_t block_size, int64_t num_segments, bool exact,
    bool complementary, int64_t loss_weight_mode, int64_t mask_token_id);

// The out-variant (dllm_masks::priority_mask.out): the same arguments, then the five outputs as
// caller-owned buffers of exactly the shapes and dtypes priority_mask_cpu returns (contiguous,
// sharing no memory with each other or with the inputs: checked), written in place.
void priority_mask_out_cpu(
    const at::Tensor& input_ids, const at::Tensor& cu_seqlens, const at::Tensor& sigma,
    const std::optional<at::Tensor>& priority, const std::optional<at::Tensor>& maskable,
    const std::optional<at::Tensor>& prompt_lens, const std::optional<at::Tensor>& sample_ids,
    const at::Tensor& rng, double weight, int64_t block_size, int64_t num_segments, bool exact,
    bool complementary, int64_t loss_weight_mode, int64_t mask_token_id, const at::Tensor& noisy,
    const at::Tensor& masked, const at::Tensor& labels, const at::Tensor& loss_weight, const at::Tensor& rates);

// The instruction set of the kernel build that calls on this CPU take: "avx512" (x86-64-v4) or
// "baseline"; DLLM_MASKS_CPU_ISA=baseline forces the baseline.
std::string kernel_isa();

}  // namespace dllm_masks
