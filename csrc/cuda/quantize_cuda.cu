// CUDA kernels: one fused pass per direction.
//   quantize:   load group (16-byte vector loads) -> warp min/max -> Philox -> quantize -> pack
//   dequantize: load packed bytes -> unpack -> dequantize -> 16-byte vector stores
// One warp owns one group (256 elements = 8 per lane at the default group size); a grid-stride
// loop with int64 indices covers any number of groups, so tensors over 2^31 elements and over
// 65,535 samples need nothing special. Kernels run on the current stream and never synchronise
// with the host. The random stream: an explicit (seed, offset); else, with torch's default
// generators, the CPU kernel's host draw from the default CPU generator (same torch seed, same
// bytes on both devices); under CUDA graph capture or with an explicit CUDA generator, that
// generator's graph-safe Philox state.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <mutex>
#include <optional>

#include "checks.h"
#include "cuda/cuda_common.cuh"
#include "host_rng.h"
#include "quant_common.h"

namespace actnn {
namespace {

using namespace cuda_common;

template <typename T, int CPL, bool VEC>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const T* __restrict__ x, Layout l, SampleBits sb, bool stochastic,
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
    load_group<T, CPL, VEC>(x, l, n, g, lane, v, mn, mx, bad);
    quantize_pack_group<CPL>(v, mn, mx, bad, l, sb, n, g, gi, lane, stochastic, seed, offset,
                             payload, meta);
  }
}

template <typename T, int CPL, bool VEC>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(const uint8_t* __restrict__ payload, const float2* __restrict__ meta,
                      Layout l, SampleBits sb, T* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int64_t chunks = l.G / 8;
  for (int64_t gi = warp; gi < l.groups(); gi += nwarps) {
    const PackedGroup pg(l, sb, meta, gi);
    T* dst = out + pg.n * l.D + pg.start;
#pragma unroll
    for (int k = 0; k < CPL; ++k) {
      const int64_t c = lane + 32 * k;
      if (c >= chunks) break;
      const int64_t e0 = 8 * c;
      if (e0 >= pg.len) break;
      const int valid = static_cast<int>(imin(8, pg.len - e0));
      float r[8];
      pg.values8(payload, c, r);
      store8(dst + e0, VEC && valid == 8, valid, r);
    }
  }
}

template <typename T, int CPL, bool VEC>
__global__ void __launch_bounds__(kThreads)
    minmax_kernel(const T* __restrict__ x, Layout l, float2* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t gi = warp; gi < l.groups(); gi += nwarps) {
    const int64_t n = gi / l.Gs, g = gi - n * l.Gs;
    float v[CPL][8];
    float mn, mx;
    bool bad;
    load_group<T, CPL, VEC>(x, l, n, g, lane, v, mn, mx, bad);
    if (lane == 0) {
      out[gi] = bad ? make_float2(NAN, NAN) : make_float2(f_add(mn, 0.0f), f_add(mx, 0.0f));
    }
  }
}

template <typename T>
__global__ void pack_kernel(const T* __restrict__ v, int64_t numel, int nbits,
                            uint8_t* __restrict__ out) {
  const uint32_t mask = (1u << nbits) - 1u;
  const int64_t nchunks = (numel + 7) / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < nchunks;
       c += stride) {
    uint32_t q[8];
    const int64_t i0 = 8 * c;
    if constexpr (sizeof(T) == 1) {
      if (i0 + 8 <= numel && reinterpret_cast<uintptr_t>(v + i0) % 8 == 0) {
        const uint64_t raw = *reinterpret_cast<const uint64_t*>(v + i0);
#pragma unroll
        for (int j = 0; j < 8; ++j) q[j] = static_cast<uint32_t>((raw >> (8 * j)) & 0xFF) & mask;
        store_packed(out + c * nbits, pack8(q, nbits), nbits);
        continue;
      }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j)
      q[j] = i0 + j < numel ? (static_cast<uint32_t>(v[i0 + j]) & mask) : 0u;
    store_packed(out + c * nbits, pack8(q, nbits), nbits);
  }
}

