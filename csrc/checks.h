// Argument checks shared by the CPU and CUDA entry points: every message names the argument and
// what was expected, so misuse is reported as a clear error instead of garbage or a crash.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "quant_common.h"

namespace actnn {

constexpr int64_t kMaxGroupSize = 4096;


inline void check_float_input(const at::Tensor& x, const char* op) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "actnn_mm.", op,
              ": x must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK(x.is_contiguous(), "actnn_mm.", op, ": x must be contiguous (the Python wrapper ",
              "permutes channels_last / strided inputs first)");
}

inline Layout make_layout(int64_t numel, int64_t num_samples, int64_t group_size, const char* op) {
  TORCH_CHECK(group_size >= 8 && group_size <= kMaxGroupSize && group_size % 8 == 0, "actnn_mm.",
              op, ": group_size must be a multiple of 8 in [8, ", kMaxGroupSize, "], got ",
              group_size);
  TORCH_CHECK(num_samples >= 0, "actnn_mm.", op, ": num_samples must be >= 0, got ", num_samples);
  Layout l{num_samples, 0, group_size, 0};
  if (num_samples > 0) {
    TORCH_CHECK(numel % num_samples == 0, "actnn_mm.", op, ": numel ", numel,
                " is not divisible by num_samples ", num_samples);
    l.D = numel / num_samples;
  } else {
    TORCH_CHECK(numel == 0, "actnn_mm.", op, ": num_samples is 0 but x has ", numel, " elements");
  }
  l.Gs = (l.D + group_size - 1) / group_size;
  return l;
}

// Per-sample bits (int32 [N], values 1..8) and byte offsets (int64 [N]) travel together.
inline void check_sample_bits(const std::optional<at::Tensor>& sample_bits,
                              const std::optional<at::Tensor>& sample_offsets, int64_t bits,
                              const Layout& l, const at::Device& device, const char* op) {
  TORCH_CHECK(sample_bits.has_value() == sample_offsets.has_value(), "actnn_mm.", op,
              ": sample_bits and sample_offsets must be given together");
  if (!sample_bits.has_value()) {
    TORCH_CHECK(bits >= 1 && bits <= 8, "actnn_mm.", op, ": bits must be in 1..8, got ", bits);
    return;
  }
  const auto& b = *sample_bits;
  const auto& o = *sample_offsets;
  TORCH_CHECK(b.scalar_type() == at::kInt && b.dim() == 1 && b.numel() == l.N && b.is_contiguous(),
              "actnn_mm.", op, ": sample_bits must be a contiguous int32 tensor of shape [", l.N,
              "], got ", b.scalar_type(), " ", b.sizes());
  TORCH_CHECK(o.scalar_type() == at::kLong && o.dim() == 1 && o.numel() == l.N && o.is_contiguous(),
              "actnn_mm.", op, ": sample_offsets must be a contiguous int64 tensor of shape [", l.N,
              "], got ", o.scalar_type(), " ", o.sizes());
  TORCH_CHECK(b.device() == device, "actnn_mm.", op, ": sample_bits is on ", b.device(),
              " but the data is on ", device);
  TORCH_CHECK(o.device() == device, "actnn_mm.", op, ": sample_offsets is on ", o.device(),
              " but the data is on ", device);
}

inline int64_t uniform_payload_bytes(const Layout& l, int64_t bits) {
  return l.N * l.Gs * (l.G / 8) * bits;
}

// Every check of quantize's arguments, shared by the CPU and CUDA kernels; returns the layout.
inline Layout check_quantize_args(const at::Tensor& x, int64_t num_samples, int64_t group_size,
                                  int64_t bits, const std::optional<at::Tensor>& sample_bits,
                                  const std::optional<at::Tensor>& sample_offsets,
                                  int64_t payload_bytes) {
  check_float_input(x, "quantize");
  const Layout l = make_layout(x.numel(), num_samples, group_size, "quantize");
  check_sample_bits(sample_bits, sample_offsets, bits, l, x.device(), "quantize");
  if (!sample_bits.has_value()) {
    TORCH_CHECK(payload_bytes == uniform_payload_bytes(l, bits), "actnn_mm.quantize: ",
                "payload_bytes must be ", uniform_payload_bytes(l, bits), " for ", bits,
                " bits, got ", payload_bytes);
  }
  TORCH_CHECK(payload_bytes >= 0, "actnn_mm.quantize: payload_bytes must be >= 0");
  return l;
}

inline void check_payload(const at::Tensor& payload, const at::Tensor& meta, const Layout& l,
                          const std::optional<at::Tensor>& sample_bits, int64_t bits,
                          const char* op) {
  TORCH_CHECK(payload.scalar_type() == at::kByte && payload.dim() == 1 && payload.is_contiguous(),
              "actnn_mm.", op, ": payload must be a contiguous 1-d uint8 tensor, got ",
              payload.scalar_type(), " ", payload.sizes());
  TORCH_CHECK(meta.scalar_type() == at::kFloat && meta.is_contiguous() &&
                  meta.numel() == l.groups() * 2,
              "actnn_mm.", op, ": meta must be a contiguous float32 tensor with ", l.groups() * 2,
              " elements (min, step per group), got ", meta.scalar_type(), " ", meta.sizes());
  TORCH_CHECK(meta.device() == payload.device(), "actnn_mm.", op, ": meta is on ", meta.device(),
              " but payload is on ", payload.device());
  if (!sample_bits.has_value()) {
    TORCH_CHECK(payload.numel() == uniform_payload_bytes(l, bits), "actnn_mm.", op,
                ": payload has ", payload.numel(), " bytes, expected ",
                uniform_payload_bytes(l, bits), " for ", bits, " bits");
  }
}

inline void check_out_dtype(at::ScalarType t, const char* op) {
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "actnn_mm.", op,
              ": dtype must be float32, float16 or bfloat16, got ", t);
}

inline void check_nbits(int64_t nbits, const char* op) {
  TORCH_CHECK(nbits >= 1 && nbits <= 8, "actnn_mm.", op, ": nbits must be in 1..8, got ", nbits);
}

inline void check_pack_values(const at::Tensor& v, const char* op) {
  const auto t = v.scalar_type();
  TORCH_CHECK(t == at::kBool || t == at::kByte || t == at::kChar || t == at::kShort ||
                  t == at::kInt || t == at::kLong,
              "actnn_mm.", op, ": values must be bool or an integer tensor, got ", t);
  TORCH_CHECK(v.is_contiguous(), "actnn_mm.", op, ": values must be contiguous");
}

// Bytes needed to pack `numel` values of `nbits` bits (8 values per `nbits` bytes).
inline int64_t packed_bytes(int64_t numel, int64_t nbits) { return (numel + 7) / 8 * nbits; }

}  // namespace actnn
