// CUDA twin of bn_backward (cpu/norm_backward_cpu.cpp): batch norm's backward read from the
// compressed normalised input, x_hat never written out. Three kernels on the current stream, no
// host sync:
//   sums:     one warp per group (grid-stride): dequantize 8 values per lane, per-channel
//             sum(dy) and sum(dy * x_hat) in float64 (a warp reduction when the group lies in
//             one channel, else one atomic per channel run per lane)
//   finalize: per channel the weight / bias gradients and the input-gradient coefficients
//   grad:     one warp per group: (dy - mean_dy - x_hat * k) * w, 8 values per lane
// The float64 atomics make the sums' order vary between runs (by float64 rounding, far below
// the float32 results' precision).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "quant_common.h"

namespace actnn {
namespace {

using namespace cuda_common;

struct BnGeometry {
  int64_t inner, channels;
};

// The 8 values of chunk c of group pg as dequantize returns them (rounded to T), as fp32.
template <typename T>
__device__ __forceinline__ void chunk_values(const PackedGroup& pg,
                                             const uint8_t* __restrict__ payload, int64_t c,
                                             float v[8]) {
  pg.values8(payload, c, v);
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = to_f(from_f<T>(v[j]));
}

// The channel of consecutive elements of a sample, from element e0 on: one division at the
// start, then a step per element.
struct ChannelCursor {
  int64_t ch, next, inner, C;

  __device__ __forceinline__ ChannelCursor(int64_t e0, const BnGeometry& geo)
      : inner(geo.inner), C(geo.channels) {
    const int64_t block = e0 / inner;
    ch = block % C;
    next = (block + 1) * inner;
  }

  // The channel of element e, for e = e0, e0 + 1, ... in turn.
  __device__ __forceinline__ int64_t at(int64_t e) {
    if (e == next) {
      next += inner;
      if (++ch == C) ch = 0;
    }
    return ch;
  }
};

__device__ __forceinline__ void flush(double* __restrict__ acc, int64_t C, int64_t c, double s,
                                      double d) {
  atomicAdd(acc + c, s);
  atomicAdd(acc + C + c, d);
}

template <typename T, int CPL>
__global__ void __launch_bounds__(kThreads)
    bn_sums_kernel(const T* __restrict__ dy, const uint8_t* __restrict__ payload,
                   const float2* __restrict__ meta, Layout l, SampleBits sb, BnGeometry geo,
                   double* __restrict__ acc) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int64_t chunks = l.G / 8, C = geo.channels;
  for (int64_t gi = warp; gi < l.groups(); gi += nwarps) {
    const PackedGroup pg(l, sb, meta, gi);
    const T* dyn = dy + pg.n * l.D;
    int64_t cur = -1;  // the channel this lane is summing, -1 before its first element
    double s = 0.0, d = 0.0;
#pragma unroll
    for (int k = 0; k < CPL; ++k) {
      const int64_t c = lane + 32 * k;
      if (c >= chunks || 8 * c >= pg.len) break;
      const int valid = static_cast<int>(imin(8, pg.len - 8 * c));
      float v[8];
      chunk_values<T>(pg, payload, c, v);
      const int64_t e0 = pg.start + 8 * c;
      ChannelCursor cursor(e0, geo);
      for (int j = 0; j < valid; ++j) {
        const int64_t ch = cursor.at(e0 + j);
        if (ch != cur) {
          if (cur >= 0) flush(acc, C, cur, s, d);
          cur = ch;
          s = d = 0.0;
        }
        const float gv = to_f(dyn[e0 + j]);
        s += gv;
        d += static_cast<double>(f_mul(gv, v[j]));
      }
    }
    // One channel for the whole warp (a group inside one channel's run): reduce, one atomic.
    const int64_t lead = __shfl_sync(0xffffffffu, cur, 0);
    if (__all_sync(0xffffffffu, cur == lead || cur < 0) && lead >= 0) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        s += __shfl_down_sync(0xffffffffu, s, off);
        d += __shfl_down_sync(0xffffffffu, d, off);
      }
      if (lane == 0) flush(acc, C, lead, s, d);
    } else if (cur >= 0) {
      flush(acc, C, cur, s, d);
    }
  }
}

// coef: [mean_dy, k, w] per channel; gw / gb: the weight and bias gradients (float32).
__global__ void bn_finalize_kernel(const double* __restrict__ acc, int64_t C, double M,
                                   const float* __restrict__ scale, float* __restrict__ coef,
                                   float* __restrict__ gw, float* __restrict__ gb) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < C;
       c += stride) {
    const double s = acc[c], d = acc[C + c];
    gb[c] = static_cast<float>(s);
    gw[c] = static_cast<float>(d);
    coef[c] = static_cast<float>(s / M);
    coef[C + c] = static_cast<float>(d / M);
    coef[2 * C + c] = scale ? scale[c] : 1.0f;
  }
}

