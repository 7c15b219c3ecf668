// Building blocks of the CUDA kernels (quantize_cuda.cu, compress_cuda.cu): dtype conversions,
// 16-byte vector loads/stores, packed stores, warp reductions, per-sample bit lookup, launch
// helpers and the random-stream choice.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <mutex>
#include <optional>

#include "checks.h"
#include "host_rng.h"
#include "quant_common.h"

namespace actnn {
namespace cuda_common {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

// Explicit conversions (torch builds with __CUDA_NO_HALF_CONVERSIONS__); all round to nearest even
// like c10::Half / c10::BFloat16 on the host.
__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// 8 consecutive elements -> fp32. `vec`: the 8 elements are in range and 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load8(const T* __restrict__ p, bool vec, int valid, float out[8]) {
  if (vec) {
    if constexpr (sizeof(T) == 4) {
      const float4 a = reinterpret_cast<const float4*>(p)[0];
      const float4 b = reinterpret_cast<const float4*>(p)[1];
      out[0] = a.x;
      out[1] = a.y;
      out[2] = a.z;
      out[3] = a.w;
      out[4] = b.x;
      out[5] = b.y;
      out[6] = b.z;
      out[7] = b.w;
    } else {
      const uint4 raw = *reinterpret_cast<const uint4*>(p);
      const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) out[j] = to_f(h[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = j < valid ? to_f(p[j]) : 0.0f;
  }
}

template <typename T>
__device__ __forceinline__ void store8(T* __restrict__ p, bool vec, int valid, const float v[8]) {
  if (vec) {
    if constexpr (sizeof(T) == 4) {
      reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
      reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      uint4 raw;
      T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) h[j] = from_f<T>(v[j]);
      *reinterpret_cast<uint4*>(p) = raw;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (j < valid) p[j] = from_f<T>(v[j]);
  }
}

__device__ __forceinline__ void store_packed(uint8_t* dst, uint64_t v, int nbytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(dst);
  if (nbytes == 1) {
    *dst = static_cast<uint8_t>(v);
  } else if (nbytes == 2 && a % 2 == 0) {
    *reinterpret_cast<uint16_t*>(dst) = static_cast<uint16_t>(v);
  } else if (nbytes == 4 && a % 4 == 0) {
    *reinterpret_cast<uint32_t*>(dst) = static_cast<uint32_t>(v);
  } else if (nbytes == 8 && a % 8 == 0) {
    *reinterpret_cast<uint64_t*>(dst) = v;
  } else {
    store_bytes(dst, v, nbytes);
  }
}

__device__ __forceinline__ uint64_t load_packed(const uint8_t* src, int nbytes) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(src);
  if (nbytes == 1) return *src;
  if (nbytes == 2 && a % 2 == 0) return *reinterpret_cast<const uint16_t*>(src);
  if (nbytes == 4 && a % 4 == 0) return *reinterpret_cast<const uint32_t*>(src);
  if (nbytes == 8 && a % 8 == 0) return *reinterpret_cast<const uint64_t*>(src);
  return load_bytes(src, nbytes);
}

struct SampleBits {
  int bits;
  const int32_t* sample_bits;
  const int64_t* sample_offsets;
  int64_t payload_bytes;
  // Bits and byte offset of group gi; false when the per-sample tables are inconsistent (then
  // nothing is written out of bounds and the group decodes to NaN).
  __device__ __forceinline__ bool locate(const Layout& l, int64_t n, int64_t g, int& b,
                                         int64_t& base) const {
    b = sample_bits ? sample_bits[n] : bits;
    if (b < 1 || b > 8) return false;
    const int64_t group_bytes = (l.G / 8) * b;
    base = (sample_offsets ? sample_offsets[n] : n * l.Gs * group_bytes) + g * group_bytes;
    return base >= 0 && base + group_bytes <= payload_bytes;
  }
};

// One group of a payload as a warp decodes it: sample n, group g, elements start .. start + len
// of the sample, where its codes are (b bits at byte base) and its (min, step); ok is false when
// the per-sample tables are inconsistent (every value of the group then decodes to NaN).
struct PackedGroup {
  int64_t n, g, start, len, base;
  int b;
  bool ok;
  float2 mp;

