// The per-group hot loops of the CPU kernels: hand-vectorised AVX-512 / AVX2 paths where the CPU
// has them, else loops compiled three times (AVX-512, AVX2, baseline x86-64; GCC's
// target_clones picks one when the library loads). The loops are plain
// structure-of-arrays code the compiler vectorises: min/max, the Philox rounds over a group's
// calls, quantization, bit packing and unpacking. Vector width changes nothing in the results:
// the same IEEE operations (no FMA: -ffp-contract=off), the same integer arithmetic.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/cpu_common.h"

namespace actnn {
namespace cpu {

int cpu_isa_level() {
  int level = 0;
#ifdef ACTNN_X86_AVX512
  if (__builtin_cpu_supports("avx2")) level = 1;
  if (level == 1 && __builtin_cpu_supports("avx512f")) level = 2;
#endif
  const char* cap = std::getenv("ACTNN_MM_CPU_ISA");
  if (cap != nullptr && *cap != '\0') {
    const std::string c(cap);
    TORCH_CHECK(c == "avx512" || c == "avx2" || c == "none",
                "ACTNN_MM_CPU_ISA must be avx512, avx2 or none, got '", c, "'");
    level = std::min(level, c == "avx512" ? 2 : c == "avx2" ? 1 : 0);
  }
  return level;
}

#ifdef ACTNN_X86_AVX512
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

// unpack + dequantize for B in {1, 2, 4}: codes index a table of the 2^B values (each the
// same f_add(f_mul(q, step), mn) the scalar loop computes), 16 per step. B is a template
// parameter so that each step's code word is one fixed-size load.
template <int B>
__attribute__((target("avx512f"))) static int64_t dequantize_avx512_b(const uint8_t* src,
                                                                      int64_t len, float mn,
                                                                      float step, float* out) {
  // lane q: f_add(f_mul(q, step), mn) (codes are masked below 2^B; the lanes above unused)
  const __m512 table =
      _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                       10, 11, 12, 13, 14, 15)),
                                  _mm512_set1_ps(step)),
                    _mm512_set1_ps(mn));
  const __m512i mask = _mm512_set1_epi32((1 << B) - 1);
  const __m512i shifts = code_shifts(B);
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const uint8_t* p = src + j / 8 * B;
    __m512i words;
    if constexpr (B == 4) {
      uint32_t w[2];
      memcpy(w, p, 8);
      words = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(static_cast<int>(w[0]))),
                                 _mm256_set1_epi32(static_cast<int>(w[1])), 1);
    } else {
      std::conditional_t<B == 1, uint16_t, uint32_t> w;
      memcpy(&w, p, 2 * B);
      words = _mm512_set1_epi32(static_cast<int>(w));
    }
    const __m512i codes = _mm512_and_si512(_mm512_srlv_epi32(words, shifts), mask);
    _mm512_storeu_ps(out + j, _mm512_permutexvar_ps(codes, table));
  }
  return j;
}

__attribute__((target("avx512f"))) static int64_t dequantize_avx512(const uint8_t* src, int b,
                                                                    int64_t len, float mn,
                                                                    float step, float* out) {
  if (b == 1) return dequantize_avx512_b<1>(src, len, mn, step, out);
  if (b == 2) return dequantize_avx512_b<2>(src, len, mn, step, out);
  return dequantize_avx512_b<4>(src, len, mn, step, out);
}

#endif

#ifdef ACTNN_X86_AVX512
// ---- AVX2 (also taken on AVX-512 CPUs where no AVX-512 twin exists) ----------------------

