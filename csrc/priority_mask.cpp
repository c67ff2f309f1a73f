// dllm_masks::priority_mask, CPU kernel (docs/design.md §3–§7, §9).
//
// Layers: priority_mask_cpu() / priority_mask_out_cpu() (here) = check_inputs() (every argument
// and index, dtypes normalized) → segment_table() → the outputs (allocated, or the caller's
// buffers checked by check_outputs()) → make_ctx() → the kernel (priority_mask_kernel.h, built for the
// baseline ISA here and for AVX-512 in priority_mask_avx512.cpp) then runs one fused pass per
// segment (count maskable and priority tokens, solve the rates in float64, draw, threshold in
// integers, write every output) with no allocation and no check left inside its parallel loop.
//
// Bit-identity with dllm_masks/reference.py: the rates mirror dllm_masks/rates.py op for op in
// float64 (built with -ffp-contract=off: no fused multiply-add), the draws are the Philox words
// of docs/design.md §4, Bernoulli compares r < floor(q * 2^32) in integers, and the exact sampling keeps
// per group the k smallest keys (r << 32 | position), the order of the reference's stable sort.
#include "priority_mask.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "priority_mask_ctx.h"

#define DLLM_MASKS_KERNEL_ENTRY priority_mask_kernel_baseline
#include "priority_mask_kernel.h"
#undef DLLM_MASKS_KERNEL_ENTRY

