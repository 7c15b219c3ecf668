// CPU kernels of the fused mask ops: pack a float tensor's (x != 0) / (x > 0) bits directly,
// unpack them as 0/1 of a float dtype, and apply them to a gradient (ReLU backward), each one
// pass without bool or index temporaries.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>

#include "checks.h"
#include "cpu/cpu_common.h"

namespace actnn {
namespace {

constexpr int64_t kChunkGrain = 4096;  // 8-element chunks per task

#ifdef ACTNN_X86_AVX512
// fp32 chunks [begin, end) of 8 elements, 16 elements (2 mask bytes) per vector; returns the
// first chunk not done (the caller finishes the odd chunk and the tail). x > 0 is false for NaN
// (ordered compare), x != 0 true (unordered), as in the reference.
__attribute__((target("avx512f"))) int64_t pack_nonzero_avx512(const float* x, int64_t begin,
                                                               int64_t end, bool positive,
                                                               uint8_t* out) {
  const __m512 zero = _mm512_setzero_ps();
  int64_t c = begin;
  for (; c + 2 <= end; c += 2) {
    const __m512 v = _mm512_loadu_ps(x + 8 * c);
    const uint16_t m = positive ? _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ)
                                : _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ);
    memcpy(out + c, &m, 2);
  }
  return c;
}

// grad where the mask bit is set, +0 elsewhere: one masked load per 16 elements.
__attribute__((target("avx512f"))) int64_t mask_grad_avx512(const float* g, const uint8_t* src,
                                                            int64_t begin, int64_t end,
                                                            float* dst) {
  int64_t c = begin;
  for (; c + 2 <= end; c += 2) {
    uint16_t m;
    memcpy(&m, src + c, 2);
    _mm512_storeu_ps(dst + 8 * c, _mm512_maskz_loadu_ps(m, g + 8 * c));
  }
  return c;
}

// The AVX2 twins: 8 elements (1 mask byte) per vector.
__attribute__((target("avx2"))) int64_t pack_nonzero_avx2(const float* x, int64_t begin,
                                                          int64_t end, bool positive,
                                                          uint8_t* out) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t c = begin;
  for (; c < end; ++c) {
    const __m256 v = _mm256_loadu_ps(x + 8 * c);
    const __m256 m =
        positive ? _mm256_cmp_ps(v, zero, _CMP_GT_OQ) : _mm256_cmp_ps(v, zero, _CMP_NEQ_UQ);
    out[c] = static_cast<uint8_t>(_mm256_movemask_ps(m));
  }
  return c;
}

__attribute__((target("avx2"))) int64_t mask_grad_avx2(const float* g, const uint8_t* src,
                                                       int64_t begin, int64_t end, float* dst) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  int64_t c = begin;
  for (; c < end; ++c) {
    const __m256i m = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(src[c]), bit), bit);
    _mm256_storeu_ps(dst + 8 * c,
                     _mm256_and_ps(_mm256_castsi256_ps(m), _mm256_loadu_ps(g + 8 * c)));
  }
  return c;
}
#endif

// Chunks (8 elements, 1 mask byte) that hold no tail element: the loops below need no bound
// check there.
inline int64_t full_chunks(int64_t numel) { return numel / 8; }

template <typename T>
void pack_nonzero_kernel(const T* x, int64_t numel, bool positive, uint8_t* out) {
  const int64_t full = full_chunks(numel);
  at::parallel_for(0, (numel + 7) / 8, kChunkGrain, [&](int64_t begin, int64_t end) {
    int64_t c = begin;
#ifdef ACTNN_X86_AVX512
    if constexpr (std::is_same_v<T, float>) {
      if (cpu::cpu_has_avx512f())
        c = pack_nonzero_avx512(x, c, std::min(end, full), positive, out);
      else if (cpu::cpu_has_avx2())
        c = pack_nonzero_avx2(x, c, std::min(end, full), positive, out);
    }
#endif
    for (; c < std::min(end, full); ++c) {
      uint32_t byte = 0;
      for (int j = 0; j < 8; ++j) {
        const float v = static_cast<float>(x[8 * c + j]);
        byte |= static_cast<uint32_t>(positive ? v > 0.0f : v != 0.0f) << j;
      }
      out[c] = static_cast<uint8_t>(byte);
    }
    for (; c < end; ++c) {  // the tail chunk
      uint32_t byte = 0;
      for (int64_t i = 8 * c; i < numel; ++i) {
        const float v = static_cast<float>(x[i]);
        byte |= static_cast<uint32_t>(positive ? v > 0.0f : v != 0.0f) << (i - 8 * c);
      }
      out[c] = static_cast<uint8_t>(byte);
    }
  });
}

