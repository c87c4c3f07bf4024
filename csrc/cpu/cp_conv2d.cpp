// Fused CP3 conv on CPU: 1x1 (R,S) -> depthwise kh x kw (R) -> 1x1 (T,R) + bias [ReLU], one pass.
// Per task (image, chunk of output rows): U = first 1x1 of the rows the chunk reads (one GEMM),
// V = depthwise of U vectorised over R, output tile = last 1x1 of V (one GEMM) + bias/ReLU in cache.
#include "cpu/fused_pipeline.h"
#include "cpu/middle_stages.h"
#include "cpu/path_choice.h"
#include "op_checks.h"
#include "ops.h"

namespace mtd {
namespace {

at::Tensor cp_chain(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_dw,
                    const at::Tensor& w_last, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                    at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  auto y = at::conv2d(input, w_first);
  y = at::conv2d(y, w_dw, {}, stride, padding, dilation, w_dw.size(0));
  return cpu::finish_chain(input, at::conv2d(y, w_last, bias), relu);  // bias inside oneDNN's conv
}

}  // namespace

at::Tensor cp_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_depthwise,
                         const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  check_common("cp_conv2d", input, {w_first, w_depthwise, w_last}, bias, stride, padding, dilation);
  check_cp_shapes(w_first, w_depthwise, w_last);
  const int64_t r = w_first.size(0), kh = w_depthwise.size(2), kw = w_depthwise.size(3);
  const cpu::Window g = cpu::make_window("cp_conv2d", input, kh, kw, stride, padding, dilation);
  if (!cpu::fused_supported(input, r, r, w_last.size(0))) {
    return cp_chain(input, w_first, w_depthwise, w_last, bias, stride, padding, dilation, relu);
  }
  auto fused = [&] {
    const at::Tensor w_taps = w_depthwise.reshape({r, kh * kw}).t().contiguous();  // (kh*kw, R)
    at::Tensor out;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cp_conv2d_cpu", [&] {
      const cpu::CpDepthwise<scalar_t> mid{r, r, w_taps.data_ptr<scalar_t>(), g};
      out = cpu::run_fused<scalar_t>(input, w_first, w_last, bias, relu, g, mid);
    });
    return out;
  };
  auto chain = [&] { return cp_chain(input, w_first, w_depthwise, w_last, bias, stride, padding, dilation, relu); };
  return cpu::run_fastest("cp_conv2d", input, {w_first, w_depthwise, w_last}, bias, stride, padding, dilation, relu,
                          fused, chain);
}

}  // namespace mtd
