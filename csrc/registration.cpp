// dllm_masks._C: registers the CPU kernels into the ops whose schemas dllm_masks/ops.py defines
// (the schema lives in Python, so the op exists even when this extension did not build), and
// exposes them as plain functions for backend="cpp".
#include <torch/extension.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <vector>

#include "philox.h"
#include "priority_mask.h"

namespace {

// For tests: one Philox4x32-10 call, and draws in the counter layout of docs/design.md §4 through the
// kernels' own block evaluation (philox_fill).
std::array<uint32_t, 4> philox_call(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  const uint32_t ctr[4] = {c0, c1, c2, c3};
  std::array<uint32_t, 4> out;
  dllm_masks::philox4x32_10(ctr, k0, k1, out.data());
  return out;
}

std::vector<uint32_t> philox_draws(uint64_t seed, uint64_t seq_key, uint32_t stream, int64_t start, int64_t count) {
  TORCH_CHECK_VALUE(start >= 0 && count >= 0 && count <= (int64_t(1) << 24) && start + count <= (int64_t(1) << 33),
                    "philox_draws: need 0 <= start, 0 <= count <= 2^24 and start + count <= 2^33");
  std::vector<uint32_t> scratch(size_t(count + 4 * dllm_masks::kLanes + 8));
  const uint32_t* r = dllm_masks::philox_fill(dllm_masks::PhiloxStream(seed, seq_key, stream), start, count, scratch.data());
  return std::vector<uint32_t>(r, r + count);
}

// Word 0 of Philox call (j, key lo, key hi, stream) for segment j < counts[b] of every key keys[b],
// keys in order: the keyed σ draws of docs/design.md §4 (dllm_masks.schedules.keyed_uniform, whose
// torch form is the oracle). int64 [Σ counts], each value in [0, 2^32).
at::Tensor keyed_words(const at::Tensor& keys, const at::Tensor& counts, int64_t k0, int64_t k1, int64_t stream) {
  TORCH_CHECK_VALUE(keys.device().is_cpu() && counts.device().is_cpu(), "keyed_words: keys and counts must be CPU tensors");
  TORCH_CHECK_TYPE(keys.scalar_type() == at::kLong && counts.scalar_type() == at::kLong,
                   "keyed_words: keys and counts must be int64");
  TORCH_CHECK_VALUE(keys.dim() == 1 && counts.dim() == 1 && keys.numel() == counts.numel(),
                    "keyed_words: keys and counts must be 1-D of the same length");
  constexpr int64_t kWord = int64_t(1) << 32;
  TORCH_CHECK_VALUE(k0 >= 0 && k0 < kWord && k1 >= 0 && k1 < kWord && stream >= 0 && stream < kWord,
                    "keyed_words: k0, k1 and stream must lie in [0, 2^32)");
  const at::Tensor kc = keys.contiguous(), cc = counts.contiguous();
  const int64_t* key = kc.data_ptr<int64_t>();
  const int64_t* cnt = cc.data_ptr<int64_t>();
  const int64_t B = kc.numel();
  std::vector<int64_t> start(size_t(B) + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(cnt[b] >= 0 && cnt[b] <= kWord, "keyed_words: counts must lie in [0, 2^32], got ", cnt[b]);
    start[size_t(b) + 1] = start[size_t(b)] + cnt[b];
    TORCH_CHECK_VALUE(start[size_t(b) + 1] <= (int64_t(1) << 40), "keyed_words: more than 2^40 segments");
  }
  at::Tensor out = at::empty({start[size_t(B)]}, kc.options());
  int64_t* o = out.data_ptr<int64_t>();
  // keys per task: about 4096 segments' worth, from the mean count per key
  const int64_t per_key = std::max<int64_t>(1, start[size_t(B)] / std::max<int64_t>(1, B));
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / per_key), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const uint64_t k = uint64_t(key[b]);
      int64_t* dst = o + start[size_t(b)];
      for (int64_t j = 0; j < cnt[b]; ++j) {
        const uint32_t ctr[4] = {uint32_t(j), uint32_t(k), uint32_t(k >> 32), uint32_t(stream)};
        uint32_t w[4];
        dllm_masks::philox4x32_10(ctr, uint32_t(k0), uint32_t(k1), w);
        dst[j] = int64_t(w[0]);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dllm_masks, CPU, m) {
  m.impl("priority_mask", &dllm_masks::priority_mask_cpu);
  m.impl("priority_mask.out", &dllm_masks::priority_mask_out_cpu);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dllm-masks C++ CPU kernels (Philox4x32-10, OpenMP over segments)";
  m.def("priority_mask", &dllm_masks::priority_mask_cpu,
        "priority_mask on CPU tensors, with the normalized arguments of the op dllm_masks::priority_mask "
        "(see dllm_masks.reference.priority_mask_ref); returns (noisy_ids, masked, labels, loss_weight, rates).",
        pybind11::arg("input_ids"), pybind11::arg("cu_seqlens"), pybind11::arg("sigma"), pybind11::arg("priority"),
        pybind11::arg("maskable"), pybind11::arg("prompt_lens"), pybind11::arg("sample_ids"), pybind11::arg("rng"),
        pybind11::arg("weight"), pybind11::arg("block_size"), pybind11::arg("num_segments"), pybind11::arg("exact"),
        pybind11::arg("complementary"), pybind11::arg("loss_weight_mode"), pybind11::arg("mask_token_id"));
  m.def("priority_mask_out", &dllm_masks::priority_mask_out_cpu,
        "The out-variant (dllm_masks::priority_mask.out): the same arguments, then the buffers noisy, masked, "
        "labels, loss_weight, rates (keywords), written in place; returns None.",
        pybind11::arg("input_ids"), pybind11::arg("cu_seqlens"), pybind11::arg("sigma"), pybind11::arg("priority"),
        pybind11::arg("maskable"), pybind11::arg("prompt_lens"), pybind11::arg("sample_ids"), pybind11::arg("rng"),
        pybind11::arg("weight"), pybind11::arg("block_size"), pybind11::arg("num_segments"), pybind11::arg("exact"),
        pybind11::arg("complementary"), pybind11::arg("loss_weight_mode"), pybind11::arg("mask_token_id"),
        pybind11::kw_only(), pybind11::arg("noisy"), pybind11::arg("masked"), pybind11::arg("labels"),
        pybind11::arg("loss_weight"), pybind11::arg("rates"));
  m.def("philox4x32_10", &philox_call, "One Philox4x32-10 call (tests): (c0, c1, c2, c3, k0, k1) -> 4 words.");
  m.def("philox_draws", &philox_draws,
        "Draws of positions [start, start + count) of one sequence and stream (docs/design.md §4; tests).",
        pybind11::arg("seed"), pybind11::arg("seq_key"), pybind11::arg("stream"), pybind11::arg("start"),
        pybind11::arg("count"));
  m.def("keyed_words", &keyed_words,
        "Word 0 of Philox (j, key lo, key hi, stream) for segments j < counts[b] of keys[b] (keyed σ draws).",
        pybind11::arg("keys"), pybind11::arg("counts"), pybind11::arg("k0"), pybind11::arg("k1"), pybind11::arg("stream"));
  m.def("kernel_isa", &dllm_masks::kernel_isa,
        "Instruction set of the kernel build this CPU runs: 'avx512' (x86-64-v4) or 'baseline' "
        "(DLLM_MASKS_CPU_ISA=baseline forces the baseline).");
}