template <typename T, int CPL, bool VEC>
__global__ void __launch_bounds__(kThreads)
    bn_grad_kernel(const T* __restrict__ dy, const uint8_t* __restrict__ payload,
                   const float2* __restrict__ meta, Layout l, SampleBits sb, BnGeometry geo,
                   const float* __restrict__ coef, T* __restrict__ gx) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int64_t chunks = l.G / 8, C = geo.channels;
  for (int64_t gi = warp; gi < l.groups(); gi += nwarps) {
    const PackedGroup pg(l, sb, meta, gi);
    const int64_t row = pg.n * l.D;
#pragma unroll
    for (int k = 0; k < CPL; ++k) {
      const int64_t c = lane + 32 * k;
      if (c >= chunks || 8 * c >= pg.len) break;
      const int valid = static_cast<int>(imin(8, pg.len - 8 * c));
      float v[8], gv[8], r[8];
      chunk_values<T>(pg, payload, c, v);
      const int64_t e0 = pg.start + 8 * c;
      load8(dy + row + e0, VEC && valid == 8, valid, gv);
      ChannelCursor cursor(e0, geo);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t ch = cursor.at(e0 + j);
        r[j] = f_mul(f_sub(f_sub(gv[j], coef[ch]), f_mul(v[j], coef[C + ch])), coef[2 * C + ch]);
      }
      store8(gx + row + e0, VEC && valid == 8, valid, r);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_backward_cuda(
    const at::Tensor& grad, const at::Tensor& payload, const at::Tensor& meta, int64_t num_samples,
    int64_t numel_per_sample, int64_t group_size, int64_t bits,
    const std::optional<at::Tensor>& sample_bits, const std::optional<at::Tensor>& sample_offsets,
    const std::optional<at::Tensor>& scale, int64_t channel_inner, int64_t channels,
    bool input_grad) {
  const Layout l =
      check_bn_backward_args(grad, payload, meta, num_samples, numel_per_sample, group_size, bits,
                             sample_bits, sample_offsets, scale, channel_inner, channels);
  TORCH_CHECK(reinterpret_cast<uintptr_t>(meta.const_data_ptr()) % 8 == 0,
              "actnn_mm.bn_backward: meta must be 8-byte aligned (read as (min, step) pairs)");
  const c10::cuda::CUDAGuard guard(grad.device());
  auto f32 = grad.options().dtype(at::kFloat);
  auto gw = at::empty({channels}, f32), gb = at::empty({channels}, f32);
  auto gx = input_grad ? at::empty({grad.numel()}, grad.options()) : at::empty({0}, grad.options());
  auto acc = at::zeros({2 * channels}, grad.options().dtype(at::kDouble));
  auto coef = at::empty({3 * channels}, f32);
  const SampleBits sb{
      static_cast<int>(bits), sample_bits ? sample_bits->data_ptr<int32_t>() : nullptr,
      sample_offsets ? sample_offsets->data_ptr<int64_t>() : nullptr, payload.numel()};
  const BnGeometry geo{channel_inner, channels};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto* mp = reinterpret_cast<const float2*>(meta.const_data_ptr<float>());
  const int64_t grid = grid_for(l.groups(), kWarpsPerBlock);
  ACTNN_DISPATCH_FLOAT_CUDA(grad.scalar_type(), "actnn_mm.bn_backward", [&] {
    const auto* dp = reinterpret_cast<const scalar_t*>(grad.const_data_ptr());
    if (l.groups() > 0) {
      dispatch_cpl<scalar_t>(l, false, [&]<int CPL, bool VEC>() {
        bn_sums_kernel<scalar_t, CPL><<<grid, kThreads, 0, stream>>>(
            dp, payload.const_data_ptr<uint8_t>(), mp, l, sb, geo, acc.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    const double M = static_cast<double>(l.N) * static_cast<double>(l.D / channels);
    bn_finalize_kernel<<<grid_for(channels, kThreads), kThreads, 0, stream>>>(
        acc.const_data_ptr<double>(), channels, M > 0 ? M : 1.0,
        scale ? scale->const_data_ptr<float>() : nullptr, coef.data_ptr<float>(),
        gw.data_ptr<float>(), gb.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (input_grad && l.groups() > 0) {
      auto* op = reinterpret_cast<scalar_t*>(gx.data_ptr());
      const bool vec = vector_ok<scalar_t>(op, l) && vector_ok<scalar_t>(dp, l);
      dispatch_cpl<scalar_t>(l, vec, [&]<int CPL, bool VEC>() {
        bn_grad_kernel<scalar_t, CPL, VEC>
            <<<grid, kThreads, 0, stream>>>(dp, payload.const_data_ptr<uint8_t>(), mp, l, sb, geo,
                                            coef.const_data_ptr<float>(), op);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
  });
  return {gx, gw, gb};
}

}  // namespace
}  // namespace actnn

TORCH_LIBRARY_IMPL(actnn_mm, CUDA, m) { m.impl("bn_backward", &actnn::bn_backward_cuda); }
