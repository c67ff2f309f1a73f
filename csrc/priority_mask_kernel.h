// The priority_mask CPU kernel proper: included once per instruction set (no include guard).
//
//   priority_mask.cpp          #define DLLM_MASKS_KERNEL_ENTRY priority_mask_kernel_baseline
//   priority_mask_avx512.cpp   the same under #pragma GCC target("arch=x86-64-v4")
//
// Everything here has internal linkage (an anonymous namespace, philox.h's too), so the two
// objects share no function compiled for different ISAs; only the entry point is exported.
// Its prerequisites come from priority_mask_ctx.h, included before any target region.
#ifndef DLLM_MASKS_KERNEL_ENTRY
#error "define DLLM_MASKS_KERNEL_ENTRY before including priority_mask_kernel.h"
#endif

#include "philox.h"
#include "priority_mask_ctx.h"

namespace dllm_masks {
namespace detail {
namespace {

constexpr int64_t kIgnoreIndex = -100;
// Tokens per decide/emit step: its byte buffers and draws live on the stack, in L1.
constexpr int64_t kChunk = 256;
// Draws held per sequence window: kChunk positions from any start, aligned down to a block.
constexpr int64_t kBlockPos = 4 * kLanes;  // positions per philox_block
constexpr int64_t kWindow = kChunk + kBlockPos;
constexpr int kBucketBits = 8;  // radix select of the exact sampling: 256 buckets of r's top bits
constexpr int kBuckets = 1 << kBucketBits;

// An array of n default-initialized T: in place up to N elements, on the heap beyond (small
// calls allocate nothing for their tables and per-thread state).
template <typename T, size_t N>
class SmallArray {
 public:
  explicit SmallArray(size_t n) { resize(n); }
  void resize(size_t n) {  // contents are not kept
    n_ = n;
    heap_.reset(n > N ? new T[n] : nullptr);
    p_ = n > N ? heap_.get() : local_;
  }
  SmallArray(const SmallArray&) = delete;
  SmallArray& operator=(const SmallArray&) = delete;
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }

