// The per-group hot loops of the CPU kernels, each compiled three times (AVX-512, AVX2,
// baseline x86-64; GCC's target_clones picks one when the library loads). The loops are plain
// structure-of-arrays code the compiler vectorises: min/max, the Philox rounds over a group's
// calls, quantization, bit packing and unpacking. Vector width changes nothing in the results:
// the same IEEE operations (no FMA: -ffp-contract=off), the same integer arithmetic.
#include <cstdint>

#include "cpu/cpu_common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ACTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ACTNN_CLONES
#endif

namespace actnn {
namespace cpu {

ACTNN_CLONES
void reduce_group(const float* buf, int64_t len, float& mn, float& mx, bool& bad) {
  float lo = buf[0], hi = buf[0];
  int nf = 0;
  for (int64_t j = 0; j < len; ++j) {
    const float v = buf[j];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    nf |= static_cast<int>(non_finite(v));
  }
  mn = lo;
  mx = hi;
  bad = nf != 0;
}

ACTNN_CLONES
void quantize_pack_group(const float* buf, int64_t len, int64_t G, float mn, float scale,
                         bool bad, int b, bool stochastic, uint64_t seed, uint64_t offset,
                         int64_t gi, uint8_t* out) {
  alignas(64) uint32_t q[kMaxGroupSize];
  alignas(64) float u[kMaxGroupSize];
  if (bad) {
    for (int64_t j = 0; j < G; ++j) q[j] = 0u;
  } else {
    if (stochastic) {
      philox_uniforms(seed, offset, static_cast<uint64_t>(gi) * static_cast<uint64_t>(G / 4),
                      G / 4, u);
    } else {
      for (int64_t j = 0; j < len; ++j) u[j] = 0.5f;
    }
    const uint32_t Bq = static_cast<uint32_t>(max_level(b));
    for (int64_t j = 0; j < len; ++j) q[j] = quantize_code(buf[j], mn, scale, u[j], Bq);
    for (int64_t j = len; j < G; ++j) q[j] = 0u;
  }
  with_bits(b, [&](auto bb) { pack_group<decltype(bb)::value>(q, G / 8, out); });
}

ACTNN_CLONES
void unpack_dequantize_group(const uint8_t* src, int b, int64_t len, float mn, float step,
                             float* out) {
  alignas(64) uint32_t q[kMaxGroupSize];
  const int64_t chunks = (len + 7) / 8;
  with_bits(b, [&](auto bb) { unpack_group<decltype(bb)::value>(src, chunks, q); });
  for (int64_t j = 0; j < len; ++j) out[j] = dequantize_value(q[j], mn, step);
}

}  // namespace cpu
}  // namespace actnn