// Philox 4x32-10 for 8 consecutive calls at once (one call per 32-bit lane): the rounds of
// philox.h, the 32x32 -> 64-bit products split into even and odd lanes.
__attribute__((target("avx2"))) static inline void mulhilo8(__m256i a, __m256i m, __m256i& hi,
                                                            __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Call-major words from word-major vectors (lane k of c_j = word j of call k): out[m] holds the
// four words of call 2m in its low 128 bits and of call 2m + 1 in its high ones.
__attribute__((target("avx2"))) static inline void transpose_calls8(__m256i c0, __m256i c1,
                                                                    __m256i c2, __m256i c3,
                                                                    __m256i* out) {
  const __m256i a_lo = _mm256_unpacklo_epi32(c0, c1), a_hi = _mm256_unpackhi_epi32(c0, c1);
  const __m256i b_lo = _mm256_unpacklo_epi32(c2, c3), b_hi = _mm256_unpackhi_epi32(c2, c3);
  const __m256i t0 = _mm256_unpacklo_epi64(a_lo, b_lo);  // calls 0 | 4
  const __m256i t1 = _mm256_unpackhi_epi64(a_lo, b_lo);  // calls 1 | 5
  const __m256i t2 = _mm256_unpacklo_epi64(a_hi, b_hi);  // calls 2 | 6
  const __m256i t3 = _mm256_unpackhi_epi64(a_hi, b_hi);  // calls 3 | 7
  _mm256_storeu_si256(out, _mm256_permute2x128_si256(t0, t1, 0x20));
  _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(t2, t3, 0x20));
  _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(t0, t1, 0x31));
  _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(t2, t3, 0x31));
}

// Whether calls c .. c + n - 1 keep the high counter word (no carry out of the low one).
static inline bool no_carry(uint64_t c, int64_t n) {
  return (c & 0xFFFFFFFFu) <= 0xFFFFFFFFu - static_cast<uint64_t>(n - 1);
}

// V independent blocks of 8 calls (c, c + 8, ...) interleaved round by round, so that the
// multiplies' latency overlaps; words stored call-major at w (philox_words' layout).
template <int V>
__attribute__((target("avx2"))) static inline void philox_blocks_avx2(const uint32_t* rk0,
                                                                      const uint32_t* rk1,
                                                                      uint64_t offset, uint64_t c,
                                                                      uint32_t* w) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i c0[V], c1[V], c2[V], c3[V];
  for (int v = 0; v < V; ++v) {
    c0[v] = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c + 8 * v)), iota);
    c1[v] = _mm256_set1_epi32(static_cast<int>(c >> 32));
    c2[v] = _mm256_set1_epi32(static_cast<int>(offset));
    c3[v] = _mm256_set1_epi32(static_cast<int>(offset >> 32));
  }
  for (int r = 0; r < 10; ++r) {
    const __m256i k0 = _mm256_set1_epi32(static_cast<int>(rk0[r]));
    const __m256i k1 = _mm256_set1_epi32(static_cast<int>(rk1[r]));
    for (int v = 0; v < V; ++v) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(c0[v], m0, hi0, lo0);
      mulhilo8(c2[v], m1, hi1, lo1);
      c0[v] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[v]), k0);
      c2[v] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[v]), k1);
      c1[v] = lo1;
      c3[v] = lo0;
    }
  }
  for (int v = 0; v < V; ++v)
    transpose_calls8(c0[v], c1[v], c2[v], c3[v], reinterpret_cast<__m256i*>(w + 32 * v));
}

// The ten round keys of a seed.
static inline void philox_keys(uint64_t seed, uint32_t* rk0, uint32_t* rk1) {
  for (int r = 0; r < 10; ++r)
    philox_round_key(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), r, rk0[r],
                     rk1[r]);
}

// Words of calls ctr0 .. ctr0 + calls - 1, call k's at w[4k .. 4k + 3] (philox_words' layout).
__attribute__((target("avx2"))) static void philox_words_avx2(uint64_t seed, uint64_t offset,
                                                              uint64_t ctr0, int64_t calls,
                                                              uint32_t* w) {
  uint32_t rk0[10], rk1[10];
  philox_keys(seed, rk0, rk1);
  int64_t k = 0;
  for (; k + 32 <= calls && no_carry(ctr0 + k, 32); k += 32)
    philox_blocks_avx2<4>(rk0, rk1, offset, ctr0 + k, w + 4 * k);
  for (; k + 8 <= calls && no_carry(ctr0 + k, 8); k += 8)
    philox_blocks_avx2<1>(rk0, rk1, offset, ctr0 + k, w + 4 * k);
  for (; k < calls; ++k) philox_block(seed, offset, ctr0 + static_cast<uint64_t>(k), w + 4 * k);
}

