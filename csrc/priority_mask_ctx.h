// priority_mask on CPU: what the argument checks (priority_mask.cpp) hand to the kernel, which is
// compiled once per instruction set (priority_mask_kernel.h, included by priority_mask.cpp for the
// baseline and by priority_mask_avx512.cpp for x86-64-v4) and chosen when called.
//
// Every header the kernel uses is included here, before any `#pragma GCC target` region: inline
// functions of shared headers must not be compiled for AVX-512 in one object and linked into
// code that runs on CPUs without it.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace dllm_masks {
namespace detail {

// Everything the parallel loop reads or writes; every index it will use was checked before.
struct Ctx {  // plain data: no member functions, so nothing of it is compiled per ISA
  int64_t T = 0, S = 0;
  const int64_t* cu = nullptr;         // [B+1]
  const int64_t* seg_start = nullptr;  // [S+1] first token of each segment, seg_start[S] = T
  const int64_t* seg_seq = nullptr;    // [S] sequence of each segment
  const uint8_t* prio = nullptr;       // [T] or null
  const float* weights = nullptr;      // [T] float32 importance weights (docs/importance.md) or null
  const uint8_t* maskable = nullptr;   // [T] or null
  const int64_t* plen = nullptr;       // [B] or null
  const int64_t* sample_ids = nullptr; // [B] or null
  uint64_t seed = 0, seq_offset = 0;
  const float* sigma = nullptr;
  bool sigma_bcast = true;
  double w = 1.0;
  bool exact = false, complementary = false;
  bool streaming_stores = false;  // outputs larger than the caches: non-temporal stores
  int64_t lw_mode = 0;  // kLossWeightNone / kLossWeightSigma / kLossWeightToken
  int64_t mask_id = 0;
  bool ids32 = false;  // input_ids (and noisy_ids) int32, else int64
  const void* ids = nullptr;
  void* noisy = nullptr;
  bool* masked = nullptr;
  int64_t* labels = nullptr;
  float* lw = nullptr;
  double* rates = nullptr;
};

// The op's loss_weight_mode (dllm_masks.reference.LOSS_WEIGHT_MODES).
constexpr int64_t kLossWeightNone = 0, kLossWeightSigma = 1, kLossWeightToken = 2;

constexpr int64_t kStreamBytes = int64_t(16) << 20;  // outputs from 16 MiB on bypass the caches

// The kernel for the baseline ISA, and for x86-64-v4 (AVX-512) where it was built; the variant
// a call uses is chosen by priority_mask_cpu (kernel_isa()).
void priority_mask_kernel_baseline(const Ctx& c);
void priority_mask_kernel_avx512(const Ctx& c);
bool have_avx512_kernel();

}  // namespace detail
}  // namespace dllm_masks