 private:
  T local_[N];  // default-initialized: trivial T is left for the caller to write
  std::unique_ptr<T[]> heap_;
  T* p_ = local_;
  size_t n_ = 0;
};

enum class MaskMode { kAll, kPrompt, kTensor };

// torch.minimum / torch.maximum: NaN propagates (std::min / std::max would drop it).
inline double t_min(double a, double b) { return (a != a || b != b) ? std::numeric_limits<double>::quiet_NaN() : (b < a ? b : a); }
inline double t_max(double a, double b) { return (a != a || b != b) ? std::numeric_limits<double>::quiet_NaN() : (b > a ? b : a); }

struct Rates {
  double q0, q1;
};

// docs/design.md §3, the operations of dllm_masks/rates.py::_solve in the same order, each rounded.
Rates solve_rates(int64_t n, int64_t n1_count, float sigma, double w) {
  const double N = double(n);
  const double n1 = double(n1_count);
  const double n0 = N - n1;
  const double s = double(sigma);
  const double K = s * N;
  // The reference's last two overrides, taken first (they discard whatever the branches below give)
  if (N == 0.0) return {0.0, 0.0};
  if (n1 == 0.0 || n0 == 0.0) return {s, s};
  double q0, q1;
  if (w == 1.0) {
    q0 = s;
    q1 = s;
  } else if (std::isinf(w)) {
    q1 = t_min(1.0, K / n1);
    q0 = t_max(0.0, (K - n1) / n0);
  } else if (w == 0.0) {
    q0 = t_min(1.0, K / n0);
    q1 = t_max(0.0, (K - n0) / n1);
  } else {
    const double wn1 = n1 * w;  // w*n1 rounded, then + n0 rounded: no fma
    const double den = wn1 + n0;
    const double p = K / den;
    const double wp = p * w;
    if (w > 1.0) {
      const bool keep = wp <= 1.0;
      q0 = keep ? p : (K - n1) / n0;
      q1 = keep ? wp : 1.0;
    } else {
      const bool keep = p <= 1.0;
      q0 = keep ? p : 1.0;
      q1 = keep ? wp : (K - n0) / n1;
    }
  }
  return {q0, q1};
}

// Segments per batch of solve_rates_run(): the blocks of one draw chunk are solved together, in
// loops of this fixed length (one 512-bit vector of float64), unused entries holding n = 0.
constexpr int kRunSegs = 8;

// solve_rates() for kRunSegs segments at once (n, n1, σ per segment; w the call's): the same
// float64 operations in the same order, but every case of a segment computed and its own selected
// (as dllm_masks/rates.py does elementwise), so the loop has no branch that depends on the data:
// it vectorizes, the divisions of neighbouring blocks overlap, and no block pays a misprediction.
// w = inf and w = 0 (t_min / t_max with NaN propagation) take the scalar solve.
inline void solve_rates_run(const int64_t* __restrict n, const int64_t* __restrict n1c,
                            const float* __restrict sigma, double w, double* __restrict q0o,
                            double* __restrict q1o) {
  if (std::isinf(w) || w == 0.0) {
    for (int j = 0; j < kRunSegs; ++j) {
      const Rates R = solve_rates(n[j], n1c[j], sigma[j], w);
      q0o[j] = R.q0;
      q1o[j] = R.q1;
    }
    return;
  }
  if (w == 1.0) {
    for (int j = 0; j < kRunSegs; ++j) {
      const double N = double(n[j]), s = double(sigma[j]);
      q0o[j] = q1o[j] = N == 0.0 ? 0.0 : s;
    }
    return;
  }
  const bool above = w > 1.0;
  for (int j = 0; j < kRunSegs; ++j) {
    const double N = double(n[j]);
    const double n1 = double(n1c[j]);
    const double n0 = N - n1;
    const double s = double(sigma[j]);
    const double K = s * N;
    const double wn1 = n1 * w;  // w*n1 rounded, then + n0 rounded: no fma
    const double den = wn1 + n0;
    const double p = K / den;
    const double wp = p * w;
    const double alt0 = (K - n1) / n0;  // w > 1, w*p > 1 (n0 = 0 gives inf/NaN, overridden below)
    const double alt1 = (K - n0) / n1;  // w < 1, p > 1
    double q0, q1;
    if (above) {
      const bool keep = wp <= 1.0;
      q0 = keep ? p : alt0;
      q1 = keep ? wp : 1.0;
    } else {
      const bool keep = p <= 1.0;
      q0 = keep ? p : 1.0;
      q1 = keep ? wp : alt1;
    }
    const bool one_group = n1 == 0.0 || n0 == 0.0;
    q0 = N == 0.0 ? 0.0 : one_group ? s : q0;
    q1 = N == 0.0 ? 0.0 : one_group ? s : q1;
    q0o[j] = q0;
    q1o[j] = q1;
  }
}

// rates.py::exact_counts: k = floor(s*N + 0.5), k1 clamped into [max(0, k - n0), min(n1, k)].
void exact_counts(int64_t n, int64_t n1, float sigma, const Rates& R, int64_t& k0, int64_t& k1) {
  const double N = double(n);
  const double n1f = double(n1);
  const double n0f = N - n1f;
  const double K = double(sigma) * N;
  const double k = std::floor(K + 0.5);
  const double k1r = std::floor(R.q1 * n1f + 0.5);
  const double lo = t_max(k - n0f, 0.0);
  const double hi = t_min(n1f, k);
  const double k1f = t_min(t_max(k1r, lo), hi);
  // Valid rates keep both in range; the clamps keep a selection inside its group regardless.
  const int64_t ki = std::isfinite(k) ? std::min<int64_t>(std::max<int64_t>(int64_t(k), 0), n) : 0;
  const int64_t k1i = std::isfinite(k1f) ? int64_t(k1f) : 0;
  k1 = std::min(std::max<int64_t>(k1i, 0), n1);
  k0 = std::min(std::max<int64_t>(ki - k1, 0), n - n1);
}

// Everything a segment's writes need, derived from its rates.
struct SegParams {
  // Bernoulli: masked <=> en[g] && r <= thr[g], i.e. r < floor(q_g * 2^32) (g: 0 other, 1 priority)
  uint32_t thr[2] = {0, 0};
  uint8_t en[2] = {0, 0};
  // Exact: masked <=> en[g] && (r, index) <= (rc[g], ic[g])
  uint32_t rc[2] = {0, 0}, ic[2] = {0, 0};
  float lw0[2] = {0.f, 0.f}, lw1[2] = {0.f, 0.f};  // loss weights of view 0 / view 1 where masked
};

void set_thresholds(SegParams& P, const Rates& R) {
  const double q[2] = {R.q0, R.q1};
  for (int g = 0; g < 2; ++g) {
    // rates.py::bernoulli_thresholds: floor(q * 2^32) as int64; r < T for a uint32 r.
    const double t = std::floor(q[g] * 4294967296.0);
    if (!(t >= 1.0)) {  // T <= 0 (or NaN): never masked
      P.en[g] = 0;
      P.thr[g] = 0;
    } else {
      P.en[g] = 1;
      P.thr[g] = t >= 4294967296.0 ? 0xffffffffu : uint32_t(int64_t(t) - 1);
    }
  }
}

// set_thresholds() for the kRunSegs rates q[j] of one group, branch-free (the loop vectorizes):
// en = 0 and thr = 0 where floor(q * 2^32) < 1 (or NaN), else thr = min(floor(q * 2^32), 2^32) - 1.
inline void thresholds_run(const double* __restrict q, uint32_t* __restrict thr, uint8_t* __restrict en) {
  for (int j = 0; j < kRunSegs; ++j) {
    const double t = std::floor(q[j] * 4294967296.0);
    const bool ok = t >= 1.0;
    const bool big = t >= 4294967296.0;
    const double tc = ok && !big ? t : 1.0;  // in [1, 2^32): the conversion is exact and defined
    const uint32_t x = big ? 0xffffffffu : uint32_t(int64_t(tc) - 1);
    thr[j] = ok ? x : 0u;
    en[j] = uint8_t(ok);
  }
}

void set_loss_weights(SegParams& P, const Rates& R, float sigma, int64_t mode) {
  // reference: where(masked, 1.0 / q, 0.0).to(float32), q = σ (mode 1) or q_g (mode 2), in float64
  const double q[2] = {mode == kLossWeightSigma ? double(sigma) : R.q0, mode == kLossWeightSigma ? double(sigma) : R.q1};
  for (int g = 0; g < 2; ++g) {
    P.lw0[g] = float(1.0 / q[g]);
    P.lw1[g] = float(1.0 / (1.0 - q[g]));
  }
}

inline float sigma_of(const Ctx& c, int64_t s) { return c.sigma[c.sigma_bcast ? 0 : s]; }
inline uint64_t seq_key(const Ctx& c, int64_t q) {  // wraps like int64 adds
  return c.sample_ids ? uint64_t(c.sample_ids[q]) : c.seq_offset + uint64_t(q);
}

// A run of work for one thread: whole segments [s0, s1), or (split) the tokens [t0, t1) of the
// single segment s0 whose rates were solved beforehand.
struct Item {
  int64_t s0, s1, t0, t1;
  bool split;
};

// Draws of one sequence's positions [lo, hi), computed a block at a time and reused by every
// segment that lies inside (short blocks of block diffusion share one Philox evaluation).
struct DrawWindow {
  int64_t q = -1, lo = 0, hi = 0;
  alignas(64) uint32_t buf[kWindow];