  __device__ __forceinline__ PackedGroup(const Layout& l, const SampleBits& sb,
                                         const float2* __restrict__ meta, int64_t gi) {
    n = gi / l.Gs;
    g = gi - n * l.Gs;
    start = g * l.G;
    len = imin(l.G, l.D - start);
    ok = sb.locate(l, n, g, b, base);
    mp = ok ? meta[gi] : make_float2(NAN, NAN);
  }

  // The 8 values of chunk c (elements 8c .. 8c + 7 of the group): q * step + mn.
  __device__ __forceinline__ void values8(const uint8_t* __restrict__ payload, int64_t c,
                                          float r[8]) const {
    uint32_t q[8];
    if (ok) {
      unpack8(load_packed(payload + base + c * b, b), b, q);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) q[j] = 0u;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) r[j] = dequantize_value(q[j], mp.x, mp.y);
  }
};

// Bits of group gi, its (min, step) into meta, and this lane's chunks quantized (stochastic
// rounding from the group's own Philox counters) and packed into the payload: the tail shared by
// the quantize and the fused compress kernels, once the group's values and range are known.
template <int CPL>
__device__ __forceinline__ void quantize_pack_group(float (&v)[CPL][8], float mn, float mx,
                                                    bool bad, const Layout& l, const SampleBits& sb,
                                                    int64_t n, int64_t g, int64_t gi, int lane,
                                                    bool stochastic, uint64_t seed, uint64_t offset,
                                                    uint8_t* __restrict__ payload,
                                                    float2* __restrict__ meta) {
  const int64_t chunks = l.G / 8;
  int b;
  int64_t base;
  const bool ok = sb.locate(l, n, g, b, base);
  const GroupParams p = group_params(mn, mx, bad, ok ? b : 1);
  if (lane == 0) meta[gi] = ok ? make_float2(p.mn, p.step) : make_float2(NAN, NAN);
  if (!ok) return;
  const int64_t len = imin(l.G, l.D - g * l.G);
#pragma unroll
  for (int k = 0; k < CPL; ++k) {
    const int64_t c = lane + 32 * k;
    if (c >= chunks) break;
    float u[8];
    if (stochastic) {
      uint32_t r[4];  // one call: the 8 uniforms of this chunk of 8 elements
      philox_block(seed, offset, static_cast<uint64_t>(gi) * static_cast<uint64_t>(l.G / 8) + c, r);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        u[2 * j] = uniform16(r[j] & 0xFFFFu);
        u[2 * j + 1] = uniform16(r[j] >> 16);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) u[j] = 0.5f;
    }
    uint32_t q[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) q[j] = (8 * c + j < len) ? quantize_value(v[k][j], p, u[j], b) : 0u;
    store_packed(payload + base + c * b, pack8(q, b), b);
  }
}

__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ int warp_or(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Loads this lane's chunks of group gi and reduces (min, max, any non-finite) over the warp.
template <typename T, int CPL, bool VEC>
__device__ __forceinline__ void load_group(const T* __restrict__ x, const Layout& l, int64_t n,
                                           int64_t g, int lane, float v[CPL][8], float& mn,
                                           float& mx, bool& bad) {
  const int64_t chunks = l.G / 8;
  const int64_t start = g * l.G;
  const int64_t len = imin(l.G, l.D - start);
  const T* src = x + n * l.D + start;
  float lo = INFINITY, hi = -INFINITY;
  int nf = 0;
#pragma unroll
  for (int k = 0; k < CPL; ++k) {
    const int64_t c = lane + 32 * k;
    const int64_t e0 = 8 * c;
    const int valid = c < chunks ? static_cast<int>(imax(0, imin(8, len - e0))) : 0;
    if (valid > 0) {
      load8(src + e0, VEC && valid == 8, valid, v[k]);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j < valid) {
          lo = fminf(lo, v[k][j]);
          hi = fmaxf(hi, v[k][j]);
          nf |= static_cast<int>(non_finite(v[k][j]));
        }
      }
    }
  }
  mn = warp_min(lo);
  mx = warp_max(hi);
  bad = warp_or(nf) != 0;
}