// AVX-512: one call per 64-bit lane, so one multiply gives the whole 64-bit product (its high
// half one shift away; the garbage above a lane's low word never reaches a result: the
// multiplies read low words only). Four blocks of 8 calls interleaved; the three-way xors are
// single ternary-logic ops.
__attribute__((target("avx512f"))) static void philox_words_avx512(uint64_t seed, uint64_t offset,
                                                                   uint64_t ctr0, int64_t calls,
                                                                   uint32_t* w) {
  constexpr int V = 4;
  uint32_t rk0[10], rk1[10];
  philox_keys(seed, rk0, rk1);
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  const __m512i iota = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t k = 0;
  for (; k + 8 * V <= calls && no_carry(ctr0 + k, 8 * V); k += 8 * V) {
    const uint64_t c = ctr0 + static_cast<uint64_t>(k);
    __m512i c0[V], c1[V], c2[V], c3[V];
    for (int v = 0; v < V; ++v) {
      c0[v] = _mm512_add_epi64(_mm512_set1_epi64(static_cast<uint32_t>(c) + 8 * v), iota);
      c1[v] = _mm512_set1_epi64(c >> 32);
      c2[v] = _mm512_set1_epi64(static_cast<uint32_t>(offset));
      c3[v] = _mm512_set1_epi64(offset >> 32);
    }
    for (int r = 0; r < 10; ++r) {
      const __m512i k0 = _mm512_set1_epi64(rk0[r]), k1 = _mm512_set1_epi64(rk1[r]);
      for (int v = 0; v < V; ++v) {
        const __m512i p0 = _mm512_mul_epu32(c0[v], m0);
        const __m512i p1 = _mm512_mul_epu32(c2[v], m1);
        c0[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[v], k0, 0x96);
        c2[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[v], k1, 0x96);
        c1[v] = p1;
        c3[v] = p0;
      }
    }
    for (int v = 0; v < V; ++v)
      transpose_calls8(_mm512_cvtepi64_epi32(c0[v]), _mm512_cvtepi64_epi32(c1[v]),
                       _mm512_cvtepi64_epi32(c2[v]), _mm512_cvtepi64_epi32(c3[v]),
                       reinterpret_cast<__m256i*>(w + 4 * k + 32 * v));
  }
  if (k < calls) philox_words_avx2(seed, offset, ctr0 + k, calls - k, w + 4 * k);
}

// Codes of 8 values: (x - mn) * scale + u truncated and clamped to B (quantize_code's
// operations), u from eight 16-bit halves h (uniform16).
template <bool kFold>
__attribute__((target("avx2"))) static inline __m256i codes8(const float* x, __m256 vmn,
                                                             __m256 vscale, __m256 u, __m256i vB,
                                                             __m256 fshift, __m256 fscale) {
  __m256 v = _mm256_loadu_ps(x);
  if constexpr (kFold) v = _mm256_mul_ps(_mm256_sub_ps(v, fshift), fscale);  // affine_value
  const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(v, vmn), vscale), u);
  return _mm256_min_epu32(_mm256_cvttps_epi32(t), vB);
}

__attribute__((target("avx2"))) static inline __m256 uniforms8(__m128i h) {
  const __m256i hv = _mm256_cvtepu16_epi32(h);
  return _mm256_mul_ps(
      _mm256_cvtepi32_ps(_mm256_or_si256(_mm256_slli_epi32(hv, 1), _mm256_set1_epi32(1))),
      _mm256_set1_ps(7.62939453125e-06f));
}

// Codes of elements [0, len & ~7): (x - mn) * scale + u truncated and clamped to B, u from the
// 16-bit halves h (uniform16) or 0.5 when h is null; the scalar quantize_code's operations.
__attribute__((target("avx2"))) static int64_t quantize_avx2(const float* buf, int64_t len,
                                                             float mn, float scale,
                                                             const uint16_t* h, uint32_t B,
                                                             uint32_t* q) {
  const __m256 vmn = _mm256_set1_ps(mn), vscale = _mm256_set1_ps(scale);
  const __m256 half = _mm256_set1_ps(0.5f), none = _mm256_setzero_ps();
  const __m256i vB = _mm256_set1_epi32(static_cast<int>(B));
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 u =
        h != nullptr ? uniforms8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j))) : half;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j),
                        codes8<false>(buf + j, vmn, vscale, u, vB, none, none));
  }
  return j;
}

