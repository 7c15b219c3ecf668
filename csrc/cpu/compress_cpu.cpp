// CPU kernel of actnn_mm::compress: everything one saved tensor needs in forward, in one op.
//   pass 1 (per group, parallel): load (+ optional affine pre-transform), min/max
//   per sample: sum of squared group ranges (the sensitivity), sequential in group order
//   allocation: the k cheapest (sample, bit) items by unique key (bits and byte offsets)
//   statistics for the cross-layer allocator, accumulated into a caller-owned tensor
//   pass 2 (per group, parallel): load again, quantize, pack, (min, step)
// Uniform bits skip pass 1 (one read of x; the statistic comes from the ranges after). Every step
// mirrors actnn_mm/engine/reference.py (compress) operation for operation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/cpu_common.h"
#include "host_rng.h"
#include "quant_common.h"

namespace actnn {
namespace {

using namespace cpu;

// The group's valid elements as fp32, with the affine applied and rounded back to the input
// dtype (what `((x - shift) * scale).to(x.dtype)` gives), then reduced to (min, max, bad).
// Returns where they are: x itself for fp32 without an affine (no copy), else buf. With
// `range` false the reduction is skipped (pass 2 has the range already). An fp32 group inside
// one affine run is not transformed at all: `fold` gets the run's (shift, scale), the values
// returned are x's, and the range is the transformed range of x's, exactly (below).
template <typename T>
inline const float* load_transformed(const T* x, int64_t e0, int64_t len, const Affine& a,
                                     float* buf, float& mn, float& mx, bool& bad, Fold& fold,
                                     bool range = true) {
  const T* src = x + e0;
  fold = Fold{};
  if constexpr (std::is_same_v<T, float>) {
    if (a.shift == nullptr) {
      if (range) reduce_group(src, len, mn, mx, bad);
      return src;
    }
    const int64_t q = e0 / a.inner, r = e0 - q * a.inner;
    if (a.inner > 1 && r + len <= a.inner) {
      const int64_t c = q % a.period;
      fold = Fold{true, a.shift[c], a.scale[c]};
      if (range) {
        // v -> (v - shift) * scale is monotone in IEEE arithmetic (non-decreasing for scale >= 0,
        // non-increasing below), so the transformed extremes are the transformed raw extremes,
        // and, x being finite, a transformed value overflows or is NaN only if an extreme does.
        float lo, hi;
        reduce_group(src, len, lo, hi, bad);
        const float t0 = affine_value(lo, fold.shift, fold.scale);
        const float t1 = affine_value(hi, fold.shift, fold.scale);
        mn = t0 < t1 ? t0 : t1;
        mx = t0 < t1 ? t1 : t0;
        bad = bad || non_finite(t0) || non_finite(t1);
      }
      return src;
    }
  }
  for (int64_t j = 0; j < len; ++j) buf[j] = to_f(src[j]);
  if (a.shift != nullptr) {
    // Runs of elements with one (shift, scale) (inner > 1), or of consecutive channels.
    const int64_t q = e0 / a.inner;
    int64_t r = e0 - q * a.inner, c = q % a.period;
    for (int64_t j = 0; j < len;) {
      if (a.inner == 1) {
        const int64_t n = std::min<int64_t>(len - j, a.period - c);
        affine_each(buf + j, n, a.shift + c, a.scale + c);
        j += n;
        c = 0;
      } else {
        const int64_t n = std::min<int64_t>(len - j, a.inner - r);
        affine_run(buf + j, n, a.shift[c], a.scale[c]);
        j += n;
        r = 0;
        if (++c == a.period) c = 0;
      }
    }
    if constexpr (!std::is_same_v<T, float>)
      for (int64_t j = 0; j < len; ++j) buf[j] = to_f(static_cast<T>(buf[j]));
  }
  if (range) reduce_group(buf, len, mn, mx, bad);
  return buf;
}

// Per-sample bits summing to total: ActNN's greedy (remove the cheapest bit, repeatedly) as
// "remove the k cheapest (sample, bit) items", the k-th found by nth_element on unique keys.
void allocate_bits(const float* rsq, const CompressPlan& p, int32_t* bits) {
  const int64_t n = p.l.N;
  const int levels = p.max_bits - p.min_bits;
  const int64_t k = n * p.max_bits - p.total_bits;
  for (int64_t i = 0; i < n; ++i) bits[i] = p.max_bits;
  if (k == 0) return;
  float w[8];
  for (int j = 0; j < levels; ++j) w[j] = bit_weight(p.max_bits - j);
  std::vector<uint64_t> keys(static_cast<size_t>(n * levels));
  for (int64_t i = 0; i < n; ++i) {
    const float c = clean_sensitivity(rsq[i]);
    for (int j = 0; j < levels; ++j)
      keys[i * levels + j] = item_key(c, w[j], static_cast<uint64_t>(i * levels + j));
  }
  std::vector<uint64_t> sorted(keys);
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end());
  const uint64_t kth = sorted[k - 1];
  for (int64_t i = 0; i < n; ++i) {
    int removed = 0;
    for (int j = 0; j < levels; ++j) removed += keys[i * levels + j] <= kth ? 1 : 0;
    bits[i] = p.max_bits - removed;
  }
}

// Per sample n: the sum over its groups, in group order, of (max - min)^2, where group gi's
// max - min is minmax[stride * gi + 1] - minmax[stride * gi] (stride 2: (min, max) pairs) or,
// with stride 1, the range itself (then minmax[gi] is the range and the "min" reads as 0).
void sample_sensitivity(const float* minmax, int stride, const Layout& l, float* rsq) {
  at::parallel_for(0, l.N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float acc = 0.0f;
      for (int64_t g = 0; g < l.Gs; ++g) {
        const float* m = minmax + stride * (n * l.Gs + g);
        const float r = stride == 2 ? f_sub(m[1], m[0]) : m[0];
        acc = f_add(acc, f_mul(r, r));
      }
      rsq[n] = acc;
    }
  });
}

