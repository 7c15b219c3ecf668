// CUDA kernels of the fused mask ops (pack_nonzero, unpack_mask, mask_grad): one thread per
// 8-element chunk (one mask byte), grid-stride with int64 indices, current stream, no sync.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/cuda_common.cuh"

namespace actnn {
namespace {

using namespace cuda_common;

template <typename T>
__global__ void pack_nonzero_kernel(const T* __restrict__ x, int64_t numel, bool positive,
                                    uint8_t* __restrict__ out) {
  const int64_t chunks = (numel + 7) / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
       c += stride) {
    uint32_t byte = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t i = 8 * c + j;
      if (i < numel) {
        const float v = to_f(x[i]);
        byte |= static_cast<uint32_t>(positive ? v > 0.0f : v != 0.0f) << j;
      }
    }
    out[c] = static_cast<uint8_t>(byte);
  }
}

template <typename T>
__global__ void unpack_mask_kernel(const uint8_t* __restrict__ packed, int64_t numel,
                                   T* __restrict__ out) {
  const int64_t chunks = (numel + 7) / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
       c += stride) {
    const uint32_t byte = packed[c];
    for (int j = 0; j < 8 && 8 * c + j < numel; ++j)
      out[8 * c + j] = from_f<T>(static_cast<float>((byte >> j) & 1u));
  }
}

template <typename T>
__global__ void mask_grad_kernel(const T* __restrict__ grad, const uint8_t* __restrict__ packed,
                                 int64_t numel, T* __restrict__ out) {
  const int64_t chunks = (numel + 7) / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < chunks;
       c += stride) {
    const uint32_t byte = packed[c];
    for (int j = 0; j < 8 && 8 * c + j < numel; ++j) {
      const int64_t i = 8 * c + j;
      out[i] = ((byte >> j) & 1u) ? grad[i] : from_f<T>(0.0f);
    }
  }
}

inline void check_mask(const at::Tensor& packed, int64_t numel, const char* op) {
  TORCH_CHECK(numel >= 0, "actnn_mm.", op, ": numel must be >= 0, got ", numel);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.numel() == packed_bytes(numel, 1),
              "actnn_mm.", op, ": packed must be a contiguous uint8 tensor of ",
              packed_bytes(numel, 1), " bytes (1 bit per element), got ", packed.scalar_type(), " ",
              packed.sizes());
}

at::Tensor pack_nonzero_cuda(const at::Tensor& x, bool positive) {
  check_float_input(x, "pack_nonzero");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t numel = x.numel();
  auto out = at::empty({packed_bytes(numel, 1)}, x.options().dtype(at::kByte));
  if (numel == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for((numel + 7) / 8, kThreads);
  ACTNN_DISPATCH_FLOAT_CUDA(x.scalar_type(), "actnn_mm.pack_nonzero", [&] {
    pack_nonzero_kernel<scalar_t>
        <<<grid, kThreads, 0, stream>>>(reinterpret_cast<const scalar_t*>(x.const_data_ptr()),
                                        numel, positive, out.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor unpack_mask_cuda(const at::Tensor& packed, int64_t numel, at::ScalarType dtype) {
  check_mask(packed, numel, "unpack_mask");
  check_out_dtype(dtype, "unpack_mask");
  const c10::cuda::CUDAGuard guard(packed.device());
  auto out = at::empty({numel}, packed.options().dtype(dtype));
  if (numel == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for((numel + 7) / 8, kThreads);
  ACTNN_DISPATCH_FLOAT_CUDA(dtype, "actnn_mm.unpack_mask", [&] {
    unpack_mask_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        packed.const_data_ptr<uint8_t>(), numel, reinterpret_cast<scalar_t*>(out.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor mask_grad_cuda(const at::Tensor& grad, const at::Tensor& packed) {
  check_float_input(grad, "mask_grad");
  const int64_t numel = grad.numel();
  check_mask(packed, numel, "mask_grad");
  TORCH_CHECK(packed.device() == grad.device(), "actnn_mm.mask_grad: packed is on ",
              packed.device(), " but grad is on ", grad.device());
  const c10::cuda::CUDAGuard guard(grad.device());
  auto out = at::empty_like(grad);
  if (numel == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = grid_for((numel + 7) / 8, kThreads);
  ACTNN_DISPATCH_FLOAT_CUDA(grad.scalar_type(), "actnn_mm.mask_grad", [&] {
    mask_grad_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        reinterpret_cast<const scalar_t*>(grad.const_data_ptr()), packed.const_data_ptr<uint8_t>(),
        numel, reinterpret_cast<scalar_t*>(out.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace actnn

TORCH_LIBRARY_IMPL(actnn_mm, CUDA, m) {
  m.impl("pack_nonzero", &actnn::pack_nonzero_cuda);
  m.impl("unpack_mask", &actnn::unpack_mask_cuda);
  m.impl("mask_grad", &actnn::mask_grad_cuda);
}