// The b bytes of 8 packed codes as one word (b 1..4), and back (b 1, 2, 4; fixed-size copies).
static inline uint32_t load_code_word(const uint8_t* src, int b) {
  if (b == 1) return src[0];
  if (b == 3) return src[0] | (uint32_t{src[1]} << 8) | (uint32_t{src[2]} << 16);
  if (b == 2) {
    uint16_t v;
    memcpy(&v, src, 2);
    return v;
  }
  uint32_t v;
  memcpy(&v, src, 4);
  return v;
}

static inline void store_code_word(uint8_t* dst, uint32_t w, int b) {
  if (b == 1) {
    dst[0] = static_cast<uint8_t>(w);
  } else if (b == 2) {
    const uint16_t v = static_cast<uint16_t>(w);
    memcpy(dst, &v, 2);
  } else {
    memcpy(dst, &w, 4);
  }
}

// OR of the 8 lanes.
__attribute__((target("avx2"))) static inline uint32_t or_lanes(__m256i v) {
  __m128i r = _mm_or_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  r = _mm_or_si128(r, _mm_shuffle_epi32(r, 0x4E));
  r = _mm_or_si128(r, _mm_shuffle_epi32(r, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(r));
}

// pack_group for b in {1, 2, 4}: 8 codes (b bytes) per step; `count` is a multiple of 8.
__attribute__((target("avx2"))) static void pack_avx2(const uint32_t* q, int64_t count, int b,
                                                      uint8_t* out) {
  const __m256i shifts =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(b));
  for (int64_t j = 0; j < count; j += 8) {
    const uint32_t w = or_lanes(
        _mm256_sllv_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + j)), shifts));
    store_code_word(out + j / 8 * b, w, b);
  }
}

// OR of each of four vectors' 8 lanes: word k of the result is x[k]'s.
__attribute__((target("avx2"))) static inline __m128i or_lanes4(__m256i x0, __m256i x1, __m256i x2,
                                                                __m256i x3) {
  const __m256i a = _mm256_or_si256(_mm256_unpacklo_epi32(x0, x1), _mm256_unpackhi_epi32(x0, x1));
  const __m256i b = _mm256_or_si256(_mm256_unpacklo_epi32(x2, x3), _mm256_unpackhi_epi32(x2, x3));
  const __m256i c = _mm256_or_si256(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
  return _mm_or_si128(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
}

// quantize_pack_group for a whole group (G a multiple of 64) of b in 1..4 bits: codes of
// 64 values per step in registers, packed straight to `out` (no code buffer). u from the 16-bit
// halves h (uniform16), or 0.5 when h is null; the same operations as quantize_code. kFold:
// the values are affine_value(x, fold.shift, fold.scale), computed here.
template <bool kFold>
__attribute__((target("avx2"))) static void quantize_pack_avx2(const float* x, int64_t G, float mn,
                                                               float scale, int b,
                                                               const uint16_t* h, Fold fold,
                                                               uint8_t* out) {
  const __m256 fshift = _mm256_set1_ps(fold.shift), fscale = _mm256_set1_ps(fold.scale);
  const __m256 vmn = _mm256_set1_ps(mn), vscale = _mm256_set1_ps(scale);
  const __m256i vB = _mm256_set1_epi32(static_cast<int>(max_level(b)));
  const __m256i s2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i s2h = _mm256_add_epi32(s2, _mm256_set1_epi32(16));
  const __m256i s4 = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256 half = _mm256_set1_ps(0.5f);
  for (int64_t j = 0; j < G; j += 64) {
    __m256i q[8];
    for (int m = 0; m < 8; ++m) {
      const __m256 u =
          h != nullptr ? uniforms8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j + 8 * m)))
                       : half;
      q[m] = codes8<kFold>(x + j + 8 * m, vmn, vscale, u, vB, fshift, fscale);
    }
    uint8_t* dst = out + j / 8 * b;
    if (b == 1) {
      uint64_t bytes = 0;
      for (int m = 0; m < 8; ++m)
        bytes |= static_cast<uint64_t>(static_cast<uint32_t>(
                     _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q[m], 31)))))
                 << (8 * m);
      memcpy(dst, &bytes, 8);
    } else if (b == 2) {
      __m256i x4[4];
      for (int m = 0; m < 4; ++m)
        x4[m] =
            _mm256_or_si256(_mm256_sllv_epi32(q[2 * m], s2), _mm256_sllv_epi32(q[2 * m + 1], s2h));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), or_lanes4(x4[0], x4[1], x4[2], x4[3]));
    } else if (b == 3) {  // 8 codes -> 24 bits: four words' low 3 bytes per or_lanes4
      const __m256i s3 = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
      const __m128i take3 = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
      for (int k = 0; k < 2; ++k) {
        const __m128i w = _mm_shuffle_epi8(
            or_lanes4(_mm256_sllv_epi32(q[4 * k], s3), _mm256_sllv_epi32(q[4 * k + 1], s3),
                      _mm256_sllv_epi32(q[4 * k + 2], s3), _mm256_sllv_epi32(q[4 * k + 3], s3)),
            take3);
        alignas(16) uint8_t tmp[16];
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), w);
        memcpy(dst + 12 * k, tmp, 12);
      }
    } else {
      for (int k = 0; k < 2; ++k)
        _mm_storeu_si128(
            reinterpret_cast<__m128i*>(dst + 16 * k),
            or_lanes4(_mm256_sllv_epi32(q[4 * k], s4), _mm256_sllv_epi32(q[4 * k + 1], s4),
                      _mm256_sllv_epi32(q[4 * k + 2], s4), _mm256_sllv_epi32(q[4 * k + 3], s4)));
    }
  }
}