namespace dllm_masks {
namespace {

using detail::Ctx;

// ---------------------------------------------------------------------------------------------
// Argument checks (docs/design.md §9): every dtype, size and index the kernel relies on.
// ---------------------------------------------------------------------------------------------
void check_cpu(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.defined(), "priority_mask: ", name, ": expected a tensor, got an undefined one");
  TORCH_CHECK_VALUE(x.device().is_cpu(), "priority_mask: ", name, ": the C++ kernel takes CPU tensors, got one on ", x.device());
}

// The outputs are fresh memory the kernel touches first: on this kind of machine a 4 KiB page
// fault costs more than writing the page, so large outputs ask for transparent huge pages
// (MADV_HUGEPAGE on the 2 MiB-aligned interior; a hint that changes no data, ignored where THP
// is off). The same as torch's THP_MEM_ALLOC_ENABLE=1, for these buffers only.
void advise_huge_pages(const at::Tensor& x) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const size_t nbytes = size_t(x.numel()) * x.element_size();
  if (nbytes < 2 * kHuge) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(x.data_ptr());
  const uintptr_t lo = (p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (p + nbytes) & ~(kHuge - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)x;
#endif
}

// DLLM_MASKS_CPU_HUGEPAGES=0 drops the hint: where memory is fragmented (after a large model step
// freed and re-mapped gigabytes) and THP defrag is "madvise", each huge-page fault may compact
// memory first, which can cost more than the 4 KiB faults it saves (see docs/kernels.md).
bool huge_pages_enabled() {
  const char* v = std::getenv("DLLM_MASKS_CPU_HUGEPAGES");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// Outputs of at least this many bytes bypass the caches (streaming stores: no read for ownership
// of lines the kernel only writes): kStreamBytes, or DLLM_MASKS_CPU_STREAM_BYTES=<bytes> (0: always
// stream). Below it they are written through the cache.
int64_t stream_threshold() {
  if (const char* v = std::getenv("DLLM_MASKS_CPU_STREAM_BYTES")) {
    char* end = nullptr;
    const long long x = std::strtoll(v, &end, 10);
    if (end != v && x >= 0) return int64_t(x);
  }
  return detail::kStreamBytes;
}

bool is_int_dtype(at::ScalarType t) {
  return t == at::kByte || t == at::kChar || t == at::kShort || t == at::kInt || t == at::kLong;
}

// An optional per-token bool/uint8 tensor as contiguous bytes.
at::Tensor token_bytes(const std::optional<at::Tensor>& x, const char* name, int64_t T) {
  if (!x.has_value()) return at::Tensor();
  check_cpu(*x, name);
  TORCH_CHECK_TYPE(x->scalar_type() == at::kBool || x->scalar_type() == at::kByte, "priority_mask: ", name,
                   ": expected dtype bool or uint8, got ", x->scalar_type());
  TORCH_CHECK_VALUE(x->dim() == 1 && x->numel() == T, "priority_mask: ", name, ": expected shape [", T,
                    "] (one per token), got ", x->sizes());
  return x->contiguous();
}

// float32 importance weights (docs/importance.md): [T], finite and >= 0, contiguous.
at::Tensor token_weights(const at::Tensor& x, int64_t T) {
  check_cpu(x, "priority");
  TORCH_CHECK_VALUE(x.dim() == 1 && x.numel() == T, "priority: expected shape [", T, "] (one per token), got ", x.sizes());
  at::Tensor w = x.contiguous();
  const float* p = w.data_ptr<float>();
  // One branch-free pass on the bits (it vectorizes), then find the first bad value: finite and
  // >= 0 <=> +0 .. FLT_MAX (bits 0 .. 0x7F7FFFFF) or -0 (0x80000000).
  uint32_t bad_bits = 0;
  for (int64_t i = 0; i < T; ++i) {
    uint32_t u;
    std::memcpy(&u, p + i, 4);
    bad_bits |= uint32_t(u > 0x7F7FFFFFu) & uint32_t(u != 0x80000000u);
  }
  bool bad = bad_bits != 0;
  for (int64_t i = 0; bad && i < T; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(p[i]) && p[i] >= 0.0f, "priority_mask: priority: float weights must be finite and >= 0, got priority[", i,
                      "] = ", p[i]);
  }
  return w;
}

// An optional per-sequence integer tensor as contiguous int64.
at::Tensor seq_int64(const std::optional<at::Tensor>& x, const char* name, int64_t B) {
  if (!x.has_value()) return at::Tensor();
  check_cpu(*x, name);
  TORCH_CHECK_TYPE(is_int_dtype(x->scalar_type()), "priority_mask: ", name, ": expected an integer dtype, got ",
                   x->scalar_type());
  TORCH_CHECK_VALUE(x->dim() == 1 && x->numel() == B, "priority_mask: ", name, ": expected shape [", B,
                    "] (one per sequence), got ", x->sizes());
  return x->scalar_type() == at::kLong ? x->contiguous() : x->to(at::kLong).contiguous();
}

// The AVX-512 build where it exists and the CPU runs it; DLLM_MASKS_CPU_ISA=baseline forces the
// baseline (tests compare both; the answer is the same bit for bit).
bool use_avx512_kernel() {
  const char* isa = std::getenv("DLLM_MASKS_CPU_ISA");
  if (isa != nullptr && std::strcmp(isa, "baseline") == 0) return false;
  return detail::have_avx512_kernel();
}

// The inputs after check_inputs(): contiguous, in the dtypes the kernel reads, with the sizes
// every index of the kernel was checked against.
// cu_seqlens is read in place where it is int64 and contiguous (`cu` then holds it, for the
// overlap checks), else converted into `cu_store` (no allocation up to 512 offsets).
struct Inputs {
  at::Tensor ids, cu, sigma, priority, maskable, prompt_lens, sample_ids, rng;
  detail::SmallArray<int64_t, 512> cu_store{0};
  const int64_t* cu_ptr = nullptr;  // [B + 1]
  int64_t T = 0, B = 0, S = 0;
  bool weighted = false;  // priority holds float32 importance weights (docs/importance.md)
};

// cu_seqlens (int32 or int64, 1-D, checked) as int64 offsets: in place, or converted.
void read_offsets(Inputs& in, const at::Tensor& cu) {
  const int64_t n = cu.numel(), stride = cu.stride(0);
  if (cu.scalar_type() == at::kLong && (stride == 1 || n <= 1)) {
    in.cu = cu;
    in.cu_ptr = cu.data_ptr<int64_t>();
    return;
  }
  in.cu_store.resize(size_t(n));
  int64_t* o = in.cu_store.data();
  if (cu.scalar_type() == at::kLong) {
    const int64_t* p = cu.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = p[i * stride];
  } else {
    const int32_t* p = cu.data_ptr<int32_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = p[i * stride];
  }
  in.cu_ptr = o;
}

void check_inputs(Inputs& in, const at::Tensor& input_ids_, const at::Tensor& cu_seqlens_, const at::Tensor& sigma_,
                  const std::optional<at::Tensor>& priority_, const std::optional<at::Tensor>& maskable_,
                  const std::optional<at::Tensor>& prompt_lens_, const std::optional<at::Tensor>& sample_ids_,
                  const at::Tensor& rng_, double weight, int64_t block_size, int64_t num_segments,
                  int64_t loss_weight_mode, int64_t mask_token_id) {
  // --- dtypes, devices, shapes -----------------------------------------------------------------
  check_cpu(input_ids_, "input_ids");
  const at::ScalarType id_type = input_ids_.scalar_type();
  TORCH_CHECK_TYPE(id_type == at::kInt || id_type == at::kLong, "priority_mask: input_ids: expected dtype int32 or int64, got ",
                   id_type);
  TORCH_CHECK_VALUE(input_ids_.dim() == 1, "priority_mask: input_ids: expected a 1-D (packed) tensor, got shape ",
                    input_ids_.sizes());
  const int64_t T = input_ids_.numel();
  TORCH_CHECK_VALUE(T <= std::numeric_limits<int32_t>::max(), "priority_mask: input_ids: more than 2^31 - 1 tokens are not supported");

  check_cpu(cu_seqlens_, "cu_seqlens");
  TORCH_CHECK_TYPE(cu_seqlens_.scalar_type() == at::kInt || cu_seqlens_.scalar_type() == at::kLong,
                   "priority_mask: cu_seqlens: expected dtype int32 or int64, got ", cu_seqlens_.scalar_type());
  TORCH_CHECK_VALUE(cu_seqlens_.dim() == 1 && cu_seqlens_.numel() >= 1,
                    "priority_mask: cu_seqlens: expected a 1-D tensor of B+1 >= 1 offsets, got shape ", cu_seqlens_.sizes());
  read_offsets(in, cu_seqlens_);
  const int64_t B = cu_seqlens_.numel() - 1;

  check_cpu(sigma_, "sigma");
  TORCH_CHECK_TYPE(at::isFloatingType(sigma_.scalar_type()), "priority_mask: sigma: expected a floating dtype, got ",
                   sigma_.scalar_type());
  TORCH_CHECK_VALUE(sigma_.dim() <= 1, "priority_mask: sigma: expected a 1-D tensor, got shape ", sigma_.sizes());
  in.sigma = sigma_.scalar_type() == at::kFloat ? sigma_.contiguous() : sigma_.to(at::kFloat).contiguous();

  in.weighted = priority_.has_value() && priority_->defined() && priority_->scalar_type() == at::kFloat;
  in.priority = in.weighted ? token_weights(*priority_, T) : token_bytes(priority_, "priority", T);
  in.maskable = token_bytes(maskable_, "maskable", T);
  TORCH_CHECK_VALUE(!(maskable_.has_value() && prompt_lens_.has_value()),
                    "priority_mask: maskable: give either maskable or prompt_lens, not both");
  in.prompt_lens = seq_int64(prompt_lens_, "prompt_lens", B);
  in.sample_ids = seq_int64(sample_ids_, "sample_ids", B);

  check_cpu(rng_, "rng");
  TORCH_CHECK_TYPE(rng_.scalar_type() == at::kLong, "priority_mask: rng: expected dtype int64, got ", rng_.scalar_type());
  TORCH_CHECK_VALUE(rng_.dim() == 1 && rng_.numel() == 2, "priority_mask: rng: expected shape [2] (seed, seq_offset), got ",
                    rng_.sizes());
  in.rng = rng_.contiguous();

  // --- scalars -------------------------------------------------------------------------------------
  TORCH_CHECK_VALUE(!std::isnan(weight) && weight >= 0.0, "priority_mask: weight: must be in [0, inf], got ", weight);
  TORCH_CHECK_VALUE(!in.weighted || weight == 1.0, "priority_mask: weight: must be 1 with float32 priority, got ", weight);
  TORCH_CHECK_VALUE(block_size >= 0, "priority_mask: block_size: must be >= 0 (0: one segment per sequence), got ", block_size);
  TORCH_CHECK_VALUE(loss_weight_mode >= detail::kLossWeightNone && loss_weight_mode <= detail::kLossWeightToken,
                    "priority_mask: loss_weight_mode: expected 0 (none), 1 (sigma) or 2 (token), got ", loss_weight_mode);
  const int64_t id_min = id_type == at::kInt ? std::numeric_limits<int32_t>::min() : std::numeric_limits<int64_t>::min();
  const int64_t id_max = id_type == at::kInt ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int64_t>::max();
  TORCH_CHECK_VALUE(mask_token_id >= id_min && mask_token_id <= id_max, "priority_mask: mask_token_id: ", mask_token_id,
                    " does not fit input_ids' dtype ", id_type);

  // --- values: offsets, segments, σ, prompt lengths ------------------------------------------------
  const int64_t* cu = in.cu_ptr;
  TORCH_CHECK_VALUE(cu[0] == 0, "priority_mask: cu_seqlens: must start at 0, got ", cu[0]);
  int64_t S = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(cu[b + 1] >= cu[b], "priority_mask: cu_seqlens: must be non-decreasing, but cu_seqlens[", b + 1,
                      "] = ", cu[b + 1], " < cu_seqlens[", b, "] = ", cu[b]);
    TORCH_CHECK_VALUE(cu[b + 1] <= T, "priority_mask: cu_seqlens: cu_seqlens[", b + 1, "] = ", cu[b + 1],
                      " exceeds T = input_ids.numel() = ", T);
    const int64_t len = cu[b + 1] - cu[b];
    S += block_size > 0 ? len / block_size + (len % block_size != 0) : 1;
  }
  TORCH_CHECK_VALUE(cu[B] == T, "priority_mask: cu_seqlens: must end at T = input_ids.numel() = ", T, ", got ", cu[B]);
  TORCH_CHECK_VALUE(num_segments == S, "priority_mask: num_segments: expected ", S, " (the batch's segments), got ", num_segments);
  TORCH_CHECK_VALUE(in.sigma.numel() == 1 || in.sigma.numel() == S, "priority_mask: sigma: expected 1 or ", S,
                    " values (one per segment), got ", in.sigma.numel());
  const float* sig = in.sigma.data_ptr<float>();
  for (int64_t i = 0; i < in.sigma.numel(); ++i) {
    TORCH_CHECK_VALUE(sig[i] >= 0.0f && sig[i] <= 1.0f, "priority_mask: sigma: must lie in [0, 1], got sigma[", i, "] = ", sig[i]);
  }
  if (in.prompt_lens.defined()) {
    const int64_t* pl = in.prompt_lens.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK_VALUE(pl[b] >= 0 && pl[b] <= cu[b + 1] - cu[b], "priority_mask: prompt_lens: prompt_lens[", b, "] = ", pl[b],
                        " is outside [0, ", cu[b + 1] - cu[b], "] (the sequence's length)");
    }
  }
  in.ids = input_ids_.contiguous();
  in.T = T;
  in.B = B;
  in.S = S;
}

