// The priority_mask kernel compiled for x86-64-v4 (AVX-512 F/BW/DQ/VL): the same source as the
// baseline build (priority_mask_kernel.h), chosen at run time by CPUs that have it. Measured on
// one EPYC core at 1M tokens, the whole kernel runs about 30 % faster than the SSE2 baseline
// (Philox on 16 lanes, byte-to-int64 selects with vpmovzx instead of unpack chains).
// Results are bit-identical: integer work, and float64 rates with contraction off
// (-ffp-contract=off holds for every object, so no FMA is formed here either).
#include "priority_mask_ctx.h"  // every shared header, before the target region

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define DLLM_MASKS_HAVE_AVX512 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define DLLM_MASKS_KERNEL_ENTRY priority_mask_kernel_avx512
#define DLLM_MASKS_AVX512_INTRINSICS 1  // philox.h, priority_mask_weights.inc: 512-bit intrinsics
#include "priority_mask_kernel.h"
#undef DLLM_MASKS_AVX512_INTRINSICS
#undef DLLM_MASKS_KERNEL_ENTRY
#pragma GCC pop_options
#endif

namespace dllm_masks {
namespace detail {

#if defined(DLLM_MASKS_HAVE_AVX512)
bool have_avx512_kernel() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("x86-64-v4");
}
#else
void priority_mask_kernel_avx512(const Ctx& c) { priority_mask_kernel_baseline(c); }
bool have_avx512_kernel() { return false; }
#endif

}  // namespace detail
}  // namespace dllm_masks