// unpack + dequantize for b in 1..4: codes index a table of the 2^b values (each the
// scalar f_add(f_mul(q, step), mn)), 8 per step. Returns how many elements were written.
__attribute__((target("avx2"))) static int64_t dequantize_avx2(const uint8_t* src, int b,
                                                               int64_t len, float mn, float step,
                                                               float* out) {
  const int levels = 1 << b;
  // lane q of lo / hi: f_add(f_mul(q, step), mn) for codes q and q + 8
  const __m256 vstep = _mm256_set1_ps(step), vmn = _mm256_set1_ps(mn);
  const __m256 iota = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
  const __m256 lo_table = _mm256_add_ps(_mm256_mul_ps(iota, vstep), vmn);
  const __m256 hi_table =
      _mm256_add_ps(_mm256_mul_ps(_mm256_add_ps(iota, _mm256_set1_ps(8.f)), vstep), vmn);
  const __m256i mask = _mm256_set1_epi32(levels - 1);
  const __m256i shifts =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(b));
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const uint32_t w = load_code_word(src + j / 8 * b, b);
    const __m256i codes =
        _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), shifts), mask);
    __m256 v = _mm256_permutevar8x32_ps(lo_table, codes);
    if (b == 4) {  // codes 8..15: the high table, picked by bit 3 (moved to the sign bit)
      const __m256 hi = _mm256_permutevar8x32_ps(hi_table, codes);
      v = _mm256_blendv_ps(v, hi, _mm256_castsi256_ps(_mm256_slli_epi32(codes, 28)));
    }
    _mm256_storeu_ps(out + j, v);
  }
  return j;
}

// min/max/non-finite over 8 lanes (see reduce_avx512).
__attribute__((target("avx2"))) static void reduce_avx2(const float* buf, int64_t len, float& mn,
                                                        float& mx, bool& bad) {
  __m256 lo = _mm256_set1_ps(buf[0]), hi = lo;
  __m256 nf = _mm256_setzero_ps();
  const __m256 zero = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 v = _mm256_loadu_ps(buf + j);
    lo = _mm256_min_ps(lo, v);
    hi = _mm256_max_ps(hi, v);
    nf = _mm256_or_ps(nf, _mm256_cmp_ps(_mm256_sub_ps(v, v), zero, _CMP_NEQ_UQ));
  }
  alignas(32) float l8[8], h8[8];
  _mm256_store_ps(l8, lo);
  _mm256_store_ps(h8, hi);
  float a = l8[0], z = h8[0];
  for (int k = 1; k < 8; ++k) {
    a = l8[k] < a ? l8[k] : a;
    z = h8[k] > z ? h8[k] : z;
  }
  bool any = _mm256_movemask_ps(nf) != 0;
  for (; j < len; ++j) {
    const float v = buf[j];
    a = v < a ? v : a;
    z = v > z ? v : z;
    any |= non_finite(v);
  }
  mn = a;
  mx = z;
  bad = any;
}
#endif

