// CUDA kernels of actnn_mm::compress (one dispatched op; up to four launches, no host sync):
//   range_kernel     one warp per group: load (+ affine), min/max -> meta (min, max)
//   plan_kernel      one block: per-sample sensitivity, statistics, bit allocation (bisection
//                    for the k-th smallest unique key), byte offsets
//   quantize_kernel  one warp per group: load (+ affine), quantize, pack, meta (min, step)
// Uniform bits without statistics launch quantize_kernel alone (min/max computed in it). The
// arithmetic is csrc/quant_common.h's, so the bytes equal the CPU kernel's and the reference's.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "quant_common.h"

namespace actnn {
namespace {

using namespace cuda_common;

constexpr int kPlanThreads = 1024;

// Like load_group (cuda_common.cuh), with the affine pre-transform applied to each element and
// rounded back to T, as ((x - shift) * scale).to(x.dtype) does.
template <typename T, int CPL, bool VEC>
__device__ __forceinline__ void load_group_affine(const T* __restrict__ x, const Layout& l,
                                                  int64_t n, int64_t g, int lane, Affine a,
                                                  float v[CPL][8], float& mn, float& mx,
                                                  bool& bad) {
  const int64_t chunks = l.G / 8;
  const int64_t start = g * l.G;
  const int64_t len = imin(l.G, l.D - start);
  const int64_t base = n * l.D + start;
  const T* src = x + base;
  float lo = INFINITY, hi = -INFINITY;
  int nf = 0;
#pragma unroll
  for (int k = 0; k < CPL; ++k) {
    const int64_t c = lane + 32 * k;
    const int64_t e0 = 8 * c;
    const int valid = c < chunks ? static_cast<int>(imax(0, imin(8, len - e0))) : 0;
    if (valid > 0) {
      load8(src + e0, VEC && valid == 8, valid, v[k]);
      if (a.shift != nullptr) {
        const int64_t e = base + e0;
        int64_t q = e / a.inner;
        int64_t r = e - q * a.inner;
        int64_t ch = q % a.period;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (j < valid) {
            const float t = affine_value(v[k][j], a.shift[ch], a.scale[ch]);
            v[k][j] = to_f(from_f<T>(t));
            if (++r == a.inner) {
              r = 0;
              if (++ch == a.period) ch = 0;
            }
          }
        }
      }
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

template <typename T, int CPL, bool VEC>
__global__ void __launch_bounds__(kThreads)
    range_kernel(const T* __restrict__ x, Layout l, Affine a, float2* __restrict__ meta) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t gi = warp; gi < l.groups(); gi += nwarps) {
    const int64_t n = gi / l.Gs, g = gi - n * l.Gs;
    float v[CPL][8];
    float mn, mx;
    bool bad;
    load_group_affine<T, CPL, VEC>(x, l, n, g, lane, a, v, mn, mx, bad);
    if (lane == 0) {
      meta[gi] = bad ? make_float2(NAN, NAN) : make_float2(f_add(mn, 0.0f), f_add(mx, 0.0f));
    }
  }
}

// Sum of squared group ranges per sample, in group order (one thread per sample).
__global__ void sample_rsq_kernel(const float2* __restrict__ meta, Layout l,
                                  float* __restrict__ rsq) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < l.N;
       n += stride) {
    float acc = 0.0f;
    for (int64_t g = 0; g < l.Gs; ++g) {
      const float2 m = meta[n * l.Gs + g];
      const float r = f_sub(m.y, m.x);
      acc = f_add(acc, f_mul(r, r));
    }
    rsq[n] = acc;
  }
}

struct PlanArgs {
  int64_t N;
  int64_t per_sample_bytes_per_bit;  // Gs * G / 8
  int min_bits, max_bits;
  int64_t k;  // items to remove: N * max_bits - total_bits (0 without per-sample bits)
  bool per_sample;
  float* stats;  // nullptr: no statistics
  float stats_factor;
};

__device__ __forceinline__ uint64_t block_sum(uint64_t v, uint64_t* shared) {
  // Warp sums, then the first warp sums the warp totals.
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[wid] = v;
  __syncthreads();
  uint64_t total = 0;
  const int nw = blockDim.x >> 5;
  for (int i = 0; i < nw; ++i) total += shared[i];
  return total;
}

