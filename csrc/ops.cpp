// Operator schemas of the compression engine, registered with the PyTorch dispatcher so they work
// under autograd, torch.compile tracing (fake implementations are registered from Python, in
// actnn_mm/engine/_ops.py) and on whichever device has a kernel (CPU here, CUDA in cuda/).
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(actnn_mm, m) {
  // x: contiguous [num_samples * D] in memory order. Returns (payload uint8, meta float32
  // [N*Gs*2]). Per-sample bits: sample_bits int32 [N] (1..8) with sample_offsets int64 [N] (byte
  // offset of each sample's payload) and payload_bytes their total; else the uniform `bits`. Random
  // stream: (seed, offset), or drawn from `generator` (default: the device's) when use_generator is
  // true. stochastic=false rounds half up (deterministic, for tests).
  m.def(
      "quantize(Tensor x, int num_samples, int group_size, int bits, Tensor? sample_bits, "
      "Tensor? sample_offsets, int payload_bytes, bool stochastic, int seed, int offset, "
      "bool use_generator, Generator? generator) -> (Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  m.def(
      "dequantize(Tensor payload, Tensor meta, int num_samples, int numel_per_sample, "
      "int group_size, int bits, Tensor? sample_bits, Tensor? sample_offsets, ScalarType dtype) "
      "-> Tensor");
  // Per-group (min, max) of the valid elements, float32 [N*Gs*2]; NaN for non-finite groups.
  // Used for the sensitivity statistics of mixed precision (before the bits are chosen).
  m.def("group_minmax(Tensor x, int num_samples, int group_size) -> Tensor");
  // Everything one saved tensor needs in forward, fused: optional affine pre-transform
  // v = (x - shift[i]) * scale[i], i = (e / affine_inner) % affine_period (rounded back to x's
  // dtype); per-group min/max; per-sample sensitivity (sum of squared ranges); with bits == 0
  // the per-sample bits (min_bits..max_bits, summing to total_bits) and byte offsets; the
  // allocator's range statistic added to stats[0] (mean over samples * stats_factor); then
  // quantization and packing. Returns (payload, meta, sample_bits int32 [N] or [0],
  // sample_offsets int64 [N] or [0]). Nothing is read back on the host.
  m.def(
      "compress(Tensor x, int num_samples, int group_size, int bits, int total_bits, "
      "int min_bits, int max_bits, Tensor? shift, Tensor? scale, int affine_inner, "
      "int affine_period, Tensor(a!)? stats, float stats_factor, bool stochastic, int seed, "
      "int offset, bool use_generator, Generator? generator) -> (Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::nondeterministic_seeded});
  // Batch-norm backward from a compressed normalised input x_hat (dequantize's arguments; the
  // channel of element e of a sample in memory order is (e / channel_inner) % channels), grad the
  // output gradient dy in the same memory order, scale the per-channel w (weight * invstd; None:
  // 1). Per channel sum_dy = sum(dy) and sum_dy_xhat = sum(dy * x_hat) over M elements; returns
  // (w * (dy - sum_dy / M - x_hat * sum_dy_xhat / M) [N * D] in grad's dtype, or [0] without
  // input_grad; sum_dy_xhat float32 [C] (the weight gradient); sum_dy float32 [C] (the bias's)).
  // x_hat is rounded to grad's dtype as dequantize would return it, and never written out.
  m.def(
      "bn_backward(Tensor grad, Tensor payload, Tensor meta, int num_samples, "
      "int numel_per_sample, int group_size, int bits, Tensor? sample_bits, "
      "Tensor? sample_offsets, Tensor? scale, int channel_inner, int channels, bool input_grad) "
      "-> (Tensor, Tensor, Tensor)");
  // acc[index] += scale * sum(g^2) (the per-layer gradient statistic, one op per backward).
  m.def("accumulate_sq_norm(Tensor g, Tensor(a!) acc, int index, float scale) -> ()");
  // Bool / small integer values -> nbits per value (8 values per nbits bytes), and back (uint8).
  m.def("pack_bits(Tensor values, int nbits) -> Tensor");
  m.def("unpack_bits(Tensor packed, int numel, int nbits) -> Tensor");
  // 1-bit masks of float tensors without a bool temporary: bit = x > 0 when positive, else
  // x != 0 (NaN != 0: a ReLU's NaN output passes its gradient, as in torch). Memory order.
  m.def("pack_nonzero(Tensor x, bool positive) -> Tensor");
  // The mask as 0/1 values of dtype (what threshold_backward reads of a ReLU output).
  m.def("unpack_mask(Tensor packed, int numel, ScalarType dtype) -> Tensor");
  // grad where the mask bit is set, else 0 (ReLU backward in one op); grad contiguous in the
  // mask's memory order.
  m.def("mask_grad(Tensor grad, Tensor packed) -> Tensor");
}

namespace {
bool with_cuda() {
#ifdef ACTNN_MM_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "actnn_mm compression kernels (ops live in torch.ops.actnn_mm)";
  m.def("with_cuda", &with_cuda, "whether the CUDA kernels were compiled in");
}
