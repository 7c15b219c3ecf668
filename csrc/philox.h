// Philox 4x32-10 counter-based random generator, written once for host and device.
//
// Why counter-based: the random number used for element e depends only on (seed, offset, e), so the
// CPU kernel, the CUDA kernel and the pure-PyTorch reference (actnn_mm/engine/philox.py) produce
// the same stream, and therefore the same packed bytes, for the same seed. No curand.
//
// Stream layout (shared by every implementation):
//   key     = (lo32(seed), hi32(seed))
//   counter = (lo32(c), hi32(c), lo32(offset), hi32(offset))
//   element e (in the zero-padded [sample, group, position] order) uses 16-bit half e % 2 (low
//   first) of word (e % 8) / 2 of call c = e / 8 (uniform16).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ACTNN_HD __host__ __device__ __forceinline__
#else
#define ACTNN_HD inline
#endif

namespace actnn {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

ACTNN_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  lo = static_cast<uint32_t>(p);
  hi = static_cast<uint32_t>(p >> 32);
#endif
}

// One Philox round on the counter (c0..c3) with key (k0, k1).
ACTNN_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                           uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo32(kPhiloxM0, c0, hi0, lo0);
  mulhilo32(kPhiloxM1, c2, hi1, lo1);
  const uint32_t n0 = hi1 ^ c1 ^ k0;
  const uint32_t n2 = hi0 ^ c3 ^ k1;
  c0 = n0;
  c1 = lo1;
  c2 = n2;
  c3 = lo0;
}

// Key of round r (0-based): the key bumped r times.
ACTNN_HD void philox_round_key(uint32_t k0, uint32_t k1, int r, uint32_t& rk0, uint32_t& rk1) {
  rk0 = k0 + static_cast<uint32_t>(r) * kPhiloxW0;
  rk1 = k1 + static_cast<uint32_t>(r) * kPhiloxW1;
}

// Random123's philox4x32_10: ten rounds, the key bumped between rounds.
ACTNN_HD void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                            uint32_t k1, uint32_t out[4]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t rk0, rk1;
    philox_round_key(k0, k1, r, rk0, rk1);
    philox_round(c0, c1, c2, c3, rk0, rk1);
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Four random words for call `counter` of the stream (seed, offset).
ACTNN_HD void philox_block(uint64_t seed, uint64_t offset, uint64_t counter, uint32_t out[4]) {
  philox4x32_10(static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32),
                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), out);
}

// Uniform in (0, 1) from a 16-bit half h of a random word: (2h + 1) * 2^-17, the midpoint of
// the h-th of 2^16 equal cells (exact in fp32). Eight per Philox call (4 words, low half first):
// stochastic rounding needs one per element, and with midpoints it is unbiased up to 2^-17 of a
// quantization step, while the stream costs half the Philox calls of one 24-bit uniform a word.
ACTNN_HD float uniform16(uint32_t h) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(static_cast<float>(2u * h + 1u), 7.62939453125e-06f);
#else
  return static_cast<float>(2u * h + 1u) * 7.62939453125e-06f;
#endif
}

}  // namespace actnn
