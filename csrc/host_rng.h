// The host draw of a Philox (seed, offset) from a CPU torch generator (default: torch's default
// CPU generator). The CPU kernel uses it for every stochastic call without an explicit seed; the
// CUDA kernel uses it too when no generator is given (outside CUDA graph capture), so that
// torch.manual_seed(s) gives the same packed bytes on both devices.
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace actnn {

std::pair<uint64_t, uint64_t> draw_cpu_seed_offset(const std::optional<at::Generator>& generator);

}  // namespace actnn
