// Batch-norm backward read straight from the compressed normalised input: each group is
// dequantized into a buffer that stays in L1 and consumed there, so x_hat is never written out
// (dequantize + native_batch_norm_backward would write it once and read it twice).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/cpu_common.h"
#include "quant_common.h"

namespace actnn {
namespace cpu {
namespace {

// 16 fp32 lanes as a GCC vector: each clone of ACTNN_CLONES lowers it to its widest registers.
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

// Group buffers hold one group plus one vector of slack: a run's last vector may read (and, for
// the output, write) past the run, into the next run or the slack.
constexpr int64_t kBuf = kMaxGroupSize + 16;

inline f32x16 load16(const float* p) {
  f32x16 v;
  memcpy(&v, p, sizeof(v));
  return v;
}

inline float hsum(f32x16 v) {
  v += __builtin_shuffle(v, i32x16{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
  v += __builtin_shuffle(v, i32x16{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
  v += __builtin_shuffle(v, i32x16{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
  v += __builtin_shuffle(v, i32x16{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
  return v[0];
}

// Calls f(offset in the group, run length, channel) for each run of one channel among the
// elements start .. start + len of a sample (channel of element e: (e / inner) % C); one
// division per group.
template <typename F>
inline void for_each_run(int64_t start, int64_t len, int64_t inner, int64_t C, F&& f) {
  int64_t e = start, block = start / inner, c = block % C;
  const int64_t stop = start + len;
  while (e < stop) {
    const int64_t end = std::min(stop, (block + 1) * inner);
    f(e - start, end - e, c);
    e = end;
    ++block;
    if (++c == C) c = 0;
  }
}

// Per channel, sum(dy) and sum(dy * x) over one group (elements start .. start + len of a
// sample; dy and x in buffers of kBuf), added to the channel's float64 totals s / d: each run of
// one channel in 16 fp32 lanes (its last vector masked), reduced once per run.
ACTNN_CLONES
void group_sums(const float* dy, const float* x, int64_t start, int64_t len, int64_t inner,
                int64_t C, double* s, double* d) {
  const i32x16 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  for_each_run(start, len, inner, C, [&](int64_t off, int64_t n, int64_t c) {
    const float* g = dy + off;
    const float* v = x + off;
    f32x16 ps = {}, pd = {};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      const f32x16 a = load16(g + j);
      ps += a;
      pd += a * load16(v + j);
    }
    if (j < n) {
      const i32x16 keep = iota < static_cast<int32_t>(n - j);
      const f32x16 zero = {};
      const f32x16 a = keep ? load16(g + j) : zero;
      ps += a;
      pd += a * (keep ? load16(v + j) : zero);
    }
    s[c] += hsum(ps);
    d[c] += hsum(pd);
  });
}

// grad_input of one group, (dy - mean_dy[c]) - x * k[c]) * w[c] per channel c, into out (a
// buffer of kBuf: each run's last vector is written whole, the next run then overwrites).
ACTNN_CLONES
void group_grad(const float* dy, const float* x, int64_t start, int64_t len, int64_t inner,
                int64_t C, const float* mean_dy, const float* k, const float* w, float* out) {
  for_each_run(start, len, inner, C, [&](int64_t off, int64_t n, int64_t c) {
    const float m = mean_dy[c], kc = k[c], wc = w[c];
    for (int64_t j = 0; j < n; j += 16) {
      const f32x16 v = ((load16(dy + off + j) - m) - load16(x + off + j) * kc) * wc;
      memcpy(out + off + j, &v, sizeof(v));
    }
  });
}

// The values x_hat of group g of sample n as dequantize returns them (rounded to T), as fp32.
template <typename T>
inline void group_values(const uint8_t* payload, const float* meta, const Layout& l, int64_t bits,
                         const int32_t* sb, const int64_t* so, int64_t payload_bytes, int64_t n,
                         int64_t g, int64_t len, float* out) {
  dequantize_group(payload, meta, l, bits, sb, so, payload_bytes, n, g, len, out);
  if constexpr (!std::is_same_v<T, float>)
    for (int64_t j = 0; j < len; ++j) out[j] = to_f(static_cast<T>(out[j]));
}

// dy of one group as fp32 into buf.
template <typename T>
inline void load_grad(const T* dy, int64_t len, float* buf) {
  if constexpr (std::is_same_v<T, float>)
    memcpy(buf, dy, static_cast<size_t>(len) * sizeof(float));
  else
    for (int64_t j = 0; j < len; ++j) buf[j] = to_f(dy[j]);
}

struct BnArgs {
  const uint8_t* payload;
  const float* meta;
  Layout l;
  int64_t bits;
  const int32_t* sb;
  const int64_t* so;
  int64_t payload_bytes;
  int64_t inner, channels;
};

template <typename T>
void bn_backward_kernel(const T* dy, const BnArgs& a, const float* w, T* gx, float* gw, float* gb) {
  const Layout& l = a.l;
  const int64_t C = a.channels, groups = l.groups();
  // Fixed chunks (not one per thread) with their own float64 totals, summed in chunk order: the
  // result does not depend on the thread count or on scheduling.
  const int64_t chunks = std::min<int64_t>(16, std::max<int64_t>(1, groups / 64));
  std::vector<double> acc(static_cast<size_t>(chunks * 2 * C), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    alignas(64) float xb[kBuf], gbuf[kBuf];
    for (int64_t chunk = cb; chunk < ce; ++chunk) {
      double* s = acc.data() + chunk * 2 * C;
      double* d = s + C;
      const int64_t g0 = groups * chunk / chunks, g1 = groups * (chunk + 1) / chunks;
      for (int64_t gi = g0; gi < g1; ++gi) {
        const int64_t n = gi / l.Gs, g = gi % l.Gs;
        const int64_t start = g * l.G, len = std::min<int64_t>(l.G, l.D - start);
        group_values<T>(a.payload, a.meta, l, a.bits, a.sb, a.so, a.payload_bytes, n, g, len, xb);
        load_grad(dy + n * l.D + start, len, gbuf);
        if (a.inner == 1) {  // channels innermost (channels_last): one element per run
          int64_t c = start % C;
          for (int64_t j = 0; j < len; ++j) {
            s[c] += gbuf[j];
            d[c] += f_mul(gbuf[j], xb[j]);
            if (++c == C) c = 0;
          }
        } else {
          group_sums(gbuf, xb, start, len, a.inner, C, s, d);
        }
      }
    }
  });
  std::vector<double> sum_dy(static_cast<size_t>(C), 0.0), sum_dyx(static_cast<size_t>(C), 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk)
    for (int64_t c = 0; c < C; ++c) {
      sum_dy[c] += acc[chunk * 2 * C + c];
      sum_dyx[c] += acc[chunk * 2 * C + C + c];
    }
  const double M = static_cast<double>(l.N) * static_cast<double>(l.D / C);
  std::vector<float> mean_dy(static_cast<size_t>(C)), k(static_cast<size_t>(C)),
      scale(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    gb[c] = static_cast<float>(sum_dy[c]);
    gw[c] = static_cast<float>(sum_dyx[c]);
    mean_dy[c] = static_cast<float>(sum_dy[c] / M);
    k[c] = static_cast<float>(sum_dyx[c] / M);
    scale[c] = w ? w[c] : 1.0f;
  }
  if (gx == nullptr) return;
  at::parallel_for(0, groups, kGrain, [&](int64_t begin, int64_t end) {
    alignas(64) float xb[kBuf], gbuf[kBuf], obuf[kBuf];
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t n = gi / l.Gs, g = gi % l.Gs;
      const int64_t start = g * l.G, len = std::min<int64_t>(l.G, l.D - start);
      group_values<T>(a.payload, a.meta, l, a.bits, a.sb, a.so, a.payload_bytes, n, g, len, xb);
      load_grad(dy + n * l.D + start, len, gbuf);
      if (a.inner == 1) {
        int64_t c = start % C;
        for (int64_t j = 0; j < len; ++j) {
          obuf[j] = f_mul(f_sub(f_sub(gbuf[j], mean_dy[c]), f_mul(xb[j], k[c])), scale[c]);
          if (++c == C) c = 0;
        }
      } else {
        group_grad(gbuf, xb, start, len, a.inner, C, mean_dy.data(), k.data(), scale.data(), obuf);
      }
      T* dst = gx + n * l.D + start;
      if constexpr (std::is_same_v<T, float>)
        memcpy(dst, obuf, static_cast<size_t>(len) * sizeof(float));
      else
        for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<T>(obuf[j]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_backward_cpu(
    const at::Tensor& grad, const at::Tensor& payload, const at::Tensor& meta, int64_t num_samples,
    int64_t numel_per_sample, int64_t group_size, int64_t bits,
    const std::optional<at::Tensor>& sample_bits, const std::optional<at::Tensor>& sample_offsets,
    const std::optional<at::Tensor>& scale, int64_t channel_inner, int64_t channels,
    bool input_grad) {
  const Layout l =
      check_bn_backward_args(grad, payload, meta, num_samples, numel_per_sample, group_size, bits,
                             sample_bits, sample_offsets, scale, channel_inner, channels);
  auto f32 = grad.options().dtype(at::kFloat);
  auto gw = at::empty({channels}, f32), gb = at::empty({channels}, f32);
  auto gx = input_grad ? at::empty({grad.numel()}, grad.options()) : at::empty({0}, grad.options());
  if (l.groups() == 0) {
    gw.zero_();
    gb.zero_();
    return {gx, gw, gb};
  }
  const BnArgs a{payload.const_data_ptr<uint8_t>(),
                 meta.const_data_ptr<float>(),
                 l,
                 bits,
                 sample_bits ? sample_bits->const_data_ptr<int32_t>() : nullptr,
                 sample_offsets ? sample_offsets->const_data_ptr<int64_t>() : nullptr,
                 payload.numel(),
                 channel_inner,
                 channels};
  const float* w = scale ? scale->const_data_ptr<float>() : nullptr;
  ACTNN_DISPATCH_FLOAT(grad.scalar_type(), "actnn_mm.bn_backward", [&] {
    bn_backward_kernel<scalar_t>(grad.const_data_ptr<scalar_t>(), a, w,
                                 input_grad ? gx.data_ptr<scalar_t>() : nullptr,
                                 gw.data_ptr<float>(), gb.data_ptr<float>());
  });
  return {gx, gw, gb};
}

}  // namespace
}  // namespace cpu
}  // namespace actnn

TORCH_LIBRARY_IMPL(actnn_mm, CPU, m) { m.impl("bn_backward", &actnn::cpu::bn_backward_cpu); }