// philox_words with 8 calls per AVX2 vector where the CPU has it.
static inline void group_words(uint64_t seed, uint64_t offset, uint64_t ctr0, int64_t calls,
                               uint32_t* w) {
#ifdef ACTNN_X86_AVX512
  if (cpu_has_avx512f()) {
    philox_words_avx512(seed, offset, ctr0, calls, w);
    return;
  }
  if (cpu_has_avx2()) {
    philox_words_avx2(seed, offset, ctr0, calls, w);
    return;
  }
#endif
  philox_words(seed, offset, ctr0, calls, w);
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
  if (cpu_has_avx2()) {
    reduce_avx2(buf, len, mn, mx, bad);
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
                         uint8_t* out, Fold fold) {
  const uint64_t ctr0 = static_cast<uint64_t>(gi) * static_cast<uint64_t>(G / 8);
  alignas(64) uint32_t w[kMaxGroupSize / 2];  // G / 8 calls x 4 words: G 16-bit halves
  if (!bad && stochastic) group_words(seed, offset, ctr0, G / 8, w);
  const uint16_t* h = !bad && stochastic ? reinterpret_cast<const uint16_t*>(w) : nullptr;
#ifdef ACTNN_X86_AVX512
  // Whole groups of 1..4 bits: codes in registers, no code buffer.
  if (!bad && len == G && G % 64 == 0 && b <= 4 && cpu_has_avx2()) {
    if (fold.on)
      quantize_pack_avx2<true>(buf, G, mn, scale, b, h, fold, out);
    else
      quantize_pack_avx2<false>(buf, G, mn, scale, b, h, fold, out);
    return;
  }
#endif
  alignas(64) float folded[kMaxGroupSize];
  if (fold.on && !bad) {
    for (int64_t j = 0; j < len; ++j) folded[j] = affine_value(buf[j], fold.shift, fold.scale);
    buf = folded;
  }
  alignas(64) uint32_t q[kMaxGroupSize];
  if (bad) {
    for (int64_t j = 0; j < G; ++j) q[j] = 0u;
  } else {
    const uint32_t Bq = static_cast<uint32_t>(max_level(b));
    int64_t j = 0;
#ifdef ACTNN_X86_AVX512
    if (cpu_has_avx2()) j = quantize_avx2(buf, len, mn, scale, h, Bq, q);
#endif
    for (; j < len; ++j)
      q[j] = quantize_code(buf[j], mn, scale, h != nullptr ? uniform16(h[j]) : 0.5f, Bq);
    for (j = len; j < G; ++j) q[j] = 0u;
  }
#ifdef ACTNN_X86_AVX512
  if ((b == 1 || b == 2 || b == 4) && G % 16 == 0 && cpu_has_avx512f()) {
    pack_avx512(q, G, b, out);
    return;
  }
  if ((b == 1 || b == 2 || b == 4) && cpu_has_avx2()) {
    pack_avx2(q, G, b, out);
    return;
  }
#endif
  with_bits(b, [&](auto bb) { pack_group<decltype(bb)::value>(q, G / 8, out); });
}

ACTNN_CLONES
void affine_run(float* buf, int64_t n, float shift, float scale) {
  for (int64_t j = 0; j < n; ++j) buf[j] = affine_value(buf[j], shift, scale);
}

ACTNN_CLONES
void affine_each(float* buf, int64_t n, const float* shift, const float* scale) {
  for (int64_t j = 0; j < n; ++j) buf[j] = affine_value(buf[j], shift[j], scale[j]);
}

ACTNN_CLONES
void unpack_dequantize_group(const uint8_t* src, int b, int64_t len, float mn, float step,
                             float* out) {
  int64_t done = 0;
#ifdef ACTNN_X86_AVX512
  if ((b == 1 || b == 2 || b == 4) && cpu_has_avx512f())
    done = dequantize_avx512(src, b, len, mn, step, out);
  else if (b <= 4 && cpu_has_avx2())
    done = dequantize_avx2(src, b, len, mn, step, out);
#endif
  if (done == len) return;
  alignas(64) uint32_t q[kMaxGroupSize];
  const int64_t chunks = (len - done + 7) / 8;
  const uint8_t* rest = src + done / 8 * b;  // done is a multiple of 8
  with_bits(b, [&](auto bb) { unpack_group<decltype(bb)::value>(rest, chunks, q); });
  for (int64_t j = done; j < len; ++j) out[j] = dequantize_value(q[j - done], mn, step);
}

}  // namespace cpu
}  // namespace actnn