  // Pointer to the draw of position p of sequence q; [p, p + n) must lie in one chunk
  // (p + n <= (p & ~(kBlockPos-1)) + kChunk) and inside the sequence (p + n <= len).
  const uint32_t* get(const Ctx& c, int64_t q_, int64_t p, int64_t n, int64_t len, uint32_t stream) {
    if (q_ != q || p < lo || p + n > hi) {
      q = q_;
      lo = p & ~(kBlockPos - 1);
      const int64_t end = std::min<int64_t>(lo + kWindow, (len + kBlockPos - 1) & ~(kBlockPos - 1));
      const PhiloxStream st(c.seed, seq_key(c, q), stream);
      int64_t x = lo;
      for (uint32_t* o = buf; x < end; x += kBlockPos, o += kBlockPos) philox_block(st, uint32_t(x >> 2), o);
      hi = x;
    }
    return buf + (p - lo);
  }
};

// Per-thread buffers of the exact sampling, sized before the loop to the longest segment.
struct Scratch {
  uint32_t* r = nullptr;  // draws of a segment (philox_fill scratch)
  uint8_t* code = nullptr;  // per token: bit 0 maskable, bit 1 priority
  uint64_t* sel = nullptr;  // keys of the bucket holding the k-th smallest
};

// Streaming writes of one output stream through whole 64-byte lines. The kernel writes each
// stream of a work item in order, one chunk of tokens at a time, and chunks rarely end on a line
// boundary (sequences start anywhere, and view 1 starts at offset T). A line must never get part
// of its bytes from non-temporal stores and the rest from ordinary ones: the write-combining
// buffer then flushes a partial line, at several times the cost of a full one. So a writer holds
// the unfinished line of its stream until the next chunk completes it (the chunks are contiguous)
// and stores it whole with non-temporal stores; only the partial lines at the two ends of a run
// of contiguous chunks (an item's edges, a line another thread shares) get ordinary stores.
struct LineWriter {
  char* base = nullptr;  // start of the line being assembled (64-byte aligned)
  int from = 0;          // bytes of that line before `from` are not this stream's to write
  int have = 0;          // bytes [0, have) of the line are known: [from, have) held in `line`
  alignas(64) char line[64];

  static void store_line(char* dst, const char* src) {
#if defined(DLLM_MASKS_AVX512_INTRINSICS)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_loadu_si512(src));
#elif defined(__SSE2__)
    for (int k = 0; k < 64; k += 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + k), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
    }
#else
    std::memcpy(dst, src, 64);
#endif
  }

  // Writes what is held with ordinary stores and forgets it.
  void flush() {
    if (have > from) std::memcpy(base + from, line + from, size_t(have - from));
    base = nullptr;
    from = have = 0;
  }

  void write(void* dst_, const void* src_, size_t n) {
    char* d = static_cast<char*>(dst_);
    const char* s = static_cast<const char*>(src_);
    if (n == 0) return;
    if (base == nullptr || d != base + have) {  // not where the last write ended: a new run
      flush();
      base = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(d) & ~uintptr_t(63));
      from = have = int(d - base);
    }
    while (n > 0) {
      if (have == 0 && n >= 64) {  // line-aligned: whole lines straight from the source
        for (; n >= 64; n -= 64, s += 64, base += 64) store_line(base, s);
        continue;
      }
      const int k = int(std::min<size_t>(n, size_t(64 - have)));
      std::memcpy(line + have, s, size_t(k));
      have += k, s += k, n -= size_t(k);
      if (have == 64) {
        if (from == 0) {
          store_line(base, line);
        } else {
          std::memcpy(base + from, line + from, size_t(64 - from));
        }
        base += 64;
        from = have = 0;
      }
    }
  }
};

// One writer per output stream (noisy, labels, masked, loss weight; × 2 views) and thread.
constexpr int kStreams = 8;
inline LineWriter* line_writers() {
  thread_local LineWriter w[kStreams];
  return w;
}

// Starts a thread's streaming writes: whatever a writer holds from a call that did not finish
// (an exception inside the region) is dropped, never written to memory that may be gone.
inline void stream_begin() {
  LineWriter* w = line_writers();
  for (int i = 0; i < kStreams; ++i) w[i] = LineWriter{};
}

