// Building blocks of the CPU kernels (quantize_cpu.cpp, compress_cpu.cpp): per-group loads,
// the Philox rounds structure-of-arrays, packing with the bit width as a template parameter.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <type_traits>

#include "checks.h"
#include "quant_common.h"

// Hand-vectorised AVX-512 and AVX2 paths (intrinsics in target("avx512f") / target("avx2")
// functions, taken when cpu_has_avx512f() / cpu_has_avx2()) and compiler-cloned loops (AVX-512,
// AVX2, baseline x86-64; GCC's target_clones picks one when the library loads).
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ACTNN_X86_AVX512 1
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ACTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ACTNN_CLONES
#endif

namespace actnn {
namespace cpu {

constexpr int64_t kGrain = 8;  // groups per task: at G=256 that is 8 KiB of fp32 input

// The widest hand-vectorised paths to take: 2 = AVX-512, 1 = AVX2, 0 = none. What the CPU has,
// capped by ACTNN_MM_CPU_ISA=avx2|none when set (so that one machine tests every path); read once.
int cpu_isa_level();

// Whether the AVX-512F paths run (the CPU has it and no cap says otherwise).
inline bool cpu_has_avx512f() {
  static const bool yes = cpu_isa_level() >= 2;
  return yes;
}

template <typename T>
inline float to_f(T v) {
  return static_cast<float>(v);
}

// Whether the AVX2 paths run.
inline bool cpu_has_avx2() {
  static const bool yes = cpu_isa_level() >= 1;
  return yes;
}

// Load the valid elements of one group as fp32 and reduce them to (min, max, any non-finite).
// The per-group hot loops, compiled for AVX-512, AVX2 and baseline x86-64 and picked at load
// time (group_kernels.cpp); same IEEE operations on every path, so the same bytes.
void reduce_group(const float* buf, int64_t len, float& mn, float& mx, bool& bad);
// An affine (x - shift) * scale still to apply to a group's fp32 values (one run of one channel,
// row or group of channels): quantizing applies it in registers instead of in a buffer first.
struct Fold {
  bool on = false;
  float shift = 0.0f, scale = 1.0f;
};
// Quantize one loaded group (params p, b bits, stream position gi) and pack it (G / 8 * b bytes).
// With `fold` on, buf holds the values before that affine.
void quantize_pack_group(const float* buf, int64_t len, int64_t G, float mn, float scale, bool bad,
                         int b, bool stochastic, uint64_t seed, uint64_t offset, int64_t gi,
                         uint8_t* out, Fold fold = Fold{});
// buf[j] = (buf[j] - shift) * scale for j < n (one channel's run of a normalised input).
void affine_run(float* buf, int64_t n, float shift, float scale);
// buf[j] = (buf[j] - shift[j]) * scale[j] for j < n (consecutive channels, channels_last).
void affine_each(float* buf, int64_t n, const float* shift, const float* scale);
// Unpack `len` codes of b bits and dequantize them (q * step + mn) into out.
void unpack_dequantize_group(const uint8_t* src, int b, int64_t len, float mn, float step,
                             float* out);

// Bits and payload byte offset of group g of sample n (uniform `bits`, or the per-sample tables
// sb / so); false when they are inconsistent (the group then decodes to NaN, nothing is read out
// of bounds).
inline bool locate_group(const Layout& l, int64_t bits, const int32_t* sb, const int64_t* so,
                         int64_t payload_bytes, int64_t n, int64_t g, int& b, int64_t& base) {
  b = sb ? static_cast<int>(sb[n]) : static_cast<int>(bits);
  if (b < 1 || b > 8) return false;
  const int64_t group_bytes = (l.G / 8) * b;
  base = (so ? so[n] : n * l.Gs * group_bytes) + g * group_bytes;
  return base >= 0 && base + group_bytes <= payload_bytes;
}

// The len values of group g of sample n dequantized into out as fp32 (all NaN when the
// per-sample tables are inconsistent): dequantize's step per group.
inline void dequantize_group(const uint8_t* payload, const float* meta, const Layout& l,
                             int64_t bits, const int32_t* sb, const int64_t* so,
                             int64_t payload_bytes, int64_t n, int64_t g, int64_t len, float* out) {
  int b;
  int64_t base;
  if (!locate_group(l, bits, sb, so, payload_bytes, n, g, b, base)) {
    for (int64_t j = 0; j < len; ++j) out[j] = NAN;
    return;
  }
  const int64_t gi = n * l.Gs + g;
  unpack_dequantize_group(payload + base, b, len, meta[2 * gi], meta[2 * gi + 1], out);
}

// Returns where the fp32 values are: src itself for fp32 (no copy), else buf.
template <typename T>
inline const float* load_group(const T* src, int64_t len, float* buf, float& mn, float& mx,
                               bool& bad) {
  if constexpr (std::is_same_v<T, float>) {
    reduce_group(src, len, mn, mx, bad);
    return src;
  } else {
    for (int64_t j = 0; j < len; ++j) buf[j] = to_f(src[j]);
    reduce_group(buf, len, mn, mx, bad);
    return buf;
  }
}

// Random words of calls ctr0 .. ctr0 + calls - 1 of the stream, call k's four words at
// w[4k .. 4k + 3] (read as uint16, element e of the group takes half e: uniform16), evaluated
// round by round over all calls (structure of arrays) so the compiler vectorises the rounds.
inline void philox_words(uint64_t seed, uint64_t offset, uint64_t ctr0, int64_t calls,
                         uint32_t* w) {
  uint32_t c0[kMaxGroupSize / 8], c1[kMaxGroupSize / 8], c2[kMaxGroupSize / 8],
      c3[kMaxGroupSize / 8];
  for (int64_t k = 0; k < calls; ++k) {
    const uint64_t c = ctr0 + static_cast<uint64_t>(k);
    c0[k] = static_cast<uint32_t>(c);
    c1[k] = static_cast<uint32_t>(c >> 32);
    c2[k] = static_cast<uint32_t>(offset);
    c3[k] = static_cast<uint32_t>(offset >> 32);
  }
  for (int r = 0; r < 10; ++r) {
    uint32_t k0, k1;
    philox_round_key(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), r, k0, k1);
    for (int64_t k = 0; k < calls; ++k) philox_round(c0[k], c1[k], c2[k], c3[k], k0, k1);
  }
  for (int64_t k = 0; k < calls; ++k) {
    w[4 * k] = c0[k];
    w[4 * k + 1] = c1[k];
    w[4 * k + 2] = c2[k];
    w[4 * k + 3] = c3[k];
  }
}

// Pack / unpack whole groups with the bit width known at compile time (unrolled shifts).
template <int B>
inline void pack_group(const uint32_t* q, int64_t chunks, uint8_t* out) {
  for (int64_t c = 0; c < chunks; ++c) {
    uint64_t v = 0;
    for (int j = 0; j < 8; ++j) v |= static_cast<uint64_t>(q[8 * c + j]) << (j * B);
    for (int i = 0; i < B; ++i) out[c * B + i] = static_cast<uint8_t>(v >> (8 * i));
  }
}

template <int B>
inline void unpack_group(const uint8_t* src, int64_t chunks, uint32_t* q) {
  constexpr uint64_t mask = (uint64_t{1} << B) - 1;
  for (int64_t c = 0; c < chunks; ++c) {
    uint64_t v = 0;
    for (int i = 0; i < B; ++i) v |= static_cast<uint64_t>(src[c * B + i]) << (8 * i);
    for (int j = 0; j < 8; ++j) q[8 * c + j] = static_cast<uint32_t>((v >> (j * B)) & mask);
  }
}

template <typename F>
inline void with_bits(int b, F&& f) {
  switch (b) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    case 4:
      f(std::integral_constant<int, 4>{});
      break;
    case 5:
      f(std::integral_constant<int, 5>{});
      break;
    case 6:
      f(std::integral_constant<int, 6>{});
      break;
    case 7:
      f(std::integral_constant<int, 7>{});
      break;
    default:
      f(std::integral_constant<int, 8>{});
      break;
  }
}

#define ACTNN_DISPATCH_FLOAT(TYPE, NAME, ...)                   \
  [&] {                                                         \
    switch (TYPE) {                                             \
      case at::kFloat: {                                        \
        using scalar_t = float;                                 \
        return __VA_ARGS__();                                   \
      }                                                         \
      case at::kHalf: {                                         \
        using scalar_t = at::Half;                              \
        return __VA_ARGS__();                                   \
      }                                                         \
      case at::kBFloat16: {                                     \
        using scalar_t = at::BFloat16;                          \
        return __VA_ARGS__();                                   \
      }                                                         \
      default:                                                  \
        TORCH_CHECK(false, NAME, ": unsupported dtype ", TYPE); \
    }                                                           \
  }()

}  // namespace cpu
}  // namespace actnn
