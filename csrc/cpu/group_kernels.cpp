// The per-group hot loops of the CPU kernels, each compiled three times (AVX-512, AVX2,
// baseline x86-64; GCC's target_clones picks one when the library loads). The loops are plain
// structure-of-arrays code the compiler vectorises: min/max, the Philox rounds over a group's
// calls, quantization, bit packing and unpacking. Vector width changes nothing in the results:
// the same IEEE operations (no FMA: -ffp-contract=off), the same integer arithmetic.
#include <cstdint>
#include <cstring>

#include "cpu/cpu_common.h"

namespace actnn {
namespace cpu {

#ifdef ACTNN_X86_AVX512
// Philox 4x32-10 for 16 consecutive calls at once (one call per 32-bit lane): the same rounds
// as philox.h, with the 32x32 -> 64-bit products split into even and odd lanes.
__attribute__((target("avx512f"))) static inline void mulhilo16(__m512i a, __m512i m, __m512i& hi,
                                                                __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

__attribute__((target("avx512f"))) static inline __m512 lo_pd(__m512 x, __m512 y) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
}
__attribute__((target("avx512f"))) static inline __m512 hi_pd(__m512 x, __m512 y) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(x), _mm512_castps_pd(y)));
}

// Uniforms of calls ctr0 .. ctr0 + calls - 1 (the layout of philox_uniforms in cpu_common.h).
__attribute__((target("avx512f"))) static void philox_uniforms_avx512(uint64_t seed,
                                                                      uint64_t offset,
                                                                      uint64_t ctr0, int64_t calls,
                                                                      float* u) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m512 to_unit = _mm512_set1_ps(5.9604644775390625e-08f);
  int64_t k = 0;
  for (; k + 16 <= calls; k += 16) {
    const uint64_t c = ctr0 + static_cast<uint64_t>(k);
    if ((c & 0xFFFFFFFFu) > 0xFFFFFFFFu - 15u) break;  // low word wraps inside the block
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(c)), iota);
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(c >> 32));
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(offset));
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(offset >> 32));
    for (int r = 0; r < 10; ++r) {
      uint32_t k0, k1;
      philox_round_key(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), r, k0, k1);
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(c0, m0, hi0, lo0);
      mulhilo16(c2, m1, hi1, lo1);
      const __m512i n0 =
          _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
      const __m512i n2 =
          _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
      c0 = n0;
      c1 = lo1;
      c2 = n2;
      c3 = lo0;
    }
    __m512 f[4];
    const __m512i words[4] = {c0, c1, c2, c3};
    for (int j = 0; j < 4; ++j)
      f[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(words[j], 8)), to_unit);
    // Interleave to u[4 * call + word]: per 128-bit lane, then a 4 x 4 transpose of lanes.
    const __m512 a_lo = _mm512_unpacklo_ps(f[0], f[1]), a_hi = _mm512_unpackhi_ps(f[0], f[1]);
    const __m512 b_lo = _mm512_unpacklo_ps(f[2], f[3]), b_hi = _mm512_unpackhi_ps(f[2], f[3]);
    const __m512 t0 = lo_pd(a_lo, b_lo), t1 = hi_pd(a_lo, b_lo);
    const __m512 t2 = lo_pd(a_hi, b_hi), t3 = hi_pd(a_hi, b_hi);
    const __m512 s0 = _mm512_shuffle_f32x4(t0, t1, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 s1 = _mm512_shuffle_f32x4(t2, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 s2 = _mm512_shuffle_f32x4(t0, t1, _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 s3 = _mm512_shuffle_f32x4(t2, t3, _MM_SHUFFLE(3, 2, 3, 2));
    float* dst = u + 4 * k;
    _mm512_storeu_ps(dst, _mm512_shuffle_f32x4(s0, s1, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_ps(dst + 16, _mm512_shuffle_f32x4(s0, s1, _MM_SHUFFLE(3, 1, 3, 1)));
    _mm512_storeu_ps(dst + 32, _mm512_shuffle_f32x4(s2, s3, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_ps(dst + 48, _mm512_shuffle_f32x4(s2, s3, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  for (; k < calls; ++k) {
    uint32_t r[4];
    philox_block(seed, offset, ctr0 + static_cast<uint64_t>(k), r);
    for (int j = 0; j < 4; ++j) u[4 * k + j] = uniform01(r[j]);
  }
}

// Shift of code i within its 32-bit word: 16 codes of b <= 2 bits fill one word, of 4 bits two
// (codes 0..7 the low word, 8..15 the high one).
__attribute__((target("avx512f"))) static inline __m512i code_shifts(int b) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lane = b == 4 ? _mm512_and_si512(iota, _mm512_set1_epi32(7)) : iota;
  return _mm512_mullo_epi32(lane, _mm512_set1_epi32(b));
}

// pack_group for b in {1, 2, 4}, 16 codes (2b bytes) per step; `count` is a multiple of 16.
__attribute__((target("avx512f"))) static void pack_avx512(const uint32_t* q, int64_t count, int b,
                                                           uint8_t* out) {
  const __m512i shifts = code_shifts(b);
  for (int64_t j = 0; j < count; j += 16) {
    const __m512i v = _mm512_sllv_epi32(_mm512_loadu_si512(q + j), shifts);
    uint8_t* dst = out + j / 8 * b;
    if (b == 4) {
      const uint64_t lo = static_cast<uint32_t>(_mm512_mask_reduce_or_epi32(0x00FF, v));
      const uint64_t hi = static_cast<uint32_t>(_mm512_mask_reduce_or_epi32(0xFF00, v));
      const uint64_t w = lo | (hi << 32);
      memcpy(dst, &w, 8);
    } else {
      const uint32_t w = static_cast<uint32_t>(_mm512_reduce_or_epi32(v));
      memcpy(dst, &w, 2 * b);
    }
  }
}

// unpack + dequantize for b in {1, 2, 4}: codes index a table of the 2^b values (each the
// same f_add(f_mul(q, step), mn) the scalar loop computes), 16 per step.
__attribute__((target("avx512f"))) static int64_t dequantize_avx512(const uint8_t* src, int b,
                                                                    int64_t len, float mn,
                                                                    float step, float* out) {
  alignas(64) float lut[16];
  const int levels = 1 << b;
  for (int q = 0; q < 16; ++q)
    lut[q] = q < levels ? dequantize_value(static_cast<uint32_t>(q), mn, step) : 0.0f;
  const __m512 table = _mm512_load_ps(lut);
  const __m512i mask = _mm512_set1_epi32(levels - 1);
  const __m512i shifts = code_shifts(b);
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const uint8_t* p = src + j / 8 * b;
    __m512i words;
    if (b == 4) {
      uint32_t w[2];
      memcpy(w, p, 8);
      words = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(static_cast<int>(w[0]))),
                                 _mm256_set1_epi32(static_cast<int>(w[1])), 1);
    } else {
      uint32_t w = 0;
      memcpy(&w, p, 2 * b);
      words = _mm512_set1_epi32(static_cast<int>(w));
    }
    const __m512i codes = _mm512_and_si512(_mm512_srlv_epi32(words, shifts), mask);
    _mm512_storeu_ps(out + j, _mm512_permutexvar_ps(codes, table));
  }
  return j;
}

#endif

// philox_uniforms with 16 calls per AVX-512 vector where the CPU has it.
static inline void group_uniforms(uint64_t seed, uint64_t offset, uint64_t ctr0, int64_t calls,
                                  float* u) {
#ifdef ACTNN_X86_AVX512
  if (cpu_has_avx512f()) {
    philox_uniforms_avx512(seed, offset, ctr0, calls, u);
    return;
  }
#endif
  philox_uniforms(seed, offset, ctr0, calls, u);
}

#ifdef ACTNN_X86_AVX512
// min/max/non-finite over 16 lanes. Any order gives the same (min, max) for finite values up to
// the sign of zero, which callers canonicalise (+ 0.0f); with a non-finite value the group is
// stored as NaN whatever min/max are.
__attribute__((target("avx512f"))) static void reduce_avx512(const float* buf, int64_t len,
                                                             float& mn, float& mx, bool& bad) {
  __m512 lo = _mm512_set1_ps(buf[0]), hi = lo;
  const __m512 zero = _mm512_setzero_ps();
  __mmask16 nf = 0;
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const __m512 v = _mm512_loadu_ps(buf + j);
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
    nf |= _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), zero, _CMP_NEQ_UQ);
  }
  if (j < len) {
    const __mmask16 m = static_cast<__mmask16>((1u << (len - j)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, buf + j);
    lo = _mm512_mask_min_ps(lo, m, lo, v);
    hi = _mm512_mask_max_ps(hi, m, hi, v);
    nf |= _mm512_mask_cmp_ps_mask(m, _mm512_sub_ps(v, v), zero, _CMP_NEQ_UQ);
  }
  mn = _mm512_reduce_min_ps(lo);
  mx = _mm512_reduce_max_ps(hi);
  bad = nf != 0;
}
#endif

ACTNN_CLONES
void reduce_group(const float* buf, int64_t len, float& mn, float& mx, bool& bad) {
#ifdef ACTNN_X86_AVX512
  if (cpu_has_avx512f()) {
    reduce_avx512(buf, len, mn, mx, bad);
    return;
  }
#endif
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
void quantize_pack_group(const float* buf, int64_t len, int64_t G, float mn, float scale, bool bad,
                         int b, bool stochastic, uint64_t seed, uint64_t offset, int64_t gi,
                         uint8_t* out) {
  alignas(64) uint32_t q[kMaxGroupSize];
  alignas(64) float u[kMaxGroupSize];
  if (bad) {
    for (int64_t j = 0; j < G; ++j) q[j] = 0u;
  } else {
    if (stochastic) {
      group_uniforms(seed, offset, static_cast<uint64_t>(gi) * static_cast<uint64_t>(G / 4), G / 4,
                     u);
    } else {
      for (int64_t j = 0; j < len; ++j) u[j] = 0.5f;
    }
    const uint32_t Bq = static_cast<uint32_t>(max_level(b));
    for (int64_t j = 0; j < len; ++j) q[j] = quantize_code(buf[j], mn, scale, u[j], Bq);
    for (int64_t j = len; j < G; ++j) q[j] = 0u;
  }
#ifdef ACTNN_X86_AVX512
  if ((b == 1 || b == 2 || b == 4) && G % 16 == 0 && cpu_has_avx512f()) {
    pack_avx512(q, G, b, out);
    return;
  }
#endif
  with_bits(b, [&](auto bb) { pack_group<decltype(bb)::value>(q, G / 8, out); });
}

ACTNN_CLONES
void unpack_dequantize_group(const uint8_t* src, int b, int64_t len, float mn, float step,
                             float* out) {
  int64_t done = 0;
#ifdef ACTNN_X86_AVX512
  if ((b == 1 || b == 2 || b == 4) && cpu_has_avx512f())
    done = dequantize_avx512(src, b, len, mn, step, out);
#endif
  if (done == len) return;
  alignas(64) uint32_t q[kMaxGroupSize];
  const int64_t chunks = (len - done + 7) / 8;
  const uint8_t* rest = src + done / 8 * b;  // done is a multiple of 16
  with_bits(b, [&](auto bb) { unpack_group<decltype(bb)::value>(rest, chunks, q); });
  for (int64_t j = done; j < len; ++j) out[j] = dequantize_value(q[j - done], mn, step);
}

}  // namespace cpu
}  // namespace actnn
