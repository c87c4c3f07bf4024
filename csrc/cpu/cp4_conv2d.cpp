// Fused CP4 conv on CPU: 1x1 (R,S) -> depthwise kh x 1 -> depthwise 1 x kw -> 1x1 (T,R) + bias [ReLU].
// Same pipeline as cp_conv2d; the middle stage is the vertical stencil into a (rows_out, W, R) buffer
// followed by the horizontal stencil into V, both vectorised over R and cache-resident.
#include "cpu/fused_pipeline.h"
#include "cpu/path_choice.h"
#include "op_checks.h"
#include "ops.h"

namespace mtd {
namespace {

template <typename T>
struct Cp4Separable {
  int64_t r1, r2;       // both R
  const T* w_v;         // (kh, R)
  const T* w_h;         // (kw, R)
  cpu::Window g;

  // the vertical stencil's output: (rows_out, W, R)
  int64_t extra_elems(int64_t rows_out) const { return rows_out * g.w * r1; }

  void run(const T* u, int64_t lo, int64_t rows_in, int64_t oh0, int64_t oh1, T* mid, T* v) const {
    separable(u, lo, rows_in, oh0, oh1, 0, r1, mid, v);
  }

  // whole map (H, W, R) -> (Ho, Wo, R), channels split into `blocks` parallel pieces
  void run_channel_split(const T* u, T* mid, T* v, int64_t blocks) const {
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto [c0, c1] = cpu::channel_block(r1, blocks, b);
        if (c0 < c1) separable(u, 0, g.h, 0, g.ho, c0, c1, mid, v);
      }
    });
  }

  // channels [c0, c1) of: U rows [lo, lo+rows_in) -> V rows [oh0, oh1), via mid (oh1-oh0, W, R)
  void separable(const T* u, int64_t lo, int64_t rows_in, int64_t oh0, int64_t oh1, int64_t c0, int64_t c1, T* mid,
                 T* v) const {
    const int64_t rows_out = oh1 - oh0, r = c1 - c0;
    // (rows_in, W, R) -> (rows_out, W, R): H part of stride/padding/dilation
    cpu::depthwise_chunk(u + c0, lo, rows_in, g.w, r, r1, g.kh, g.sh, g.ph, g.dh, 1, 1, 0, 1, g.w, oh0, oh1,
                         w_v + c0, mid + c0);
    // (rows_out, W, R) -> (rows_out, Wo, R): W part
    cpu::depthwise_chunk(mid + c0, 0, rows_out, g.w, r, r1, 1, 1, 0, 1, g.kw, g.sw, g.pw, g.dw, g.wo, 0, rows_out,
                         w_h + c0, v + c0);
  }
};

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
      const Cp4Separable<scalar_t> mid{r, r, w_v.data_ptr<scalar_t>(), w_h.data_ptr<scalar_t>(), g};
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
