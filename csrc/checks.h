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
    TORCH_CHECK(payload_bytes == uniform_payload_bytes(l, bits),
                "actnn_mm.quantize: ", "payload_bytes must be ", uniform_payload_bytes(l, bits),
                " for ", bits, " bits, got ", payload_bytes);
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
  TORCH_CHECK(
      meta.scalar_type() == at::kFloat && meta.is_contiguous() && meta.numel() == l.groups() * 2,
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

// Every check of bn_backward's arguments, shared by the CPU and CUDA kernels; returns the layout.
inline Layout check_bn_backward_args(const at::Tensor& grad, const at::Tensor& payload,
                                     const at::Tensor& meta, int64_t num_samples,
                                     int64_t numel_per_sample, int64_t group_size, int64_t bits,
                                     const std::optional<at::Tensor>& sample_bits,
                                     const std::optional<at::Tensor>& sample_offsets,
                                     const std::optional<at::Tensor>& scale, int64_t channel_inner,
                                     int64_t channels) {
  const auto t = grad.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
              "actnn_mm.bn_backward: grad must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK(grad.is_contiguous(), "actnn_mm.bn_backward: grad must be contiguous in the saved ",
              "input's memory order (the Python wrapper permutes it first)");
  TORCH_CHECK(numel_per_sample >= 0, "actnn_mm.bn_backward: numel_per_sample must be >= 0");
  TORCH_CHECK(grad.numel() == num_samples * numel_per_sample, "actnn_mm.bn_backward: grad has ",
              grad.numel(), " elements, expected num_samples * numel_per_sample = ",
              num_samples * numel_per_sample);
  TORCH_CHECK(grad.device() == payload.device(), "actnn_mm.bn_backward: grad is on ", grad.device(),
              " but payload is on ", payload.device());
  const Layout l =
      make_layout(num_samples * numel_per_sample, num_samples, group_size, "bn_backward");
  check_sample_bits(sample_bits, sample_offsets, bits, l, payload.device(), "bn_backward");
  check_payload(payload, meta, l, sample_bits, bits, "bn_backward");
  TORCH_CHECK(channels >= 1 && channel_inner >= 1, "actnn_mm.bn_backward: channels and ",
              "channel_inner must be >= 1, got ", channels, " and ", channel_inner);
  TORCH_CHECK(l.D % (channels * channel_inner) == 0, "actnn_mm.bn_backward: numel_per_sample ", l.D,
              " is not a multiple of channels * channel_inner = ", channels * channel_inner);
  if (scale.has_value()) {
    const auto& w = *scale;
    TORCH_CHECK(
        w.scalar_type() == at::kFloat && w.dim() == 1 && w.numel() == channels && w.is_contiguous(),
        "actnn_mm.bn_backward: scale must be a contiguous float32 tensor of shape [", channels,
        "], got ", w.scalar_type(), " ", w.sizes());
    TORCH_CHECK(w.device() == payload.device(), "actnn_mm.bn_backward: scale is on ", w.device(),
                " but payload is on ", payload.device());
  }
  return l;
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

// ---- actnn_mm::compress (fused) ---------------------------------------------------------------

// What the fused op was asked to do, validated; shared by the CPU and CUDA entry points.
struct CompressPlan {
  Layout l;
  bool per_sample;     // bits chosen per sample (bits == 0) from total_bits
  int bits;            // uniform bits (per_sample false)
  int64_t total_bits;  // sum of per-sample bits (per_sample true)
  int min_bits, max_bits;
  int64_t payload_bytes;
  bool affine;
  bool stats;
};

inline CompressPlan check_compress_args(const at::Tensor& x, int64_t num_samples,
                                        int64_t group_size, int64_t bits, int64_t total_bits,
                                        int64_t min_bits, int64_t max_bits,
                                        const std::optional<at::Tensor>& shift,
                                        const std::optional<at::Tensor>& scale,
                                        int64_t affine_inner, int64_t affine_period,
                                        const std::optional<at::Tensor>& stats) {
  check_float_input(x, "compress");
  CompressPlan p{};
  p.l = make_layout(x.numel(), num_samples, group_size, "compress");
  const Layout& l = p.l;
  const int64_t per_bit = l.Gs * (l.G / 8);  // bytes per sample per bit
  p.per_sample = bits == 0;
  if (p.per_sample) {
    TORCH_CHECK(min_bits >= 1 && min_bits <= max_bits && max_bits <= 8, "actnn_mm.compress: ",
                "min_bits/max_bits must satisfy 1 <= min_bits <= max_bits <= 8, got ", min_bits,
                "/", max_bits);
    TORCH_CHECK(total_bits >= l.N * min_bits && total_bits <= l.N * max_bits,
                "actnn_mm.compress: total_bits must be in [", l.N * min_bits, ", ", l.N * max_bits,
                "] for ", l.N, " samples, got ", total_bits);
    TORCH_CHECK(l.N * (max_bits - min_bits) < (int64_t{1} << 32), "actnn_mm.compress: ", l.N,
                " samples x ", max_bits - min_bits, " levels exceed 2^32 allocation items");
    p.total_bits = total_bits;
    p.min_bits = static_cast<int>(min_bits);
    p.max_bits = static_cast<int>(max_bits);
    p.payload_bytes = per_bit * total_bits;
  } else {
    TORCH_CHECK(bits >= 1 && bits <= 8, "actnn_mm.compress: bits must be in 1..8 (or 0 for ",
                "per-sample bits from total_bits), got ", bits);
    p.bits = static_cast<int>(bits);
    p.payload_bytes = per_bit * l.N * bits;
  }
  TORCH_CHECK(shift.has_value() == scale.has_value(), "actnn_mm.compress: shift and scale must ",
              "be given together");
  p.affine = shift.has_value();
  if (p.affine) {
    TORCH_CHECK(affine_inner >= 1 && affine_period >= 1, "actnn_mm.compress: affine_inner and ",
                "affine_period must be >= 1, got ", affine_inner, " and ", affine_period);
    for (const auto* t : {&*shift, &*scale}) {
      const char* name = t == &*shift ? "shift" : "scale";
      TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 1 && t->is_contiguous() &&
                      t->numel() == affine_period,
                  "actnn_mm.compress: ", name, " must be a contiguous float32 tensor of shape [",
                  affine_period, "] (affine_period), got ", t->scalar_type(), " ", t->sizes());
      TORCH_CHECK(t->device() == x.device(), "actnn_mm.compress: ", name, " is on ", t->device(),
                  " but x is on ", x.device());
    }
  }
  p.stats = stats.has_value();
  if (p.stats) {
    TORCH_CHECK(stats->scalar_type() == at::kFloat && stats->is_contiguous() && stats->numel() >= 1,
                "actnn_mm.compress: stats must be a contiguous float32 tensor with at least one ",
                "element, got ", stats->scalar_type(), " ", stats->sizes());
    TORCH_CHECK(stats->device() == x.device(), "actnn_mm.compress: stats is on ", stats->device(),
                " but x is on ", x.device());
  }
  return p;
}

inline void check_accumulate_args(const at::Tensor& g, const at::Tensor& acc, int64_t index) {
  const auto t = g.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble,
              "actnn_mm.accumulate_sq_norm: g must be a floating tensor, got ", t);
  TORCH_CHECK(acc.scalar_type() == at::kFloat && acc.is_contiguous(), "actnn_mm.",
              "accumulate_sq_norm: acc must be a contiguous float32 tensor, got ",
              acc.scalar_type(), " ", acc.sizes());
  TORCH_CHECK(index >= 0 && index < acc.numel(), "actnn_mm.accumulate_sq_norm: index ", index,
              " out of range for acc with ", acc.numel(), " elements");
  TORCH_CHECK(acc.device() == g.device(), "actnn_mm.accumulate_sq_norm: acc is on ", acc.device(),
              " but g is on ", g.device());
}

}  // namespace actnn