template <typename T>
void mask_grad_kernel(const T* g, const uint8_t* src, int64_t numel, T* dst) {
  const int64_t full = full_chunks(numel);
  at::parallel_for(0, (numel + 7) / 8, kChunkGrain, [&](int64_t begin, int64_t end) {
    int64_t c = begin;
#ifdef ACTNN_X86_AVX512
    if constexpr (std::is_same_v<T, float>) {
      if (cpu::cpu_has_avx512f())
        c = mask_grad_avx512(g, src, c, std::min(end, full), dst);
      else if (cpu::cpu_has_avx2())
        c = mask_grad_avx2(g, src, c, std::min(end, full), dst);
    }
#endif
    for (; c < std::min(end, full); ++c) {
      const uint32_t byte = src[c];
      for (int j = 0; j < 8; ++j)
        dst[8 * c + j] = ((byte >> j) & 1u) ? g[8 * c + j] : static_cast<T>(0.0f);
    }
    for (; c < end; ++c) {  // the tail chunk
      const uint32_t byte = src[c];
      for (int64_t i = 8 * c; i < numel; ++i)
        dst[i] = ((byte >> (i - 8 * c)) & 1u) ? g[i] : static_cast<T>(0.0f);
    }
  });
}

at::Tensor pack_nonzero_cpu(const at::Tensor& x, bool positive) {
  check_float_input(x, "pack_nonzero");
  const int64_t numel = x.numel();
  auto out = at::empty({packed_bytes(numel, 1)}, x.options().dtype(at::kByte));
  if (numel == 0) return out;
  ACTNN_DISPATCH_FLOAT(x.scalar_type(), "actnn_mm.pack_nonzero", [&] {
    pack_nonzero_kernel(x.const_data_ptr<scalar_t>(), numel, positive, out.data_ptr<uint8_t>());
  });
  return out;
}

inline void check_mask(const at::Tensor& packed, int64_t numel, const char* op) {
  TORCH_CHECK(numel >= 0, "actnn_mm.", op, ": numel must be >= 0, got ", numel);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.numel() == packed_bytes(numel, 1),
              "actnn_mm.", op, ": packed must be a contiguous uint8 tensor of ",
              packed_bytes(numel, 1), " bytes (1 bit per element), got ", packed.scalar_type(), " ",
              packed.sizes());
}

at::Tensor unpack_mask_cpu(const at::Tensor& packed, int64_t numel, at::ScalarType dtype) {
  check_mask(packed, numel, "unpack_mask");
  check_out_dtype(dtype, "unpack_mask");
  auto out = at::empty({numel}, packed.options().dtype(dtype));
  if (numel == 0) return out;
  const uint8_t* src = packed.const_data_ptr<uint8_t>();
  ACTNN_DISPATCH_FLOAT(dtype, "actnn_mm.unpack_mask", [&] {
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, (numel + 7) / 8, kChunkGrain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const uint32_t byte = src[c];
        for (int j = 0; j < 8 && 8 * c + j < numel; ++j)
          dst[8 * c + j] = static_cast<scalar_t>(static_cast<float>((byte >> j) & 1u));
      }
    });
  });
  return out;
}

at::Tensor mask_grad_cpu(const at::Tensor& grad, const at::Tensor& packed) {
  check_float_input(grad, "mask_grad");
  const int64_t numel = grad.numel();
  check_mask(packed, numel, "mask_grad");
  TORCH_CHECK(packed.device() == grad.device(), "actnn_mm.mask_grad: packed is on ",
              packed.device(), " but grad is on ", grad.device());
  auto out = at::empty_like(grad);
  if (numel == 0) return out;
  const uint8_t* src = packed.const_data_ptr<uint8_t>();
  ACTNN_DISPATCH_FLOAT(grad.scalar_type(), "actnn_mm.mask_grad", [&] {
    mask_grad_kernel(grad.const_data_ptr<scalar_t>(), src, numel, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace
}  // namespace actnn

TORCH_LIBRARY_IMPL(actnn_mm, CPU, m) {
  m.impl("pack_nonzero", &actnn::pack_nonzero_cpu);
  m.impl("unpack_mask", &actnn::unpack_mask_cpu);
  m.impl("mask_grad", &actnn::mask_grad_cpu);
}
