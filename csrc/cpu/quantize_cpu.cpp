// CPU kernels: one at::parallel_for over groups; the per-group inner loops (convert, min/max,
// quantize, dequantize) are plain loops over contiguous arrays that the compiler vectorises.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>
#include <type_traits>
#include <optional>

#include "checks.h"
#include "cpu/cpu_common.h"
#include "host_rng.h"
#include "quant_common.h"

namespace actnn {

std::pair<uint64_t, uint64_t> draw_cpu_seed_offset(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  // torch.randint(0, 2**63 - 1, (2,)) on the same generator draws the same two numbers: the
  // pure-PyTorch reference's draw (actnn_mm/engine/reference.py: draw_seed_offset).
  constexpr uint64_t kRange = (uint64_t{1} << 63) - 1;
  const uint64_t seed = gen->random64() % kRange;
  const uint64_t offset = gen->random64() % kRange;
  return {seed, offset};
}

namespace {

using namespace cpu;

template <typename T>
void quantize_kernel(const T* x, const Layout& l, int64_t bits, const int32_t* sample_bits,
                     const int64_t* sample_offsets, int64_t payload_bytes, bool stochastic,
                     uint64_t seed, uint64_t offset, uint8_t* payload, float* meta) {
  const int64_t G = l.G;
  at::parallel_for(0, l.groups(), kGrain, [&](int64_t begin, int64_t end) {
    float buf[kMaxGroupSize];
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t n = gi / l.Gs, g = gi % l.Gs;
      const int b = sample_bits ? static_cast<int>(sample_bits[n]) : static_cast<int>(bits);
      const int64_t chunk_bytes = b;  // 8 elements -> b bytes
      const int64_t group_bytes = (G / 8) * chunk_bytes;
      const int64_t base =
          (sample_offsets ? sample_offsets[n] : n * l.Gs * group_bytes) + g * group_bytes;
      const int64_t start = g * G;
      const int64_t len = std::min<int64_t>(G, l.D - start);
      float mn, mx;
      bool bad;
      const float* v = load_group(x + n * l.D + start, len, buf, mn, mx, bad);
      const GroupParams p = group_params(mn, mx, bad, b < 1 || b > 8 ? 1 : b);
      const bool valid_bits = b >= 1 && b <= 8 && base >= 0 && base + group_bytes <= payload_bytes;
      meta[2 * gi] = valid_bits ? p.mn : NAN;
      meta[2 * gi + 1] = valid_bits ? p.step : NAN;
      if (!valid_bits) continue;  // inconsistent sample_bits/offsets: never write out of bounds
      quantize_pack_group(v, len, G, p.mn, p.scale, p.bad, b, stochastic, seed, offset, gi,
                          payload + base);
    }
  });
}

template <typename T>
void dequantize_kernel(const uint8_t* payload, const float* meta, const Layout& l, int64_t bits,
                       const int32_t* sample_bits, const int64_t* sample_offsets,
                       int64_t payload_bytes, T* out) {
  const int64_t G = l.G;
  at::parallel_for(0, l.groups(), kGrain, [&](int64_t begin, int64_t end) {
    float fbuf[kMaxGroupSize];
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t n = gi / l.Gs, g = gi % l.Gs;
      const int64_t start = g * G;
      const int64_t len = std::min<int64_t>(G, l.D - start);
      T* dst = out + n * l.D + start;
      if constexpr (std::is_same_v<T, float>) {
        dequantize_group(payload, meta, l, bits, sample_bits, sample_offsets, payload_bytes, n, g,
                         len, dst);
      } else {
        dequantize_group(payload, meta, l, bits, sample_bits, sample_offsets, payload_bytes, n, g,
                         len, fbuf);
        for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<T>(fbuf[j]);
      }
    }
  });
}

template <typename T>
void minmax_kernel(const T* x, const Layout& l, float* out) {
  at::parallel_for(0, l.groups(), kGrain, [&](int64_t begin, int64_t end) {
    float buf[kMaxGroupSize];
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t n = gi / l.Gs, g = gi % l.Gs;
      const int64_t start = g * l.G;
      const int64_t len = std::min<int64_t>(l.G, l.D - start);
      float mn, mx;
      bool bad;
      load_group(x + n * l.D + start, len, buf, mn, mx, bad);
      out[2 * gi] = bad ? NAN : f_add(mn, 0.0f);
      out[2 * gi + 1] = bad ? NAN : f_add(mx, 0.0f);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, int64_t num_samples,
                                                int64_t group_size, int64_t bits,
                                                const std::optional<at::Tensor>& sample_bits,
                                                const std::optional<at::Tensor>& sample_offsets,
                                                int64_t payload_bytes, bool stochastic,
                                                int64_t seed, int64_t offset, bool use_generator,
                                                std::optional<at::Generator> generator) {
  const Layout l = check_quantize_args(x, num_samples, group_size, bits, sample_bits,
                                       sample_offsets, payload_bytes);
  uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  if (use_generator && stochastic) std::tie(s, o) = draw_cpu_seed_offset(generator);
  auto payload = at::empty({payload_bytes}, x.options().dtype(at::kByte));
  auto meta = at::empty({l.groups() * 2}, x.options().dtype(at::kFloat));
  if (l.groups() == 0) return {payload, meta};
  const int32_t* sb = sample_bits ? sample_bits->data_ptr<int32_t>() : nullptr;
  const int64_t* so = sample_offsets ? sample_offsets->data_ptr<int64_t>() : nullptr;
  ACTNN_DISPATCH_FLOAT(x.scalar_type(), "actnn_mm.quantize", [&] {
    quantize_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), l, bits, sb, so, payload_bytes,
                              stochastic, s, o, payload.data_ptr<uint8_t>(),
                              meta.data_ptr<float>());
  });
  return {payload, meta};
}

