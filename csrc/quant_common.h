// Arithmetic shared by the CPU and CUDA kernels (and mirrored op for op by the PyTorch reference in
// actnn_mm/engine/reference.py), so that all three produce bit-identical results.
//
// Every float operation is a single IEEE round-to-nearest operation: on the device through the
// __f*_rn intrinsics (never fused into FMA, never approximate even under --use_fast_math), on the
// host through plain operators compiled with -ffp-contract=off.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "philox.h"

namespace actnn {

#if defined(__CUDA_ARCH__)
ACTNN_HD float f_sub(float a, float b) { return __fsub_rn(a, b); }
ACTNN_HD float f_add(float a, float b) { return __fadd_rn(a, b); }
ACTNN_HD float f_mul(float a, float b) { return __fmul_rn(a, b); }
ACTNN_HD float f_div(float a, float b) { return __fdiv_rn(a, b); }
#else
ACTNN_HD float f_sub(float a, float b) { return a - b; }
ACTNN_HD float f_add(float a, float b) { return a + b; }
ACTNN_HD float f_mul(float a, float b) { return a * b; }
ACTNN_HD float f_div(float a, float b) { return a / b; }
#endif

// True for NaN and +-Inf, without relying on library calls (works the same on host and device).
ACTNN_HD bool non_finite(float v) { return !(f_sub(v, v) == 0.0f); }

// A tensor seen as [N samples, D features], cut into Gs groups of G per sample (tail padded).
struct Layout {
  int64_t N;   // samples
  int64_t D;   // features per sample
  int64_t G;   // group size
  int64_t Gs;  // groups per sample (ceil(D / G))
  ACTNN_HD int64_t groups() const { return N * Gs; }
};

ACTNN_HD int max_level(int bits) { return (1 << bits) - 1; }

// Per-group parameters derived from the group's min/max of its valid (unpadded) elements.
//   stored:  mn, step = R / B        (dequantize: q * step + mn)
//   used:    scale = B / R           (quantize:  floor((x - mn) * scale + u), clamped to [0, B])
// A group with NaN/Inf (or whose range overflows fp32) stores NaN so that every element of it
// dequantizes to NaN: non-finite values are never turned into plausible finite numbers.
// A constant group (R == 0), or one whose range is so small (< ~1e-36) that B / R overflows, is
// stored exactly as its min (scale = step = 0).
struct GroupParams {
  float mn;
  float step;
  float scale;
  bool bad;
};

ACTNN_HD GroupParams group_params(float mn, float mx, bool bad, int bits) {
  GroupParams p;
  const float B = static_cast<float>(max_level(bits));
  // x + 0 turns -0 into +0: min/max implementations may pick either zero, the result must not.
  mn = f_add(mn, 0.0f);
  mx = f_add(mx, 0.0f);
  const float R = f_sub(mx, mn);
  if (bad || non_finite(R)) {
    p.mn = NAN;
    p.step = NAN;
    p.scale = 0.0f;
    p.bad = true;
    return p;
  }
  float s = R > 0.0f ? f_div(B, R) : 0.0f;
  if (!(s <= FLT_MAX)) s = 0.0f;
  p.mn = mn;
  p.scale = s;
  p.step = s > 0.0f ? f_div(R, B) : 0.0f;
  p.bad = false;
  return p;
}

// u is uniform in [0, 1) for stochastic rounding, 0.5 for deterministic round-half-up.
// t = (x - mn) * scale + u is never negative (x >= mn, scale >= 0, u >= 0), so truncation to an
// integer is floor(t); the PyTorch reference computes floor + clamp, with the same result.
ACTNN_HD uint32_t quantize_code(float x, float mn, float scale, float u, uint32_t B) {
  const float t = f_add(f_mul(f_sub(x, mn), scale), u);
  const uint32_t q = static_cast<uint32_t>(static_cast<int32_t>(t));
  return q < B ? q : B;
}

ACTNN_HD uint32_t quantize_value(float x, const GroupParams& p, float u, int bits) {
  if (p.bad) return 0u;
  return quantize_code(x, p.mn, p.scale, u, static_cast<uint32_t>(max_level(bits)));
}

ACTNN_HD float dequantize_value(uint32_t q, float mn, float step) {
  return f_add(f_mul(static_cast<float>(q), step), mn);
}

// 8 values of `bits` bits (1..8) <-> `bits` bytes: value j occupies bits [j*bits, (j+1)*bits) of
// the little-endian integer formed by the bytes. For 1/2/4/8 bits this is the natural packing.
ACTNN_HD uint64_t pack8(const uint32_t q[8], int bits) {
  uint64_t v = 0;
  for (int j = 0; j < 8; ++j) v |= static_cast<uint64_t>(q[j]) << (j * bits);
  return v;
}

ACTNN_HD void unpack8(uint64_t v, int bits, uint32_t q[8]) {
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int j = 0; j < 8; ++j) q[j] = static_cast<uint32_t>((v >> (j * bits)) & mask);
}