// One block: statistics (sequential, as on the CPU), the k-th smallest item key by bisection
// over the 64-bit key space (keys are unique, so it is the CPU's nth_element result), the
// per-sample bits, then the byte offsets (sequential exclusive scan).
__global__ void __launch_bounds__(kPlanThreads)
    plan_kernel(const float* __restrict__ rsq, PlanArgs p, int32_t* __restrict__ sample_bits,
                int64_t* __restrict__ sample_offsets) {
  __shared__ uint64_t shared[kPlanThreads / 32];
  if (p.stats != nullptr && threadIdx.x == 0) {
    float s = 0.0f;
    for (int64_t n = 0; n < p.N; ++n) s = f_add(s, clean_stat(rsq[n]));
    p.stats[0] = f_add(p.stats[0], f_mul(f_div(s, static_cast<float>(p.N)), p.stats_factor));
  }
  if (!p.per_sample) return;
  const int levels = p.max_bits - p.min_bits;
  float w[8];
  for (int j = 0; j < levels; ++j) w[j] = bit_weight(p.max_bits - j);
  const int64_t items = p.N * levels;
  uint64_t kth = 0;
  if (p.k > 0) {
    uint64_t lo = 0, hi = ~uint64_t{0};
    while (lo < hi) {
      const uint64_t mid = lo + (hi - lo) / 2;
      uint64_t cnt = 0;
      for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
        const int64_t n = i / levels;
        const int j = static_cast<int>(i - n * levels);
        cnt += item_key(clean_sensitivity(rsq[n]), w[j], static_cast<uint64_t>(i)) <= mid;
      }
      const uint64_t total = block_sum(cnt, shared);
      if (total >= static_cast<uint64_t>(p.k))
        hi = mid;
      else
        lo = mid + 1;
      __syncthreads();
    }
    kth = lo;
  }
  for (int64_t n = threadIdx.x; n < p.N; n += blockDim.x) {
    int removed = 0;
    if (p.k > 0) {
      const float c = clean_sensitivity(rsq[n]);
      for (int j = 0; j < levels; ++j)
        removed += item_key(c, w[j], static_cast<uint64_t>(n * levels + j)) <= kth ? 1 : 0;
    }
    sample_bits[n] = p.max_bits - removed;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t acc = 0;
    for (int64_t n = 0; n < p.N; ++n) {
      sample_offsets[n] = acc;
      acc += static_cast<int64_t>(sample_bits[n]) * p.per_sample_bytes_per_bit;
    }
  }
}