// Ends a thread's streaming writes: what its writers hold is stored, and the non-temporal stores
// are made visible before the parallel region joins.
inline void stream_fence() {
  LineWriter* w = line_writers();
  for (int i = 0; i < kStreams; ++i) w[i].flush();
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

inline int64_t count_nonzero(const uint8_t* p, int64_t n) {
  int64_t total = 0;
  for (int64_t a = 0; a < n; a += 4096) {
    const int64_t e = std::min<int64_t>(n, a + 4096);
    uint32_t acc = 0;
    for (int64_t i = a; i < e; ++i) acc += p[i] != 0;
    total += acc;
  }
  return total;
}

inline int64_t count_both(const uint8_t* m, const uint8_t* p, int64_t n) {
  int64_t total = 0;
  for (int64_t a = 0; a < n; a += 4096) {
    const int64_t e = std::min<int64_t>(n, a + 4096);
    uint32_t acc = 0;
    for (int64_t i = a; i < e; ++i) acc += (m[i] != 0) & (p[i] != 0);
    total += acc;
  }
  return total;
}

// Sums of the 0/1 bytes a[0, L) and b[0, L) for L <= kChunk: eight bytes per add (each byte lane
// of the accumulators stays <= kChunk / 8), then the lanes added in 16-bit pairs (total <= kChunk).
inline void count_bytes(const uint8_t* a, const uint8_t* b, int64_t L, int64_t& na, int64_t& nb) {
  static_assert(kChunk / 8 <= 255 && kChunk <= 65535, "byte and 16-bit lanes must not overflow");
  uint64_t sa = 0, sb = 0;
  int64_t i = 0;
  for (; i + 8 <= L; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    sa += x;
    sb += y;
  }
  const auto hsum = [](uint64_t v) {
    constexpr uint64_t kLo = 0x00FF00FF00FF00FFull;
    return int64_t((((v & kLo) + ((v >> 8) & kLo)) * 0x0001000100010001ull) >> 48);
  };
  int64_t ra = hsum(sa), rb = hsum(sb);
  for (; i < L; ++i) ra += a[i], rb += b[i];
  na = ra;
  nb = rb;
}

template <typename IdT, MaskMode M, bool HasPrio>
struct Kernel {
  const Ctx& c;

  // Number of maskable (n) and maskable priority (n1) tokens among tokens [a, e) of sequence q.
  void count(int64_t q, int64_t a, int64_t e, int64_t& n, int64_t& n1) const {
    if (M == MaskMode::kPrompt) a = std::min(e, std::max(a, c.cu[q] + c.plen[q]));
    if (M == MaskMode::kTensor) {
      n = count_nonzero(c.maskable + a, e - a);
      n1 = HasPrio ? count_both(c.maskable + a, c.prio + a, e - a) : 0;
    } else {
      n = e - a;
      n1 = HasPrio ? count_nonzero(c.prio + a, e - a) : 0;
    }
  }

  // Maskable and priority bits of tokens [t, t + n) at positions [p, p + n) of sequence q.
  inline void bits(int64_t q, int64_t t, int64_t p, int64_t n, uint8_t* mk, uint8_t* g) const {
    int32_t np = 0;  // prompt tokens at the head of the chunk
    if (M == MaskMode::kPrompt) np = int32_t(std::min<int64_t>(n, std::max<int64_t>(0, c.plen[q] - p)));
    const uint8_t* mkp = M == MaskMode::kTensor ? c.maskable + t : nullptr;
    const uint8_t* pr = HasPrio ? c.prio + t : nullptr;
    for (int32_t i = 0; i < int32_t(n); ++i) {
      const uint8_t m = M == MaskMode::kAll ? 1 : M == MaskMode::kPrompt ? uint8_t(i >= np) : uint8_t(mkp[i] != 0);
      mk[i] = m;
      g[i] = HasPrio ? uint8_t(m & (pr[i] != 0)) : 0;
    }
  }

  // Writes every output of tokens [t, t + n) from the masked (m8) and complement (c8) bytes and,
  // with loss weights, their float bits per view (lw[0], lw[1]: see loss_weight_bits): each
  // output stream is written in order, one loop per stream. Large outputs go through an L1
  // staging buffer and streaming stores (no read for ownership of lines the kernel only writes).
  void emit(int64_t t, int64_t n, const uint8_t* m8, const uint8_t* c8, const uint32_t* const* lw) const {
    const IdT* ids = static_cast<const IdT*>(c.ids) + t;
    const IdT mask = IdT(c.mask_id);
    const int64_t views = c.complementary ? 2 : 1;
    alignas(64) unsigned char stage[kChunk * 8];
    LineWriter* writers = c.streaming_stores ? line_writers() : nullptr;
    int stream = 0;  // index of the writer of the next put()
    const auto put = [&](auto* dst, const auto& fill) {
      using T = std::remove_pointer_t<decltype(dst)>;
      if (writers != nullptr) {
        fill(reinterpret_cast<T*>(stage));
        writers[stream].write(dst, stage, size_t(n) * sizeof(T));
      } else {
        fill(dst);
      }
      ++stream;
    };
    for (int64_t v = 0; v < views; ++v) {
      stream = int(4 * v);
      const uint8_t* mv = v ? c8 : m8;
      const int64_t o = v * c.T + t;
      // Selects as bit masks (all ones where masked): branch-free, so the loops vectorize.
      put(static_cast<IdT*>(c.noisy) + o, [&](IdT* __restrict out) {
        for (int64_t i = 0; i < n; ++i) {
          const IdT sel = IdT(0) - IdT(mv[i]);
          out[i] = (ids[i] & ~sel) | (mask & sel);
        }
      });
      put(c.labels + o, [&](int64_t* __restrict out) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t sel = -int64_t(mv[i]);
          out[i] = (int64_t(ids[i]) & sel) | (kIgnoreIndex & ~sel);
        }
      });
      put(reinterpret_cast<uint8_t*>(c.masked + o), [&](uint8_t* __restrict out) {
        std::memcpy(out, mv, size_t(n));  // bytes are 0 / 1: valid bools
      });
      if (c.lw_mode) {
        put(reinterpret_cast<uint32_t*>(c.lw + o), [&](uint32_t* __restrict out) {
          std::memcpy(out, lw[v], size_t(n) * 4);
        });
      }
    }
  }

  // Loss-weight bits of tokens [0, n) for emit(): the group's weight (g8: 0 other, 1 priority)
  // where the view masks the token, +0.0f elsewhere. Nothing to do without loss weights.
  void loss_weight_bits(const SegParams& P, int64_t n, const uint8_t* m8, const uint8_t* c8, const uint8_t* g8,
                        uint32_t* lw0, uint32_t* lw1) const {
    if (!c.lw_mode) return;
    uint32_t w[4];  // view 0 other, view 0 priority, view 1 other, view 1 priority
    std::memcpy(&w[0], &P.lw0[0], 4);
    std::memcpy(&w[1], &P.lw0[1], 4);
    std::memcpy(&w[2], &P.lw1[0], 4);
    std::memcpy(&w[3], &P.lw1[1], 4);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t gsel = 0u - uint32_t(g8[i]);
      lw0[i] = ((w[1] & gsel) | (w[0] & ~gsel)) & (0u - uint32_t(m8[i]));
      lw1[i] = ((w[3] & gsel) | (w[2] & ~gsel)) & (0u - uint32_t(c8[i]));
    }
  }

  Rates solve_segment(int64_t s, int64_t n, int64_t n1) const {
    const Rates R = solve_rates(n, n1, sigma_of(c, s), c.w);
    c.rates[2 * s] = R.q0;
    c.rates[2 * s + 1] = R.q1;
    return R;
  }

  // Bernoulli decisions of n tokens from their draws, maskable and group bytes.
  static inline void bernoulli_decide(const SegParams& P, int64_t n, const uint32_t* __restrict r,
                                      const uint8_t* __restrict mk, const uint8_t* __restrict g8,
                                      uint8_t* __restrict m8, uint8_t* __restrict c8) {
    const uint32_t thr0 = P.thr[0], thr1 = P.thr[1];
    const uint8_t en0 = P.en[0], en1 = P.en[1];
    const auto one = [&](int64_t i) {
      const uint8_t g = g8[i];
      const uint32_t thr = g ? thr1 : thr0;
      const uint8_t en = g ? en1 : en0;
      const uint8_t m = mk[i] & en & uint8_t(r[i] <= thr);
      m8[i] = m;
      c8[i] = mk[i] & (m ^ 1);
    };
    int64_t i = 0;
#if defined(DLLM_MASKS_AVX512_INTRINSICS)
    // 16 tokens per step in mask registers (a block of 32 takes two steps, with no loop prologue
    // or epilogue): masked <=> maskable & en[g] & r <= thr[g], complement <=> maskable & !masked.
    const __m512i t0v = _mm512_set1_epi32(int(thr0)), t1v = _mm512_set1_epi32(int(thr1));
    const __m128i ones = _mm_set1_epi8(1);
    for (; i + 16 <= n; i += 16) {
      const __m128i gv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(g8 + i));
      const __m128i mv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(mk + i));
      const __mmask16 kg = _mm_test_epi8_mask(gv, gv);
      const __mmask16 km = _mm_test_epi8_mask(mv, mv);
      const __mmask16 ken = __mmask16((en1 ? kg : 0) | (en0 ? ~kg : 0));
      const __m512i thr = _mm512_mask_blend_epi32(kg, t0v, t1v);
      const __m512i rv = _mm512_loadu_si512(r + i);
      const __mmask16 kmask = __mmask16(km & ken & _mm512_cmple_epu32_mask(rv, thr));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(m8 + i), _mm_maskz_mov_epi8(kmask, ones));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(c8 + i), _mm_maskz_mov_epi8(__mmask16(km & ~kmask), ones));
    }