ACTNN_HD void store_bytes(uint8_t* dst, uint64_t v, int nbytes) {
  for (int i = 0; i < nbytes; ++i) dst[i] = static_cast<uint8_t>(v >> (8 * i));
}

ACTNN_HD uint64_t load_bytes(const uint8_t* src, int nbytes) {
  uint64_t v = 0;
  for (int i = 0; i < nbytes; ++i) v |= static_cast<uint64_t>(src[i]) << (8 * i);
  return v;
}

// ---- fused compression (actnn_mm::compress): pre-transform, sensitivity, bit allocation ----

// Optional per-index affine applied before quantizing: v = (x - shift[i]) * scale[i] with
// i = (e / inner) % period for element e of the flat buffer (memory order). Per channel of an
// NCHW tensor: inner = H*W, period = C; channels_last: inner = 1; consecutive blocks (rows of a
// layer norm, groups of a group norm): inner = block, period = numel / block.
struct Affine {
  const float* shift;  // nullptr: no transform
  const float* scale;
  int64_t inner;
  int64_t period;
};

ACTNN_HD float affine_value(float v, float shift, float scale) {
  return f_mul(f_sub(v, shift), scale);
}

// Cost per unit sensitivity of removing the b-th bit (b >= 2): 1/(2^(b-1)-1)^2 - 1/(2^b-1)^2,
// in fp32 with every operation rounded (the reference computes the same ops).
ACTNN_HD float bit_weight(int b) {
  const float lo = static_cast<float>((1 << (b - 1)) - 1);
  const float hi = static_cast<float>((1 << b) - 1);
  return f_sub(f_div(1.0f, f_mul(lo, lo)), f_div(1.0f, f_mul(hi, hi)));
}

// A sample's sensitivity for the allocation: NaN -> 0, +Inf -> FLT_MAX, negative -> 0.
ACTNN_HD float clean_sensitivity(float c) {
  if (c != c) return 0.0f;
  if (c > FLT_MAX) return FLT_MAX;
  return c > 0.0f ? c : 0.0f;
}

// A sample's range statistic for the allocator: NaN and +Inf -> 0.
ACTNN_HD float clean_stat(float c) { return (c != c || c > FLT_MAX) ? 0.0f : c; }

// Sort key of the (sample n, level j) item of the greedy: its cost (>= 0, so the IEEE bits
// order like the values) then its index n * levels + j. Keys are unique, so "the k smallest"
// is one well-defined set on every device; along a row the cost never falls (bit_weight grows
// as b falls) and the index grows, so the chosen items of a sample are its highest bits.
ACTNN_HD uint64_t item_key(float c, float w, uint64_t index) {
  const float cost = f_add(f_mul(c, w), 0.0f);
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(cost);
#else
  uint32_t bits;
  memcpy(&bits, &cost, sizeof(bits));
#endif
  return (static_cast<uint64_t>(bits) << 32) | index;
}

}  // namespace actnn