// stats[0] += mean over samples of the cleaned sensitivity, times factor.
void add_stat(const float* rsq, int64_t n, float* stats, float factor) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s = f_add(s, clean_stat(rsq[i]));
  stats[0] = f_add(stats[0], f_mul(f_div(s, static_cast<float>(n)), factor));
}

template <typename T>
void compress_kernel(const T* x, const CompressPlan& p, const Affine& a, bool stochastic,
                     uint64_t seed, uint64_t offset, float* stats, float stats_factor,
                     int32_t* sample_bits, int64_t* sample_offsets, uint8_t* payload, float* meta) {
  const Layout& l = p.l;
  const int64_t G = l.G;
  const int64_t group_bytes_per_bit = G / 8;
  if (!p.per_sample) {
    // One read of x: min/max and quantization per group; the statistic after, from the ranges.
    const int b = p.bits;
    std::vector<float> ranges(static_cast<size_t>(p.stats ? l.groups() : 0));
    at::parallel_for(0, l.groups(), kGrain, [&](int64_t begin, int64_t end) {
      float buf[kMaxGroupSize];
      for (int64_t gi = begin; gi < end; ++gi) {
        const int64_t n = gi / l.Gs, g = gi % l.Gs;
        const int64_t start = g * G, len = std::min<int64_t>(G, l.D - start);
        float mn, mx;
        bool bad;
        Fold fold;
        const float* v = load_transformed(x, n * l.D + start, len, a, buf, mn, mx, bad, fold);
        const GroupParams gp = group_params(mn, mx, bad, b);
        meta[2 * gi] = gp.mn;
        meta[2 * gi + 1] = gp.step;
        if (stats != nullptr) ranges[gi] = bad ? NAN : f_sub(f_add(mx, 0.0f), f_add(mn, 0.0f));
        quantize_pack_group(v, len, G, gp.mn, gp.scale, gp.bad, b, stochastic, seed, offset, gi,
                            payload + gi * group_bytes_per_bit * b, fold);
      }
    });
    if (stats != nullptr) {
      std::vector<float> rsq(static_cast<size_t>(l.N));
      sample_sensitivity(ranges.data(), 1, l, rsq.data());
      add_stat(rsq.data(), l.N, stats, stats_factor);
    }
    return;
  }
  // Pass 1: (min, max) per group into meta, NaN for groups with non-finite values.
  at::parallel_for(0, l.groups(), kGrain, [&](int64_t begin, int64_t end) {
    float buf[kMaxGroupSize];
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t n = gi / l.Gs, g = gi % l.Gs;
      const int64_t start = g * G, len = std::min<int64_t>(G, l.D - start);
      float mn, mx;
      bool bad;
      Fold fold;
      load_transformed(x, n * l.D + start, len, a, buf, mn, mx, bad, fold);
      meta[2 * gi] = bad ? NAN : f_add(mn, 0.0f);
      meta[2 * gi + 1] = bad ? NAN : f_add(mx, 0.0f);
    }
  });
  // Sensitivity per sample: sum of squared ranges, in group order.
  std::vector<float> rsq(static_cast<size_t>(l.N));
  sample_sensitivity(meta, 2, l, rsq.data());
  if (stats != nullptr) add_stat(rsq.data(), l.N, stats, stats_factor);
  if (p.per_sample) {
    allocate_bits(rsq.data(), p, sample_bits);
    int64_t acc = 0;
    for (int64_t n = 0; n < l.N; ++n) {
      sample_offsets[n] = acc;
      acc += static_cast<int64_t>(sample_bits[n]) * l.Gs * group_bytes_per_bit;
    }
  }
  // Pass 2: quantize and pack with the chosen bits.
  at::parallel_for(0, l.groups(), kGrain, [&](int64_t begin, int64_t end) {
    float buf[kMaxGroupSize];
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t n = gi / l.Gs, g = gi % l.Gs;
      const int64_t start = g * G, len = std::min<int64_t>(G, l.D - start);
      const int b = p.per_sample ? sample_bits[n] : p.bits;
      const int64_t base = (p.per_sample ? sample_offsets[n] : n * l.Gs * group_bytes_per_bit * b) +
                           g * group_bytes_per_bit * b;
      float mn, mx;
      bool bad;
      Fold fold;
      const float* v = load_transformed(x, n * l.D + start, len, a, buf, mn, mx, bad, fold, false);
      const float smn = meta[2 * gi], smx = meta[2 * gi + 1];
      const GroupParams gp = group_params(smn, smx, smn != smn, b);
      meta[2 * gi] = gp.mn;
      meta[2 * gi + 1] = gp.step;
      quantize_pack_group(v, len, G, gp.mn, gp.scale, gp.bad, b, stochastic, seed, offset, gi,
                          payload + base, fold);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> compress_cpu(
    const at::Tensor& x, int64_t num_samples, int64_t group_size, int64_t bits, int64_t total_bits,
    int64_t min_bits, int64_t max_bits, const std::optional<at::Tensor>& shift,
    const std::optional<at::Tensor>& scale, int64_t affine_inner, int64_t affine_period,
    const std::optional<at::Tensor>& stats, double stats_factor, bool stochastic, int64_t seed,
    int64_t offset, bool use_generator, std::optional<at::Generator> generator) {
  const CompressPlan p =
      check_compress_args(x, num_samples, group_size, bits, total_bits, min_bits, max_bits, shift,
                          scale, affine_inner, affine_period, stats);
  uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  if (use_generator && stochastic) std::tie(s, o) = draw_cpu_seed_offset(generator);
  const auto opts = x.options();
  auto payload = at::empty({p.payload_bytes}, opts.dtype(at::kByte));
  auto meta = at::empty({p.l.groups() * 2}, opts.dtype(at::kFloat));
  auto sbits = at::empty({p.per_sample ? p.l.N : 0}, opts.dtype(at::kInt));
  auto soffs = at::empty({p.per_sample ? p.l.N : 0}, opts.dtype(at::kLong));
  if (p.l.groups() == 0) return {payload, meta, sbits, soffs};
  const Affine a{p.affine ? shift->const_data_ptr<float>() : nullptr,
                 p.affine ? scale->const_data_ptr<float>() : nullptr, affine_inner, affine_period};
  float* st = p.stats ? stats->data_ptr<float>() : nullptr;
  ACTNN_DISPATCH_FLOAT(x.scalar_type(), "actnn_mm.compress", [&] {
    compress_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), p, a, stochastic, s, o, st,
                              static_cast<float>(stats_factor),
                              p.per_sample ? sbits.data_ptr<int32_t>() : nullptr,
                              p.per_sample ? soffs.data_ptr<int64_t>() : nullptr,
                              payload.data_ptr<uint8_t>(), meta.data_ptr<float>());
  });
  return {payload, meta, sbits, soffs};
}