// ---- launch helpers ------------------------------------------------------------------------

inline int64_t grid_for(int64_t work_items, int64_t items_per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (work_items + items_per_block - 1) / items_per_block;
  return std::max<int64_t>(1, std::min<int64_t>(want, sms * 64));
}

template <typename T>
bool vector_ok(const void* p, const Layout& l) {
  constexpr int64_t per16 = 16 / sizeof(T);
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && l.D % per16 == 0;
}

// Calls f.template operator()<CPL, VEC>() with CPL = chunks of 8 per lane covering the group.
template <typename T, typename F>
void dispatch_cpl(const Layout& l, bool vec, F&& f) {
  const int64_t chunks = l.G / 8;
  auto by_vec = [&](auto cpl) {
    constexpr int C = decltype(cpl)::value;
    if (vec)
      f.template operator()<C, true>();
    else
      f.template operator()<C, false>();
  };
  if (chunks <= 32)
    by_vec(std::integral_constant<int, 1>{});
  else if (chunks <= 64)
    by_vec(std::integral_constant<int, 2>{});
  else if (chunks <= 128)
    by_vec(std::integral_constant<int, 4>{});
  else if (chunks <= 256)
    by_vec(std::integral_constant<int, 8>{});
  else
    by_vec(std::integral_constant<int, 16>{});
}

#define ACTNN_DISPATCH_FLOAT_CUDA(TYPE, NAME, ...)              \
  [&] {                                                         \
    switch (TYPE) {                                             \
      case at::kFloat: {                                        \
        using scalar_t = float;                                 \
        return __VA_ARGS__();                                   \
      }                                                         \
      case at::kHalf: {                                         \
        using scalar_t = __half;                                \
        return __VA_ARGS__();                                   \
      }                                                         \
      case at::kBFloat16: {                                     \
        using scalar_t = __nv_bfloat16;                         \
        return __VA_ARGS__();                                   \
      }                                                         \
      default:                                                  \
        TORCH_CHECK(false, NAME, ": unsupported dtype ", TYPE); \
    }                                                           \
  }()

inline at::PhiloxCudaState rng_state(const at::Device& device, bool use_generator, int64_t seed,
                                     int64_t offset,
                                     const std::optional<at::Generator>& generator) {
  if (!use_generator) {
    return at::PhiloxCudaState(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  }
  const bool explicit_generator = generator.has_value() && generator->defined();
  if (explicit_generator) {
    TORCH_CHECK(generator->device() == device, "actnn_mm.quantize: generator is on ",
                generator->device(), " but x is on ", device);
  } else if (c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None) {
    // torch's default generators: the CPU kernel's host draw from the default CPU generator, so
    // the same torch.manual_seed gives the same bytes on CPU and CUDA (no device sync: the CPU
    // generator lives on the host). Under graph capture a host value would be frozen into the
    // graph, so the CUDA generator's graph-safe Philox state is used there instead.
    const auto so = draw_cpu_seed_offset(std::nullopt);
    return at::PhiloxCudaState(so.first, so.second);
  }
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device.index()));
  std::lock_guard<std::mutex> lock(gen->mutex_);
  // Each call consumes its own `offset` (counter words 2..3); the element index fills words 0..1.
  return gen->philox_cuda_state(4);
}

}  // namespace cuda_common
}  // namespace actnn