// Segment table, int64 [2S + 1]: the first token of each segment [S + 1] (the last = T), then the
// sequence of each segment [S]. Sequence-major; blocks aligned to each sequence's first token.
// In place up to 1024 entries (a call of a few thousand tokens allocates nothing here).
using SegmentTable = detail::SmallArray<int64_t, 1024>;

void segment_table(const Inputs& in, int64_t block_size, SegmentTable& table) {
  const int64_t S = in.S;
  int64_t* seg_start = table.data();
  int64_t* seg_seq = seg_start + S + 1;
  const int64_t* cu = in.cu_ptr;
  int64_t s = 0;
  for (int64_t b = 0; b < in.B; ++b) {
    if (block_size == 0) {
      seg_start[s] = cu[b];
      seg_seq[s++] = b;
    } else {
      for (int64_t t = cu[b]; t < cu[b + 1]; t += std::min(block_size, cu[b + 1] - t)) {
        seg_start[s] = t;
        seg_seq[s++] = b;
      }
    }
  }
  seg_start[S] = in.T;
}

// The five outputs, flat: noisy_ids [V*T] (input dtype), masked bool, labels int64, loss_weight
// float32 [V*T] (or [0]), rates float64 [S, 2].
struct Outputs {
  at::Tensor noisy, masked, labels, loss_weight, rates;
};