#endif
    for (; i < n; ++i) one(i);
  }

  // Bernoulli: tokens [t0, t1) of segment s with parameters P.
  void bernoulli_range(int64_t s, int64_t t0, int64_t t1, const SegParams& P, DrawWindow& win) const {
    const int64_t q = c.seg_seq[s];
    const int64_t base = c.cu[q], len = c.cu[q + 1] - base;
    alignas(64) uint8_t m8[kChunk], c8[kChunk], g8[kChunk], mk[kChunk];
    alignas(64) uint32_t lw0[kChunk], lw1[kChunk];
    const uint32_t* lw[2] = {lw0, lw1};
    for (int64_t t = t0; t < t1;) {
      const int64_t p = t - base;
      const int64_t n = std::min(t1 - t, ((p & ~(kBlockPos - 1)) + kChunk) - p);
      const uint32_t* r = win.get(c, q, p, n, len, kStreamBernoulli);
      bits(q, t, p, n, mk, g8);
      bernoulli_decide(P, n, r, mk, g8, m8, c8);
      loss_weight_bits(P, n, m8, c8, g8, lw0, lw1);
      emit(t, n, m8, c8, lw);
      t += n;
    }
  }

  // Bernoulli: the whole segments [s0, s1). Segments that lie inside one draw chunk of their
  // sequence (blocks of block diffusion) are taken together: one maskable/group pass and one
  // emit() per run of such segments, then per segment only its counts, rates and decisions.
  void bernoulli_segments(int64_t s0, int64_t s1, DrawWindow& win) const {
    alignas(64) uint8_t m8[kChunk], c8[kChunk], g8[kChunk], mk[kChunk];
    alignas(64) uint32_t lw0[kChunk], lw1[kChunk];
    const uint32_t* lw[2] = {lw0, lw1};
    for (int64_t s = s0; s < s1;) {
      const int64_t q = c.seg_seq[s];
      const int64_t base = c.cu[q], len = c.cu[q + 1] - base;
      const int64_t a = c.seg_start[s], p = a - base;
      const int64_t lim = base + (p & ~(kBlockPos - 1)) + kChunk;  // first token past the draw chunk
      int64_t sb = s;
      while (sb < s1 && c.seg_seq[sb] == q && c.seg_start[sb + 1] <= lim) ++sb;
      if (sb == s) {  // a segment longer than the chunk
        bernoulli_segment(s, win);
        ++s;
        continue;
      }
      const int64_t n = c.seg_start[sb] - a;  // 0 <= n <= kChunk
      const uint32_t* r = n ? win.get(c, q, p, n, len, kStreamBernoulli) : nullptr;
      bits(q, a, p, n, mk, g8);
      // Up to kRunSegs segments at a time: counts, then their rates solved together, then decisions.
      while (s < sb) {
        const int m = int(std::min<int64_t>(kRunSegs, sb - s));
        alignas(64) int64_t nm[kRunSegs] = {}, n1[kRunSegs] = {};
        alignas(64) float sg[kRunSegs] = {};
        alignas(64) double q0[kRunSegs], q1[kRunSegs];
        alignas(64) uint32_t thr0[kRunSegs], thr1[kRunSegs];
        alignas(64) uint8_t en0[kRunSegs], en1[kRunSegs];
        for (int j = 0; j < m; ++j) {
          const int64_t o = c.seg_start[s + j] - a, L = c.seg_start[s + j + 1] - c.seg_start[s + j];
          count_bytes(mk + o, g8 + o, L, nm[j], n1[j]);  // L <= kChunk
          sg[j] = sigma_of(c, s + j);
        }
        solve_rates_run(nm, n1, sg, c.w, q0, q1);
        thresholds_run(q0, thr0, en0);
        thresholds_run(q1, thr1, en1);
        for (int j = 0; j < m; ++j, ++s) {
          const int64_t o = c.seg_start[s] - a, L = c.seg_start[s + 1] - c.seg_start[s];
          c.rates[2 * s] = q0[j];
          c.rates[2 * s + 1] = q1[j];
          SegParams P;
          P.thr[0] = thr0[j];
          P.thr[1] = thr1[j];
          P.en[0] = en0[j];
          P.en[1] = en1[j];
          if (c.lw_mode) set_loss_weights(P, Rates{q0[j], q1[j]}, sg[j], c.lw_mode);
          bernoulli_decide(P, L, r + o, mk + o, g8 + o, m8 + o, c8 + o);
          loss_weight_bits(P, L, m8 + o, c8 + o, g8 + o, lw0 + o, lw1 + o);
        }
      }
      if (n) emit(a, n, m8, c8, lw);
    }
  }

  void params(SegParams& P, const Rates& R, int64_t s) const {
    set_thresholds(P, R);
    if (c.lw_mode) set_loss_weights(P, R, sigma_of(c, s), c.lw_mode);
  }

  // One fused pass over segment s: count, solve, draw, threshold, write.
  void bernoulli_segment(int64_t s, DrawWindow& win) const {
    const int64_t a = c.seg_start[s], e = c.seg_start[s + 1];
    int64_t n, n1;
    count(c.seg_seq[s], a, e, n, n1);
    SegParams P;
    params(P, solve_segment(s, n, n1), s);
    bernoulli_range(s, a, e, P, win);
  }

  // Exact: per group the k smallest keys (r, i) (draw, then index in the segment: the order of the
  // reference's stable sort). A radix select on r's top bits (one histogram pass) finds the bucket
  // holding the k-th smallest; one branch-free scan collects that bucket's keys for both groups,
  // and nth_element inside it gives the cut (rc, ic): masked <=> r < rc or (r == rc and i <= ic).
  void exact_segment(int64_t s, DrawWindow& win, const Scratch& sc) const {
    const int64_t q = c.seg_seq[s];
    const int64_t a = c.seg_start[s], e = c.seg_start[s + 1], L = e - a;
    const int64_t base = c.cu[q], len = c.cu[q + 1] - base, p0 = a - base;
    const uint32_t* r;
    if (p0 + L <= (p0 & ~(kBlockPos - 1)) + kChunk) {
      r = L ? win.get(c, q, p0, L, len, kStreamSelect) : nullptr;
    } else {
      r = philox_fill(PhiloxStream(c.seed, seq_key(c, q), kStreamSelect), p0, L, sc.r);
    }
    uint8_t* code = sc.code;  // bit 0 maskable, bit 1 priority
    // Short segments (blocks of block diffusion) use one bucket: clearing 256 would cost more
    // than selecting among their few keys.
    const int shift = L > kChunk ? 32 - kBucketBits : 32;
    const uint32_t nb = uint32_t(1) << (32 - shift);
    uint32_t hist[2 * kBuckets];
    std::memset(hist, 0, nb * sizeof(uint32_t));
    std::memset(hist + kBuckets, 0, nb * sizeof(uint32_t));
    int64_t n = 0, n1 = 0;
    alignas(64) uint8_t mk[kChunk], g8[kChunk];
    for (int64_t i0 = 0; i0 < L; i0 += kChunk) {
      const int64_t m = std::min(kChunk, L - i0);
      bits(q, a + i0, p0 + i0, m, mk, g8);
      for (int64_t i = 0; i < m; ++i) {
        code[i0 + i] = uint8_t(mk[i] | (g8[i] << 1));
        n += mk[i];
        n1 += g8[i];
        hist[(uint32_t(g8[i]) << kBucketBits) | uint32_t(uint64_t(r[i0 + i]) >> shift)] += mk[i];
      }
    }
    const Rates R = solve_segment(s, n, n1);
    int64_t k[2];
    exact_counts(n, n1, sigma_of(c, s), R, k[0], k[1]);
    const int64_t ng[2] = {n - n1, n1};
    SegParams P;
    if (c.lw_mode) set_loss_weights(P, R, sigma_of(c, s), c.lw_mode);
    uint32_t tag[2] = {0xffffffffu, 0xffffffffu};  // (code << 8 | bucket) of the keys to collect
    int64_t below[2] = {0, 0}, room[2] = {1, 1};
    for (int g = 0; g < 2; ++g) {
      P.en[g] = k[g] > 0;
      P.rc[g] = P.ic[g] = 0xffffffffu;  // k == ng: every key is below the cut
      if (k[g] <= 0 || k[g] >= ng[g]) continue;
      const uint32_t* h = hist + (g << kBucketBits);
      uint32_t b = 0;
      while (below[g] + h[b] < k[g]) below[g] += h[b++];  // stops at b < kBuckets: the counts sum to ng > k
      tag[g] = (uint32_t(1 | (g << 1)) << kBucketBits) | b;
      room[g] = int64_t(h[b]) + 1;
    }
    if (tag[0] != 0xffffffffu || tag[1] != 0xffffffffu) {
      uint64_t* sel[2] = {sc.sel, sc.sel + room[0]};  // room[0] + room[1] <= L + 2 slots
      int64_t m0 = 0, m1 = 0;
      for (int64_t i = 0; i < L; ++i) {  // each slot is written, kept only on a hit
        const uint32_t t = (uint32_t(code[i]) << kBucketBits) | uint32_t(uint64_t(r[i]) >> shift);
        const uint64_t key = (uint64_t(r[i]) << 32) | uint64_t(i);
        sel[0][m0] = key;
        m0 += t == tag[0];
        sel[1][m1] = key;
        m1 += t == tag[1];
      }
      const int64_t got[2] = {m0, m1};
      for (int g = 0; g < 2; ++g) {
        if (tag[g] == 0xffffffffu) continue;
        uint64_t* nth = sel[g] + (k[g] - 1 - below[g]);  // 0 <= k - 1 - below < h[b] = got[g]
        std::nth_element(sel[g], nth, sel[g] + got[g]);
        P.rc[g] = uint32_t(*nth >> 32);
        P.ic[g] = uint32_t(*nth);
      }
    }
    alignas(64) uint8_t m8[kChunk], c8[kChunk];
    alignas(64) uint32_t lw0[kChunk], lw1[kChunk];
    const uint32_t* lw[2] = {lw0, lw1};
    const uint32_t rc0 = P.rc[0], rc1 = P.rc[1], ic0 = P.ic[0], ic1 = P.ic[1];
    const uint32_t en0 = P.en[0], en1 = P.en[1];
    for (int64_t i0 = 0; i0 < L; i0 += kChunk) {
      const int64_t m = std::min(kChunk, L - i0);
      const uint32_t* ri = r + i0;
      const uint8_t* cd = code + i0;
      for (int32_t i = 0; i < int32_t(m); ++i) {  // branch-free, 32-bit lanes: vectorizes
        const uint32_t mki = cd[i] & 1u, g = cd[i] >> 1;
        const uint32_t gs = 0u - g;
        const uint32_t rc = (rc0 & ~gs) | (rc1 & gs), ic = (ic0 & ~gs) | (ic1 & gs), en = (en0 & ~gs) | (en1 & gs);
        const uint32_t idx = uint32_t(i0) + uint32_t(i);
        const uint32_t below_cut = uint32_t(ri[i] < rc) | (uint32_t(ri[i] == rc) & uint32_t(idx <= ic));
        const uint32_t msk = mki & en & below_cut;
        m8[i] = uint8_t(msk);
        c8[i] = uint8_t(mki & (msk ^ 1u));
        g8[i] = uint8_t(g);
      }
      loss_weight_bits(P, m, m8, c8, g8, lw0, lw1);
      emit(a + i0, m, m8, c8, lw);
    }
  }

  // Tokens [t0, t1) of a segment split across items: counts only (phase 1).
  void count_split(const Item& it, int64_t& n, int64_t& n1) const { count(c.seg_seq[it.s0], it.t0, it.t1, n, n1); }

  void run(const Item& it, DrawWindow& win, const Scratch& sc, const SegParams* split_params) const {
    if (it.split) {
      bernoulli_range(it.s0, it.t0, it.t1, *split_params, win);
      return;
    }
    if (!c.exact) {
      bernoulli_segments(it.s0, it.s1, win);
      return;
    }
    for (int64_t s = it.s0; s < it.s1; ++s) exact_segment(s, win, sc);
  }
};

