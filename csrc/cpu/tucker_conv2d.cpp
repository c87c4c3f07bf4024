// PLACEHOLDER (unfused chain) — to be replaced by the fused, tiled kernel.
#include "ops.h"

namespace mtd {
at::Tensor tucker_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_core,
                             const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             bool relu) {
  auto y = at::conv2d(input, w_first);
  y = at::conv2d(y, w_core, {}, stride, padding, dilation);
  y = at::conv2d(y, w_last, bias);
  if (relu) y = at::relu(y);
  return y;
}
}  // namespace mtd