Outputs allocate_outputs(const Inputs& in, bool complementary, int64_t loss_weight_mode) {
  const int64_t n = (complementary ? 2 : 1) * in.T;
  const auto opt = in.ids.options();
  Outputs o{at::empty({n}, opt), at::empty({n}, opt.dtype(at::kBool)), at::empty({n}, opt.dtype(at::kLong)),
            at::empty({loss_weight_mode != detail::kLossWeightNone ? n : 0}, opt.dtype(at::kFloat)),
            at::empty({in.S, 2}, opt.dtype(at::kDouble))};
  if (huge_pages_enabled()) {
    for (const at::Tensor* x : {&o.noisy, &o.masked, &o.labels, &o.loss_weight}) advise_huge_pages(*x);
  }
  return o;
}

// A caller's buffer: a CPU tensor of the given dtype and shape, contiguous.
void check_buffer(const at::Tensor& x, const char* name, at::ScalarType dtype, at::IntArrayRef shape) {
  check_cpu(x, name);
  TORCH_CHECK_TYPE(x.scalar_type() == dtype, "priority_mask: ", name, ": expected dtype ", dtype, ", got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.sizes() == shape, "priority_mask: ", name, ": expected shape ", shape, ", got ", x.sizes());
  TORCH_CHECK_VALUE(x.is_contiguous(), "priority_mask: ", name, ": must be contiguous");
}

// Bytes [lo, hi) of a contiguous tensor (empty for an empty one).
std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& x) {
  if (!x.defined() || x.numel() == 0) return {0, 0};
  const uintptr_t lo = reinterpret_cast<uintptr_t>(x.data_ptr());
  return {lo, lo + uintptr_t(x.numel()) * uintptr_t(x.element_size())};
}