// acc[index] += scale * sum(g^2): the layer's gradient statistic in one op. Partial sums in
// float64 over fixed blocks, added in block order: the same value whatever the thread count.
// Sum of squares of g[lo, hi) in float64, in 8 interleaved partial sums (lane k takes the
// elements lo + k, lo + k + 8, ...) so the loop vectorises; the order is fixed, so the result
// does not depend on the vector width or the number of threads.
template <typename T>
double block_sq_sum(const T* g, int64_t lo, int64_t hi) {
  double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  int64_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    for (int k = 0; k < 8; ++k) {
      const double v = static_cast<double>(g[i + k]);
      acc[k] += v * v;
    }
  }
  for (int k = 0; i < hi; ++i, ++k) {
    const double v = static_cast<double>(g[i]);
    acc[k] += v * v;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// fp32 blocks: runs of 1024 elements summed in 32 fp32 lanes (32 squares each, so the float
// rounding stays ~1e-7 relative), each run's total added in float64. Fixed order, vectorises.
ACTNN_CLONES
double block_sq_sum_f32(const float* g, int64_t lo, int64_t hi) {
  constexpr int64_t kRun = 1024, kLanes = 32;
  double total = 0.0;
  int64_t i = lo;
  for (; i + kRun <= hi; i += kRun) {
    float acc[kLanes] = {};
    for (int64_t j = 0; j < kRun; j += kLanes)
      for (int64_t k = 0; k < kLanes; ++k)
        acc[k] = f_add(acc[k], f_mul(g[i + j + k], g[i + j + k]));
    double run = 0.0;
    for (int64_t k = 0; k < kLanes; ++k) run += static_cast<double>(acc[k]);
    total += run;
  }
  return total + block_sq_sum(g, i, hi);
}

template <typename T>
double sq_norm(const T* g, int64_t numel) {
  constexpr int64_t kBlock = 1 << 16;
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  std::vector<double> part(static_cast<size_t>(blocks), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t lo = b * kBlock, hi = std::min(numel, lo + kBlock);
      if constexpr (std::is_same_v<T, float>) {
        part[b] = block_sq_sum_f32(g, lo, hi);
      } else {
        part[b] = block_sq_sum(g, lo, hi);
      }
    }
  });
  double total = 0.0;
  for (double v : part) total += v;
  return total;
}

void accumulate_sq_norm_cpu(const at::Tensor& g, const at::Tensor& acc, int64_t index,
                            double scale) {
  check_accumulate_args(g, acc, index);
  const at::Tensor gd = g.is_non_overlapping_and_dense() ? g : g.contiguous();
  double total = 0.0;
  switch (gd.scalar_type()) {
    case at::kFloat:
      total = sq_norm(gd.const_data_ptr<float>(), gd.numel());
      break;
    case at::kHalf:
      total = sq_norm(gd.const_data_ptr<at::Half>(), gd.numel());
      break;
    case at::kBFloat16:
      total = sq_norm(gd.const_data_ptr<at::BFloat16>(), gd.numel());
      break;
    default:
      total = sq_norm(gd.const_data_ptr<double>(), gd.numel());
      break;
  }
  float* a = acc.data_ptr<float>();
  a[index] = static_cast<float>(static_cast<double>(a[index]) + total * scale);
}

}  // namespace
}  // namespace actnn

TORCH_LIBRARY_IMPL(actnn_mm, CPU, m) {
  m.impl("compress", &actnn::compress_cpu);
  m.impl("accumulate_sq_norm", &actnn::accumulate_sq_norm_cpu);
}
