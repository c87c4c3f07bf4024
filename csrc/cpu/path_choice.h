// Per-shape choice between the fused CPU kernel and the unfused ATen chain (oneDNN convolutions).
//
// Neither path wins everywhere (the chain's oneDNN convs are faster on some large-batch shapes), so
// the first call of each shape times both a few times and caches the faster one; later calls with
// that shape run it directly. MTD_CPU_KERNELS=fused|chain (old name MTD_CPU_PATH) forces a path (tests,
// benchmarks); unset or "auto" measures. The key holds everything that changes the timing: op, input sizes, layout and
// dtype, factor sizes, stride/padding/dilation, bias/ReLU and the intra-op thread count.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/FunctionRef.h>

#include <string>
#include <utility>
#include <vector>

namespace mtd {
namespace cpu {

enum class Path { Fused, Chain };

// Runs `fused` or `chain` for this call, measuring both the first time a shape is seen (the
// measurement's last output is returned). When the input requires grad (a training forward) nothing
// is measured: the cached choice is used if there is one, else the fused path. Fake and meta
// tensors never get here (they run the op's fake kernel).
at::Tensor run_fastest(const char* op, const at::Tensor& x, at::TensorList weights,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, bool relu, c10::function_ref<at::Tensor()> fused,
                       c10::function_ref<at::Tensor()> chain);

// The cache, for tests and benchmarks: (key, "fused"|"chain") pairs; and a way to empty it.
std::vector<std::pair<std::string, std::string>> path_cache_entries();
void clear_path_cache();

}  // namespace cpu
}  // namespace mtd
