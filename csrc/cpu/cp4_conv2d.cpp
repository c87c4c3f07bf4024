// PLACEHOLDER (unfused chain) — to be replaced by the fused, tiled kernel.
#include "ops.h"

namespace mtd {
at::Tensor cp4_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_vertical,
                          const at::Tensor& w_horizontal, const at::Tensor& w_last,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  const int64_t r = w_first.size(0);
  auto y = at::conv2d(input, w_first);
  y = at::conv2d(y, w_vertical, {}, at::IntArrayRef({stride[0], 1}), at::IntArrayRef({padding[0], 0}),
                 at::IntArrayRef({dilation[0], 1}), r);
  y = at::conv2d(y, w_horizontal, {}, at::IntArrayRef({1, stride[1]}), at::IntArrayRef({0, padding[1]}),
                 at::IntArrayRef({1, dilation[1]}), r);
  y = at::conv2d(y, w_last, bias);
  if (relu) y = at::relu(y);
  return y;
}
}  // namespace mtd