// The out-variant's buffers: dtypes, shapes and contiguity as allocate_outputs() would make them,
// and no byte shared with another buffer or with an input the kernel reads.
void check_outputs(const Outputs& o, const Inputs& in, bool complementary, int64_t loss_weight_mode) {
  const int64_t n = (complementary ? 2 : 1) * in.T;
  check_buffer(o.noisy, "noisy", in.ids.scalar_type(), {n});
  check_buffer(o.masked, "masked", at::kBool, {n});
  check_buffer(o.labels, "labels", at::kLong, {n});
  check_buffer(o.loss_weight, "loss_weight", at::kFloat, {loss_weight_mode != detail::kLossWeightNone ? n : 0});
  check_buffer(o.rates, "rates", at::kDouble, {in.S, 2});
  const std::pair<const char*, const at::Tensor*> outs[] = {
      {"noisy", &o.noisy}, {"masked", &o.masked}, {"labels", &o.labels}, {"loss_weight", &o.loss_weight}, {"rates", &o.rates}};
  const std::pair<const char*, const at::Tensor*> ins[] = {
      {"input_ids", &in.ids}, {"cu_seqlens", &in.cu}, {"sigma", &in.sigma}, {"priority", &in.priority},
      {"maskable", &in.maskable}, {"prompt_lens", &in.prompt_lens}, {"sample_ids", &in.sample_ids}, {"rng", &in.rng}};
  for (size_t i = 0; i < 5; ++i) {
    const auto a = byte_span(*outs[i].second);
    if (a.first == a.second) continue;
    const auto overlaps = [&](const at::Tensor& y) {
      const auto b = byte_span(y);
      return b.first != b.second && a.first < b.second && b.first < a.second;
    };
    for (size_t j = i + 1; j < 5; ++j) {
      TORCH_CHECK_VALUE(!overlaps(*outs[j].second), "priority_mask: ", outs[i].first, ": shares memory with ", outs[j].first);
    }
    for (const auto& x : ins) {
      TORCH_CHECK_VALUE(!overlaps(*x.second), "priority_mask: ", outs[i].first, ": shares memory with the input ", x.first);
    }
  }
}