at::Tensor dequantize_cpu(const at::Tensor& payload, const at::Tensor& meta, int64_t num_samples,
                          int64_t numel_per_sample, int64_t group_size, int64_t bits,
                          const std::optional<at::Tensor>& sample_bits,
                          const std::optional<at::Tensor>& sample_offsets, at::ScalarType dtype) {
  check_out_dtype(dtype, "dequantize");
  TORCH_CHECK(numel_per_sample >= 0, "actnn_mm.dequantize: numel_per_sample must be >= 0");
  const Layout l =
      make_layout(num_samples * numel_per_sample, num_samples, group_size, "dequantize");
  check_sample_bits(sample_bits, sample_offsets, bits, l, payload.device(), "dequantize");
  check_payload(payload, meta, l, sample_bits, bits, "dequantize");
  auto out = at::empty({num_samples * numel_per_sample}, payload.options().dtype(dtype));
  if (l.groups() == 0) return out;
  const int32_t* sb = sample_bits ? sample_bits->data_ptr<int32_t>() : nullptr;
  const int64_t* so = sample_offsets ? sample_offsets->data_ptr<int64_t>() : nullptr;
  ACTNN_DISPATCH_FLOAT(dtype, "actnn_mm.dequantize", [&] {
    dequantize_kernel<scalar_t>(payload.const_data_ptr<uint8_t>(), meta.const_data_ptr<float>(), l,
                                bits, sb, so, payload.numel(), out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor group_minmax_cpu(const at::Tensor& x, int64_t num_samples, int64_t group_size) {
  check_float_input(x, "group_minmax");
  const Layout l = make_layout(x.numel(), num_samples, group_size, "group_minmax");
  auto out = at::empty({l.groups() * 2}, x.options().dtype(at::kFloat));
  if (l.groups() == 0) return out;
  ACTNN_DISPATCH_FLOAT(x.scalar_type(), "actnn_mm.group_minmax", [&] {
    minmax_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), l, out.data_ptr<float>());
  });
  return out;
}

template <typename T>
void pack_kernel(const T* v, int64_t numel, int nbits, uint8_t* out) {
  const uint32_t mask = (1u << nbits) - 1u;
  at::parallel_for(0, (numel + 7) / 8, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      uint32_t q[8];
      for (int j = 0; j < 8; ++j) {
        const int64_t i = 8 * c + j;
        q[j] = i < numel ? (static_cast<uint32_t>(v[i]) & mask) : 0u;
      }
      store_bytes(out + c * nbits, pack8(q, nbits), nbits);
    }
  });
}

at::Tensor pack_bits_cpu(const at::Tensor& values, int64_t nbits) {
  check_pack_values(values, "pack_bits");
  check_nbits(nbits, "pack_bits");
  const int64_t numel = values.numel();
  auto out = at::empty({packed_bytes(numel, nbits)}, values.options().dtype(at::kByte));
  if (numel == 0) return out;
  const int nb = static_cast<int>(nbits);
  switch (values.scalar_type()) {
    case at::kBool:
      pack_kernel(values.const_data_ptr<bool>(), numel, nb, out.data_ptr<uint8_t>());
      break;
    case at::kByte:
      pack_kernel(values.const_data_ptr<uint8_t>(), numel, nb, out.data_ptr<uint8_t>());
      break;
    case at::kChar:
      pack_kernel(values.const_data_ptr<int8_t>(), numel, nb, out.data_ptr<uint8_t>());
      break;
    case at::kShort:
      pack_kernel(values.const_data_ptr<int16_t>(), numel, nb, out.data_ptr<uint8_t>());
      break;
    case at::kInt:
      pack_kernel(values.const_data_ptr<int32_t>(), numel, nb, out.data_ptr<uint8_t>());
      break;
    default:
      pack_kernel(values.const_data_ptr<int64_t>(), numel, nb, out.data_ptr<uint8_t>());
      break;
  }
  return out;
}

at::Tensor unpack_bits_cpu(const at::Tensor& packed, int64_t numel, int64_t nbits) {
  check_nbits(nbits, "unpack_bits");
  TORCH_CHECK(numel >= 0, "actnn_mm.unpack_bits: numel must be >= 0, got ", numel);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 1 && packed.is_contiguous() &&
                  packed.numel() == packed_bytes(numel, nbits),
              "actnn_mm.unpack_bits: packed must be a contiguous uint8 tensor of ",
              packed_bytes(numel, nbits), " bytes, got ", packed.scalar_type(), " ",
              packed.sizes());
  auto out = at::empty({numel}, packed.options());
  if (numel == 0) return out;
  const uint8_t* src = packed.const_data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int nb = static_cast<int>(nbits);
  at::parallel_for(0, (numel + 7) / 8, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      uint32_t q[8];
      unpack8(load_bytes(src + c * nb, nb), nb, q);
      for (int j = 0; j < 8; ++j) {
        const int64_t i = 8 * c + j;
        if (i < numel) dst[i] = static_cast<uint8_t>(q[j]);
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace actnn

TORCH_LIBRARY_IMPL(actnn_mm, CPU, m) {
  m.impl("quantize", &actnn::quantize_cpu);
  m.impl("dequantize", &actnn::dequantize_cpu);
  m.impl("group_minmax", &actnn::group_minmax_cpu);
  m.impl("pack_bits", &actnn::pack_bits_cpu);
  m.impl("unpack_bits", &actnn::unpack_bits_cpu);
}
