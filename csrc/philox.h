// Philox4x32-10 (Salmon et al., SC'11) with the counter layout of docs/design.md §4.
//
// One Philox call yields four 32-bit words, one for each of four neighbouring token positions:
// the token at position j of a sequence with key s draws
//   philox((j >> 2, s & 0xffffffff, s >> 32, stream), (seed & 0xffffffff, seed >> 32))[j & 3].
//
// philox_block() evaluates kLanes calls side by side: a loop over the lanes whose body runs the
// ten rounds, with 32x32->64 multiplies the compiler turns into vector multiplies (pmuludq;
// vpmuludq on zmm registers in the AVX-512 build: 0.67 vs 1.4 ns per draw on one EPYC core),
// then transposes the words back to position order.
#pragma once

#include <cstdint>

namespace dllm_masks {
// Internal linkage on purpose: the kernel is compiled once per instruction set (see
// priority_mask_kernel.h), and each object keeps its own copy of these functions.
namespace {

constexpr uint32_t kPhiloxA = 0xD2511F53u;  // multiplies c0
constexpr uint32_t kPhiloxB = 0xCD9E8D57u;  // multiplies c2
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

constexpr uint32_t kStreamBernoulli = 0;
constexpr uint32_t kStreamSelect = 1;

// One Philox4x32-10 call: ctr[4] -> out[4] under key (k0, k1). The scalar definition, kept for
// tests and for readers; the kernels use philox_fill().
inline void philox4x32_10(const uint32_t ctr[4], uint32_t k0, uint32_t k1, uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint64_t pa = uint64_t(kPhiloxA) * c0;
    const uint64_t pb = uint64_t(kPhiloxB) * c2;
    const uint32_t n0 = uint32_t(pb >> 32) ^ c1 ^ k0;
    const uint32_t n1 = uint32_t(pb);
    const uint32_t n2 = uint32_t(pa >> 32) ^ c3 ^ k1;
    const uint32_t n3 = uint32_t(pa);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// Identifies one random stream of one sequence: counter words 1..3 and the key.
struct PhiloxStream {
  uint32_t c1, c2, c3;  // sequence key low / high word, stream id
  uint32_t k0, k1;      // seed low / high word

  PhiloxStream(uint64_t seed, uint64_t seq_key, uint32_t stream)
      : c1(uint32_t(seq_key)), c2(uint32_t(seq_key >> 32)), c3(stream),
        k0(uint32_t(seed)), k1(uint32_t(seed >> 32)) {}
};

// Lanes evaluated side by side: 16 calls = 64 draws per block, 16 x 32-bit = one 512-bit vector.
constexpr int kLanes = 16;

// kLanes Philox calls for the groups g0, g0+1, ..., written as 4*kLanes words in position order:
// out[4*i + w] is word w of group g0 + i, the draw of position 4*(g0 + i) + w.
#if defined(DLLM_MASKS_AVX512_INTRINSICS)
// The AVX-512 build (priority_mask_avx512.cpp defines the macro inside its target region): the 16
// lanes in one register per counter word. Each 32x32->64 product is two vpmuludq (even and odd
// lanes) whose halves are blended back into lanes; left to itself the compiler widens the lanes to
// 64 bits and multiplies with vpmullq, three times the micro-ops.
static_assert(kLanes == 16, "one 512-bit register of 32-bit lanes");
inline void philox_block(const PhiloxStream& st, uint32_t g0, uint32_t* __restrict out) {
  const __m512i A = _mm512_set1_epi64(int64_t(kPhiloxA)), B = _mm512_set1_epi64(int64_t(kPhiloxB));
  __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(int(g0)),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i c1 = _mm512_set1_epi32(int(st.c1)), c2 = _mm512_set1_epi32(int(st.c2)), c3 = _mm512_set1_epi32(int(st.c3));
  uint32_t k0 = st.k0, k1 = st.k1;
  constexpr __mmask16 kOdd = 0xAAAA;
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const __m512i pa_e = _mm512_mul_epu32(c0, A), pa_o = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), A);
    const __m512i pb_e = _mm512_mul_epu32(c2, B), pb_o = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), B);
    const __m512i hi_a = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(pa_e, 32), pa_o);
    const __m512i lo_a = _mm512_mask_blend_epi32(kOdd, pa_e, _mm512_slli_epi64(pa_o, 32));
    const __m512i hi_b = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(pb_e, 32), pb_o);
    const __m512i lo_b = _mm512_mask_blend_epi32(kOdd, pb_e, _mm512_slli_epi64(pb_o, 32));
    c0 = _mm512_xor_si512(_mm512_xor_si512(hi_b, c1), _mm512_set1_epi32(int(k0)));
    c2 = _mm512_xor_si512(_mm512_xor_si512(hi_a, c3), _mm512_set1_epi32(int(k1)));
    c1 = lo_b;
    c3 = lo_a;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  // Transpose to position order: 128-bit block j of the result holds the four words of lane j.
  const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
  const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);  // lanes 4b, 4b+1
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);  // lanes 4b+2, 4b+3
  const __m512i x0 = _mm512_shuffle_i32x4(u0, u1, 0x44), x1 = _mm512_shuffle_i32x4(u2, u3, 0x44);  // blocks 0, 1
  const __m512i x2 = _mm512_shuffle_i32x4(u0, u1, 0xEE), x3 = _mm512_shuffle_i32x4(u2, u3, 0xEE);  // blocks 2, 3
  _mm512_storeu_si512(out + 0, _mm512_shuffle_i32x4(x0, x1, 0x88));
  _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(x0, x1, 0xDD));
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(x2, x3, 0x88));
  _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(x2, x3, 0xDD));
}
#else
inline void philox_block(const PhiloxStream& st, uint32_t g0, uint32_t* __restrict out) {
  // Lanes outside, rounds inside (unrolled): the lane loop has a straight-line body, which the
  // loop vectorizer maps to widening multiplies on whole vectors of lanes.
  for (int i = 0; i < kLanes; ++i) {
    uint32_t c0 = g0 + uint32_t(i), c1 = st.c1, c2 = st.c2, c3 = st.c3;
    uint32_t k0 = st.k0, k1 = st.k1;
#pragma GCC unroll 10
    for (int r = 0; r < kPhiloxRounds; ++r) {
      const uint64_t pa = uint64_t(kPhiloxA) * c0;
      const uint64_t pb = uint64_t(kPhiloxB) * c2;
      c0 = uint32_t(pb >> 32) ^ c1 ^ k0;
      c2 = uint32_t(pa >> 32) ^ c3 ^ k1;
      c1 = uint32_t(pb);
      c3 = uint32_t(pa);
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    out[4 * i + 0] = c0;
    out[4 * i + 1] = c1;
    out[4 * i + 2] = c2;
    out[4 * i + 3] = c3;
  }
}
#endif

// Draws of the positions [p, p + n) of one stream into out[0 .. n): out[i] is the draw of
// position p + i. `scratch` holds at least 4*kLanes*(ceil((n + 3) / (4*kLanes)) + 1) words; the
// draws are computed in whole blocks (positions outside [p, p + n) are computed and dropped).
// Returns a pointer into scratch where the draw of position p lies (no copy).
inline const uint32_t* philox_fill(const PhiloxStream& st, int64_t p, int64_t n, uint32_t* __restrict scratch) {
  const int64_t g_first = p >> 2;
  const int64_t g_end = (p + n + 3) >> 2;  // one past the last group
  uint32_t* o = scratch;
  for (int64_t g = g_first; g < g_end; g += kLanes, o += 4 * kLanes) {
    philox_block(st, uint32_t(g), o);
  }
  return scratch + (p & 3);
}

}  // namespace
}  // namespace dllm_masks