// What the kernel reads and writes: pointers into the checked inputs, the segment table and the
// outputs (all of which outlive the call).
Ctx make_ctx(const Inputs& in, const SegmentTable& segments, const Outputs& o, double weight, bool exact,
             bool complementary, int64_t loss_weight_mode, int64_t mask_token_id) {
  Ctx c;
  c.T = in.T;
  c.S = in.S;
  c.cu = in.cu_ptr;
  c.seg_start = segments.data();
  c.seg_seq = c.seg_start + in.S + 1;
  c.prio = in.priority.defined() && !in.weighted ? static_cast<const uint8_t*>(in.priority.data_ptr()) : nullptr;
  c.weights = in.weighted ? in.priority.data_ptr<float>() : nullptr;
  c.maskable = in.maskable.defined() ? static_cast<const uint8_t*>(in.maskable.data_ptr()) : nullptr;
  c.plen = in.prompt_lens.defined() ? in.prompt_lens.data_ptr<int64_t>() : nullptr;
  c.sample_ids = in.sample_ids.defined() ? in.sample_ids.data_ptr<int64_t>() : nullptr;
  const int64_t* rng = in.rng.data_ptr<int64_t>();
  c.seed = uint64_t(rng[0]);
  c.seq_offset = uint64_t(rng[1]);
  c.sigma = in.sigma.data_ptr<float>();
  c.sigma_bcast = in.sigma.numel() == 1;
  c.w = weight;
  c.exact = exact;
  c.complementary = complementary;
  c.lw_mode = loss_weight_mode;
  c.mask_id = mask_token_id;
  const int64_t has_lw = loss_weight_mode != detail::kLossWeightNone;
  const int64_t out_bytes = (complementary ? 2 : 1) * in.T * (in.ids.element_size() + 9 + (has_lw ? 4 : 0));
  c.streaming_stores = out_bytes >= stream_threshold();
  c.ids = in.ids.data_ptr();
  c.noisy = o.noisy.data_ptr();
  c.masked = o.masked.data_ptr<bool>();
  c.labels = o.labels.data_ptr<int64_t>();
  c.lw = has_lw ? o.loss_weight.data_ptr<float>() : nullptr;
  c.rates = o.rates.data_ptr<double>();
  c.ids32 = in.ids.scalar_type() == at::kInt;
  return c;
}

void run(const Inputs& in, int64_t block_size, const Outputs& o, double weight, bool exact, bool complementary,
         int64_t loss_weight_mode, int64_t mask_token_id) {
  if (in.S == 0) return;  // no segment, hence no token
  SegmentTable segments(size_t(2 * in.S + 1));
  segment_table(in, block_size, segments);
  const Ctx c = make_ctx(in, segments, o, weight, exact, complementary, loss_weight_mode, mask_token_id);
  (use_avx512_kernel() ? detail::priority_mask_kernel_avx512 : detail::priority_mask_kernel_baseline)(c);
}

}  // namespace

std::string kernel_isa() { return use_avx512_kernel() ? "avx512" : "baseline"; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> priority_mask_cpu(
    const at::Tensor& input_ids, const at::Tensor& cu_seqlens, const at::Tensor& sigma,
    const std::optional<at::Tensor>& priority, const std::optional<at::Tensor>& maskable,
    const std::optional<at::Tensor>& prompt_lens, const std::optional<at::Tensor>& sample_ids,
    const at::Tensor& rng, double weight, int64_t block_size, int64_t num_segments, bool exact,
    bool complementary, int64_t loss_weight_mode, int64_t mask_token_id) {
  Inputs in;
  check_inputs(in, input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng, weight, block_size,
               num_segments, loss_weight_mode, mask_token_id);
  const Outputs o = allocate_outputs(in, complementary, loss_weight_mode);
  run(in, block_size, o, weight, exact, complementary, loss_weight_mode, mask_token_id);
  return {o.noisy, o.masked, o.labels, o.loss_weight, o.rates};
}

void priority_mask_out_cpu(
    const at::Tensor& input_ids, const at::Tensor& cu_seqlens, const at::Tensor& sigma,
    const std::optional<at::Tensor>& priority, const std::optional<at::Tensor>& maskable,
    const std::optional<at::Tensor>& prompt_lens, const std::optional<at::Tensor>& sample_ids,
    const at::Tensor& rng, double weight, int64_t block_size, int64_t num_segments, bool exact,
    bool complementary, int64_t loss_weight_mode, int64_t mask_token_id, const at::Tensor& noisy,
    const at::Tensor& masked, const at::Tensor& labels, const at::Tensor& loss_weight, const at::Tensor& rates) {
  Inputs in;
  check_inputs(in, input_ids, cu_seqlens, sigma, priority, maskable, prompt_lens, sample_ids, rng, weight, block_size,
               num_segments, loss_weight_mode, mask_token_id);
  const Outputs o{noisy, masked, labels, loss_weight, rates};
  check_outputs(o, in, complementary, loss_weight_mode);
  run(in, block_size, o, weight, exact, complementary, loss_weight_mode, mask_token_id);
}

}  // namespace dllm_masks