__global__ void unpack_kernel(const uint8_t* __restrict__ packed, int64_t numel, int nbits,
                              uint8_t* __restrict__ out) {
  const int64_t nchunks = (numel + 7) / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < nchunks;
       c += stride) {
    uint32_t q[8];
    unpack8(load_packed(packed + c * nbits, nbits), nbits, q);
    const int64_t i0 = 8 * c;
    if (i0 + 8 <= numel && reinterpret_cast<uintptr_t>(out + i0) % 8 == 0) {
      uint64_t raw = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) raw |= static_cast<uint64_t>(q[j]) << (8 * j);
      *reinterpret_cast<uint64_t*>(out + i0) = raw;
    } else {
      for (int j = 0; j < 8 && i0 + j < numel; ++j) out[i0 + j] = static_cast<uint8_t>(q[j]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, int64_t num_samples,
                                                 int64_t group_size, int64_t bits,
                                                 const std::optional<at::Tensor>& sample_bits,
                                                 const std::optional<at::Tensor>& sample_offsets,
                                                 int64_t payload_bytes, bool stochastic,
                                                 int64_t seed, int64_t offset, bool use_generator,
                                                 std::optional<at::Generator> generator) {
  const Layout l = check_quantize_args(x, num_samples, group_size, bits, sample_bits,
                                       sample_offsets, payload_bytes);
  const c10::cuda::CUDAGuard guard(x.device());
  auto payload = at::empty({payload_bytes}, x.options().dtype(at::kByte));
  auto meta = at::empty({l.groups() * 2}, x.options().dtype(at::kFloat));
  if (l.groups() == 0) return {payload, meta};
  const at::PhiloxCudaState rng =
      rng_state(x.device(), use_generator && stochastic, seed, offset, generator);
  const SampleBits sb{
      static_cast<int>(bits), sample_bits ? sample_bits->data_ptr<int32_t>() : nullptr,
      sample_offsets ? sample_offsets->data_ptr<int64_t>() : nullptr, payload_bytes};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for(l.groups(), kWarpsPerBlock);
  ACTNN_DISPATCH_FLOAT_CUDA(x.scalar_type(), "actnn_mm.quantize", [&] {
    const auto* xp = reinterpret_cast<const scalar_t*>(x.const_data_ptr());
    dispatch_cpl<scalar_t>(l, vector_ok<scalar_t>(xp, l), [&]<int CPL, bool VEC>() {
      quantize_kernel<scalar_t, CPL, VEC>
          <<<grid, kThreads, 0, stream>>>(xp, l, sb, stochastic, rng, payload.data_ptr<uint8_t>(),
                                          reinterpret_cast<float2*>(meta.data_ptr<float>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {payload, meta};
}

at::Tensor dequantize_cuda(const at::Tensor& payload, const at::Tensor& meta, int64_t num_samples,
                           int64_t numel_per_sample, int64_t group_size, int64_t bits,
                           const std::optional<at::Tensor>& sample_bits,
                           const std::optional<at::Tensor>& sample_offsets, at::ScalarType dtype) {
  check_out_dtype(dtype, "dequantize");
  TORCH_CHECK(numel_per_sample >= 0, "actnn_mm.dequantize: numel_per_sample must be >= 0");
  const Layout l =
      make_layout(num_samples * numel_per_sample, num_samples, group_size, "dequantize");
  check_sample_bits(sample_bits, sample_offsets, bits, l, payload.device(), "dequantize");
  check_payload(payload, meta, l, sample_bits, bits, "dequantize");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(meta.const_data_ptr()) % 8 == 0,
              "actnn_mm.dequantize: meta must be 8-byte aligned (read as (min, step) pairs)");
  const c10::cuda::CUDAGuard guard(payload.device());
  auto out = at::empty({num_samples * numel_per_sample}, payload.options().dtype(dtype));
  if (l.groups() == 0) return out;
  const SampleBits sb{
      static_cast<int>(bits), sample_bits ? sample_bits->data_ptr<int32_t>() : nullptr,
      sample_offsets ? sample_offsets->data_ptr<int64_t>() : nullptr, payload.numel()};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for(l.groups(), kWarpsPerBlock);
  ACTNN_DISPATCH_FLOAT_CUDA(dtype, "actnn_mm.dequantize", [&] {
    auto* op = reinterpret_cast<scalar_t*>(out.data_ptr());
    dispatch_cpl<scalar_t>(l, vector_ok<scalar_t>(op, l), [&]<int CPL, bool VEC>() {
      dequantize_kernel<scalar_t, CPL, VEC><<<grid, kThreads, 0, stream>>>(
          payload.const_data_ptr<uint8_t>(),
          reinterpret_cast<const float2*>(meta.const_data_ptr<float>()), l, sb, op);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor group_minmax_cuda(const at::Tensor& x, int64_t num_samples, int64_t group_size) {
  check_float_input(x, "group_minmax");
  const Layout l = make_layout(x.numel(), num_samples, group_size, "group_minmax");
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty({l.groups() * 2}, x.options().dtype(at::kFloat));
  if (l.groups() == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for(l.groups(), kWarpsPerBlock);
  ACTNN_DISPATCH_FLOAT_CUDA(x.scalar_type(), "actnn_mm.group_minmax", [&] {
    const auto* xp = reinterpret_cast<const scalar_t*>(x.const_data_ptr());
    dispatch_cpl<scalar_t>(l, vector_ok<scalar_t>(xp, l), [&]<int CPL, bool VEC>() {
      minmax_kernel<scalar_t, CPL, VEC>
          <<<grid, kThreads, 0, stream>>>(xp, l, reinterpret_cast<float2*>(out.data_ptr<float>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor pack_bits_cuda(const at::Tensor& values, int64_t nbits) {
  check_pack_values(values, "pack_bits");
  check_nbits(nbits, "pack_bits");
  const c10::cuda::CUDAGuard guard(values.device());
  const int64_t numel = values.numel();
  auto out = at::empty({packed_bytes(numel, nbits)}, values.options().dtype(at::kByte));
  if (numel == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for((numel + 7) / 8, kThreads);
  const int nb = static_cast<int>(nbits);
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    pack_kernel<T><<<grid, kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(values.const_data_ptr()), numel, nb, out.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (values.scalar_type()) {
    case at::kBool:
    case at::kByte:
      launch(uint8_t{});
      break;
    case at::kChar:
      launch(int8_t{});
      break;
    case at::kShort:
      launch(int16_t{});
      break;
    case at::kInt:
      launch(int32_t{});
      break;
    default:
      launch(int64_t{});
      break;
  }
  return out;
}

at::Tensor unpack_bits_cuda(const at::Tensor& packed, int64_t numel, int64_t nbits) {
  check_nbits(nbits, "unpack_bits");
  TORCH_CHECK(numel >= 0, "actnn_mm.unpack_bits: numel must be >= 0, got ", numel);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.numel() == packed_bytes(numel, nbits),
              "actnn_mm.unpack_bits: packed must be a contiguous uint8 tensor of ",
              packed_bytes(numel, nbits), " bytes, got ", packed.scalar_type(), " ",
              packed.sizes());
  const c10::cuda::CUDAGuard guard(packed.device());
  auto out = at::empty({numel}, packed.options());
  if (numel == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for((numel + 7) / 8, kThreads);
  unpack_kernel<<<grid, kThreads, 0, stream>>>(packed.const_data_ptr<uint8_t>(), numel,
                                               static_cast<int>(nbits), out.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace actnn

TORCH_LIBRARY_IMPL(actnn_mm, CUDA, m) {
  m.impl("quantize", &actnn::quantize_cuda);
  m.impl("dequantize", &actnn::dequantize_cuda);
  m.impl("group_minmax", &actnn::group_minmax_cuda);
  m.impl("pack_bits", &actnn::pack_bits_cuda);
  m.impl("unpack_bits", &actnn::unpack_bits_cuda);
}