// Items: consecutive segments grouped to about `target` tokens (writes stay in order within an
// item); a Bernoulli segment longer than that is split into chunks of `target` tokens so one
// long sequence still spreads over every thread. Exact segments are never split.
//
//
// The items go to `items` as far as it holds them; returns how many there are (a caller whose
// array was too small resizes it and calls again). At most (4T + 16S) / target + 2: a push at
// the threshold takes >= target of the T + 16S counted tokens, a split segment (longer than
// target) gives at most 2 len / target chunks plus the push before it, and one push ends.
int64_t make_items_bound(const Ctx& c, int64_t target) { return (4 * c.T + 16 * c.S) / target + 2; }

template <typename Items>
int64_t make_items(const Ctx& c, int64_t target, bool split_long, Items& items) {
  int64_t count = 0;
  const auto push_back = [&](const Item& it) {
    if (size_t(count) < items.size()) items[size_t(count)] = it;
    ++count;
  };
  int64_t s0 = 0, tokens = 0;
  for (int64_t s = 0; s < c.S; ++s) {
    const int64_t a = c.seg_start[s], e = c.seg_start[s + 1];
    if (split_long && e - a > target) {
      if (s > s0) push_back({s0, s, c.seg_start[s0], a, false});
      for (int64_t t = a; t < e; t += target) push_back({s, s + 1, t, std::min(e, t + target), true});
      s0 = s + 1;
      tokens = 0;
      continue;
    }
    tokens += e - a + 16;  // + a little per segment: empty segments still cost their rates
    if (tokens >= target) {
      push_back({s0, s + 1, c.seg_start[s0], e, false});
      s0 = s + 1;
      tokens = 0;
    }
  }
  if (c.S > s0) push_back({s0, c.S, c.seg_start[s0], c.T, false});
  return count;
}

