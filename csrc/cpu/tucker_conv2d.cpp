// Fused Tucker-2 conv on CPU: 1x1 (R1,S) -> dense kh x kw core (R2,R1) -> 1x1 (T,R2) + bias [ReLU].
// Same pipeline as cp_conv2d; the middle stage is one GEMM of the chunk's U with the core, all in the task's L2
// scratch: through an im2col (pixel-major, so each tap is a contiguous copy of R1 values), or, on rows of 8+
// pixels with the core packed, straight from zero-padded input rows (TuckerCore::implicit, middle_stages.h).
#include "cpu/fused_pipeline.h"
#include "cpu/middle_stages.h"
#include "cpu/path_choice.h"
#include "op_checks.h"
#include "ops.h"

namespace mtd {
namespace {

at::Tensor tucker_chain(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_core,
                        const at::Tensor& w_last, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  auto y = at::conv2d(input, w_first);
  y = at::conv2d(y, w_core, {}, stride, padding, dilation);
  return cpu::finish_chain(input, at::conv2d(y, w_last, bias), relu);  // bias inside oneDNN's conv
}

}  // namespace

at::Tensor tucker_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_core,
                             const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             bool relu) {
  check_common("tucker_conv2d", input, {w_first, w_core, w_last}, bias, stride, padding, dilation);
  check_tucker_shapes(w_first, w_core, w_last);
  const int64_t r1 = w_core.size(1), r2 = w_core.size(0), kh = w_core.size(2), kw = w_core.size(3);
  const cpu::Window g = cpu::make_window("tucker_conv2d", input, kh, kw, stride, padding, dilation);
  if (!cpu::fused_supported(input, r1, r2, w_last.size(0))) {
    return tucker_chain(input, w_first, w_core, w_last, bias, stride, padding, dilation, relu);
  }
  // Permuting the core to (R2, kh, kw, R1) makes the im2col contiguous copies, but costs a strided
  // pass over the whole core (R2*K) instead of strided im2col writes (pixels*K): worth it only when
  // the call has more output pixels than core rows.
  auto fused = [&] {
    const bool tap_major = r2 < input.size(0) * g.ho * g.wo;
    const at::Tensor core = tap_major ? w_core.permute({0, 2, 3, 1}).contiguous() : w_core.contiguous();
    at::Tensor out;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "tucker_conv2d_cpu", [&] {
      const cpu::TuckerCore<scalar_t> mid(r1, r2, core.data_ptr<scalar_t>(), g, tap_major, input.size(0) * g.ho * g.wo);
      out = cpu::run_fused<scalar_t>(input, w_first, w_last, bias, relu, g, mid);
    });
    return out;
  };
  auto chain = [&] { return tucker_chain(input, w_first, w_core, w_last, bias, stride, padding, dilation, relu); };
  return cpu::run_fastest("tucker_conv2d", input, {w_first, w_core, w_last}, bias, stride, padding, dilation, relu,
                          fused, chain);
}

}  // namespace mtd
