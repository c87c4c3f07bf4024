// Fused CP4 conv on CPU: 1x1 (R,S) -> depthwise kh x 1 -> depthwise 1 x kw -> 1x1 (T,R) + bias [ReLU].
// Same pipeline as cp_conv2d; the middle stage is the vertical stencil into a (rows_out, W, R) buffer
// followed by the horizontal stencil into V, both vectorised over R and cache-resident.
#include "cpu/fused_pipeline.h"
#include "cpu/middle_stages.h"
#include "cpu/path_choice.h"
#include "op_checks.h"
#include "ops.h"

namespace mtd {
namespace {

at::Tensor cp4_chain(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_v,
                     const at::Tensor& w_h, const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  const int64_t r = w_first.size(0);
  auto y = at::conv2d(input, w_first);
  y = at::conv2d(y, w_v, {}, at::IntArrayRef({stride[0], 1}), at::IntArrayRef({padding[0], 0}),
                 at::IntArrayRef({dilation[0], 1}), r);
  y = at::conv2d(y, w_h, {}, at::IntArrayRef({1, stride[1]}), at::IntArrayRef({0, padding[1]}),
                 at::IntArrayRef({1, dilation[1]}), r);
  return cpu::finish_chain(input, at::conv2d(y, w_last, bias), relu);  // bias inside oneDNN's conv
}

}  // namespace

at::Tensor cp4_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_vertical,
                          const at::Tensor& w_horizontal, const at::Tensor& w_last,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  check_common("cp4_conv2d", input, {w_first, w_vertical, w_horizontal, w_last}, bias, stride, padding,
                    dilation);
  check_cp4_shapes(w_first, w_vertical, w_horizontal, w_last);
  const int64_t r = w_first.size(0), kh = w_vertical.size(2), kw = w_horizontal.size(3);
  const cpu::Window g = cpu::make_window("cp4_conv2d", input, kh, kw, stride, padding, dilation);
  if (!cpu::fused_supported(input, r, r, w_last.size(0))) {
    return cp4_chain(input, w_first, w_vertical, w_horizontal, w_last, bias, stride, padding, dilation, relu);
  }
  auto fused = [&] {
    const at::Tensor w_v = w_vertical.reshape({r, kh}).t().contiguous();    // (kh, R)
    const at::Tensor w_h = w_horizontal.reshape({r, kw}).t().contiguous();  // (kw, R)
    at::Tensor out;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cp4_conv2d_cpu", [&] {
      const cpu::Cp4Separable<scalar_t> mid{r, r, w_v.data_ptr<scalar_t>(), w_h.data_ptr<scalar_t>(), g};
      out = cpu::run_fused<scalar_t>(input, w_first, w_last, bias, relu, g, mid);
    });
    return out;
  };
  auto chain = [&] {
    return cp4_chain(input, w_first, w_vertical, w_horizontal, w_last, bias, stride, padding, dilation, relu);
  };
  return cpu::run_fastest("cp4_conv2d", input, {w_first, w_vertical, w_horizontal, w_last}, bias, stride, padding,
                          dilation, relu, fused, chain);
}

}  // namespace mtd