// Runs body(slot, i) for i in [0, nitems) on `nslots` threads that take items in order from a
// shared counter (a dynamic schedule: sequences of any lengths balance themselves); `slot`
// names the thread's own scratch. at::parallel_for runs on torch's pool and thread count.
template <typename F>
void for_each_item(int64_t nslots, int64_t nitems, const F& body) {
  if (nslots <= 1) {  // one thread: in the caller, without the parallel region's set-up
    stream_begin();
    for (int64_t i = 0; i < nitems; ++i) body(0, i);
    stream_fence();
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nslots, 1, [&](int64_t b, int64_t e) {
    stream_begin();
    for (int64_t slot = b; slot < e; ++slot) {
      for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < nitems;) body(slot, i);
    }
    stream_fence();  // streaming stores are visible before the region's join
  });
}

// Tokens per thread at least: below that, waking a thread costs more than it saves. A token costs
// several nanoseconds here (torch's elementwise grain, 32768, suits ops of a fraction of one):
// with 8192, a 16K-token call on two threads took 2.1 ns/token against 3.6 on one
// (docs/performance.md).
constexpr int64_t kMinTokensPerThread = 8192;

template <typename IdT, MaskMode M, bool HasPrio>
void run_kernel(const Ctx& c) {
  const Kernel<IdT, M, HasPrio> k{c};
  const int64_t nthreads = std::min<int64_t>(std::max(1, at::get_num_threads()),
                                             std::max<int64_t>(1, c.T / kMinTokensPerThread));
  const int64_t target = std::min<int64_t>(65536, std::max<int64_t>(4096, c.T / (nthreads * 16)));
  SmallArray<Item, 8> items(size_t(make_items_bound(c, target)));
  int64_t nitems = make_items(c, target, !c.exact, items);
  if (size_t(nitems) > items.size()) {  // never, by the bound; kept so no write can pass the end
    items.resize(size_t(nitems));
    nitems = make_items(c, target, !c.exact, items);
  }
  const int64_t nslots = std::min(nthreads, nitems);

  // Phase 1 (Bernoulli segments split across items): count each chunk, then solve per segment.
  std::vector<int64_t> split_counts;
  SmallArray<SegParams, 8> split_params(static_cast<size_t>(nitems));
  bool any_split = false;
  for (int64_t i = 0; i < nitems; ++i) any_split |= items[i].split;
  if (any_split) {
    split_counts.assign(size_t(2 * nitems), 0);
    for_each_item(nslots, nitems, [&](int64_t, int64_t i) {
      if (items[i].split) k.count_split(items[i], split_counts[2 * i], split_counts[2 * i + 1]);
    });
    for (int64_t i = 0; i < nitems;) {
      if (!items[i].split) {
        ++i;
        continue;
      }
      const int64_t s = items[i].s0;
      int64_t j = i, n = 0, n1 = 0;
      for (; j < nitems && items[j].split && items[j].s0 == s; ++j) n += split_counts[2 * j], n1 += split_counts[2 * j + 1];
      SegParams P;
      k.params(P, k.solve_segment(s, n, n1), s);
      for (; i < j; ++i) split_params[i] = P;
    }
  }

  // Exact: per-thread buffers for the longest segment (sized here: nothing is allocated below).
  std::vector<uint32_t> r_buf;
  std::vector<uint8_t> code_buf;
  std::vector<uint64_t> sel_buf;
  int64_t per = 0;
  if (c.exact) {
    int64_t Lmax = 0;
    for (int64_t s = 0; s < c.S; ++s) Lmax = std::max(Lmax, c.seg_start[s + 1] - c.seg_start[s]);
    per = Lmax + 2 * kBlockPos + 8;  // philox_fill needs L + 67 words, the selection L + 2 keys
    r_buf.resize(size_t(nslots * per));
    code_buf.resize(size_t(nslots * per));
    sel_buf.resize(size_t(nslots * per));
  }

  // Phase 2: every item, fused per segment. Each thread keeps its draw window and scratch.
  SmallArray<DrawWindow, 1> windows(static_cast<size_t>(nslots));
  for_each_item(nslots, nitems, [&](int64_t slot, int64_t i) {
    Scratch sc;
    if (c.exact) {
      sc.r = r_buf.data() + slot * per;
      sc.code = code_buf.data() + slot * per;
      sc.sel = sel_buf.data() + slot * per;
    }
    k.run(items[i], windows[slot], sc, &split_params[i]);
  });
}

template <typename IdT>
void dispatch_mode(const Ctx& c) {
  const bool hp = c.prio != nullptr;
  if (c.maskable) {
    hp ? run_kernel<IdT, MaskMode::kTensor, true>(c) : run_kernel<IdT, MaskMode::kTensor, false>(c);
  } else if (c.plen) {
    hp ? run_kernel<IdT, MaskMode::kPrompt, true>(c) : run_kernel<IdT, MaskMode::kPrompt, false>(c);
  } else {
    hp ? run_kernel<IdT, MaskMode::kAll, true>(c) : run_kernel<IdT, MaskMode::kAll, false>(c);
  }
}

#include "priority_mask_weights.inc"

}  // namespace

void DLLM_MASKS_KERNEL_ENTRY(const Ctx& c) {
  if (c.weights) {  // float32 importance weights
    if (c.ids32) dispatch_weighted<int32_t>(c);
    else dispatch_weighted<int64_t>(c);
    return;
  }
  if (c.ids32) dispatch_mode<int32_t>(c);
  else dispatch_mode<int64_t>(c);
}

}  // namespace detail
}  // namespace dllm_masks
