// Operator schemas of the compression engine, registered with the PyTorch dispatcher so they work
// under autograd, torch.compile tracing (fake implementations are registered from Python, in
// actnn_mm/engine/_ops.py) and on whichever device has a kernel (CPU here, CUDA in cuda/).
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(actnn_mm, m) {
  // x: contiguous [num_samples * D] in memory order. Returns (payload uint8, meta float32 [N*Gs*2]).
  // Per-sample bits: sample_bits int32 [N] (1..8) with sample_offsets int64 [N] (byte offset of
  // each sample's payload) and payload_bytes their total; else the uniform `bits`.
  // Random stream: (seed, offset), or drawn from `generator` (default: the device's) when
  // use_generator is true. stochastic=false rounds half up (deterministic, for tests).
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
  // Bool / small integer values -> nbits per value (8 values per nbits bytes), and back (uint8).
  m.def("pack_bits(Tensor values, int nbits) -> Tensor");
  m.def("unpack_bits(Tensor packed, int numel, int nbits) -> Tensor");
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