// FROM_META: (min, max) come from range_kernel's meta (rewritten to (min, step)).
template <typename T, int CPL, bool VEC, bool FROM_META>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const T* __restrict__ x, Layout l, Affine a, SampleBits sb, bool stochastic,
                    at::PhiloxCudaState rng, uint8_t* __restrict__ payload,
                    float2* __restrict__ meta) {
  const auto seeds = at::cuda::philox::unpack(rng);
  const uint64_t seed = std::get<0>(seeds), offset = std::get<1>(seeds);
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t gi = warp; gi < l.groups(); gi += nwarps) {
    const int64_t n = gi / l.Gs, g = gi - n * l.Gs;
    float v[CPL][8];
    float mn, mx;
    bool bad;
    load_group_affine<T, CPL, VEC>(x, l, n, g, lane, a, v, mn, mx, bad);
    if constexpr (FROM_META) {
      const float2 m = meta[gi];
      mn = m.x;
      mx = m.y;
      bad = m.x != m.x;
    }
    __syncwarp();
    quantize_pack_group<CPL>(v, mn, mx, bad, l, sb, n, g, gi, lane, stochastic, seed, offset,
                             payload, meta);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compress_cuda(
    const at::Tensor& x, int64_t num_samples, int64_t group_size, int64_t bits, int64_t total_bits,
    int64_t min_bits, int64_t max_bits, const std::optional<at::Tensor>& shift,
    const std::optional<at::Tensor>& scale, int64_t affine_inner, int64_t affine_period,
    const std::optional<at::Tensor>& stats, double stats_factor, bool stochastic, int64_t seed,
    int64_t offset, bool use_generator, std::optional<at::Generator> generator) {
  const CompressPlan cp =
      check_compress_args(x, num_samples, group_size, bits, total_bits, min_bits, max_bits, shift,
                          scale, affine_inner, affine_period, stats);
  const Layout& l = cp.l;
  const c10::cuda::CUDAGuard guard(x.device());
  const auto opts = x.options();
  auto payload = at::empty({cp.payload_bytes}, opts.dtype(at::kByte));
  auto meta = at::empty({l.groups() * 2}, opts.dtype(at::kFloat));
  auto sbits = at::empty({cp.per_sample ? l.N : 0}, opts.dtype(at::kInt));
  auto soffs = at::empty({cp.per_sample ? l.N : 0}, opts.dtype(at::kLong));
  if (l.groups() == 0) return {payload, meta, sbits, soffs};
  const at::PhiloxCudaState rng =
      rng_state(x.device(), use_generator && stochastic, seed, offset, generator);
  const Affine a{cp.affine ? shift->const_data_ptr<float>() : nullptr,
                 cp.affine ? scale->const_data_ptr<float>() : nullptr, affine_inner, affine_period};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for(l.groups(), kWarpsPerBlock);
  auto* meta2 = reinterpret_cast<float2*>(meta.data_ptr<float>());
  const bool two_pass = cp.per_sample || cp.stats;
  ACTNN_DISPATCH_FLOAT_CUDA(x.scalar_type(), "actnn_mm.compress", [&] {
    const auto* xp = reinterpret_cast<const scalar_t*>(x.const_data_ptr());
    const bool vec = vector_ok<scalar_t>(xp, l);
    if (two_pass) {
      dispatch_cpl<scalar_t>(l, vec, [&]<int CPL, bool VEC>() {
        range_kernel<scalar_t, CPL, VEC><<<grid, kThreads, 0, stream>>>(xp, l, a, meta2);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      auto rsq = at::empty({l.N}, opts.dtype(at::kFloat));
      sample_rsq_kernel<<<grid_for(l.N, kThreads), kThreads, 0, stream>>>(meta2, l,
                                                                          rsq.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      PlanArgs pa{l.N,
                  l.Gs * (l.G / 8),
                  cp.min_bits,
                  cp.max_bits,
                  cp.per_sample ? l.N * cp.max_bits - cp.total_bits : 0,
                  cp.per_sample,
                  cp.stats ? stats->data_ptr<float>() : nullptr,
                  static_cast<float>(stats_factor)};
      plan_kernel<<<1, kPlanThreads, 0, stream>>>(
          rsq.data_ptr<float>(), pa, cp.per_sample ? sbits.data_ptr<int32_t>() : nullptr,
          cp.per_sample ? soffs.data_ptr<int64_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const SampleBits sb{cp.per_sample ? 0 : cp.bits,
                        cp.per_sample ? sbits.data_ptr<int32_t>() : nullptr,
                        cp.per_sample ? soffs.data_ptr<int64_t>() : nullptr, cp.payload_bytes};
    dispatch_cpl<scalar_t>(l, vec, [&]<int CPL, bool VEC>() {
      if (two_pass) {
        quantize_kernel<scalar_t, CPL, VEC, true><<<grid, kThreads, 0, stream>>>(
            xp, l, a, sb, stochastic, rng, payload.data_ptr<uint8_t>(), meta2);
      } else {
        quantize_kernel<scalar_t, CPL, VEC, false><<<grid, kThreads, 0, stream>>>(
            xp, l, a, sb, stochastic, rng, payload.data_ptr<uint8_t>(), meta2);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {payload, meta, sbits, soffs};
}

// acc[index] += scale * sum(g^2): per-block float64 partial sums added atomically, then one
// thread folds them into acc (two launches, no host sync).
template <typename T>
__global__ void sq_norm_kernel(const T* __restrict__ g, int64_t numel, double* __restrict__ out) {
  __shared__ double shared[kThreads / 32];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    const double v = static_cast<double>(to_f(g[i]));
    acc += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  if (lane == 0) shared[wid] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int i = 0; i < (blockDim.x >> 5); ++i) total += shared[i];
    atomicAdd(out, total);
  }
}

template <>
__global__ void sq_norm_kernel<double>(const double* __restrict__ g, int64_t numel,
                                       double* __restrict__ out) {
  __shared__ double shared[kThreads / 32];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride)
    acc += g[i] * g[i];
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
  if (lane == 0) shared[wid] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int i = 0; i < (blockDim.x >> 5); ++i) total += shared[i];
    atomicAdd(out, total);
  }
}

__global__ void fold_kernel(const double* __restrict__ total, float* __restrict__ acc,
                            double scale) {
  acc[0] = static_cast<float>(static_cast<double>(acc[0]) + total[0] * scale);
}

void accumulate_sq_norm_cuda(const at::Tensor& g, const at::Tensor& acc, int64_t index,
                             double scale) {
  check_accumulate_args(g, acc, index);
  const c10::cuda::CUDAGuard guard(g.device());
  const at::Tensor gd = g.is_non_overlapping_and_dense() ? g : g.contiguous();
  auto total = at::zeros({1}, g.options().dtype(at::kDouble));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t numel = gd.numel();
  if (numel > 0) {
    const int64_t grid = grid_for(numel, 4 * kThreads);
    auto launch = [&](auto tag) {
      using T = decltype(tag);
      sq_norm_kernel<T><<<grid, kThreads, 0, stream>>>(
          reinterpret_cast<const T*>(gd.const_data_ptr()), numel, total.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    switch (gd.scalar_type()) {
      case at::kFloat:
        launch(float{});
        break;
      case at::kHalf:
        launch(__half{});
        break;
      case at::kBFloat16:
        launch(__nv_bfloat16{});
        break;
      default:
        launch(double{});
        break;
    }
  }
  fold_kernel<<<1, 1, 0, stream>>>(total.data_ptr<double>(), acc.data_ptr<float>() + index, scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace actnn

TORCH_LIBRARY_IMPL(actnn_mm, CUDA, m) {
  m.impl("compress", &actnn::compress_cuda);
  m.impl("accumulate_sq_norm", &actnn::accumulate_sq_norm_cuda);
}
