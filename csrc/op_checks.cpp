// The argument checks shared by the CPU and CUDA hosts (see op_checks.h).
#include "op_checks.h"

#include <algorithm>
#include <string>

namespace mtd {

namespace {
std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }
}  // namespace

void check_common(const char* op, const at::Tensor& x, at::TensorList weights,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(x.dim() == 4, "mtd.", op, ": input must be 4-D (N, C, H, W), got shape ", shape_str(x));
  for (const auto& w : weights) {
    TORCH_CHECK_VALUE(w.dim() == 4, "mtd.", op, ": every factor must be a 4-D conv weight, got shape ",
                      shape_str(w));
    TORCH_CHECK_VALUE(w.scalar_type() == x.scalar_type() && w.device() == x.device(), "mtd.", op,
                      ": factors must match the input's dtype and device (", x.scalar_type(), ", ", x.device(),
                      "), got ", w.scalar_type(), " on ", w.device());
  }
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(), "mtd.", op,
                      ": bias must match the input's dtype and device");
  }
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "mtd.", op,
                    ": stride, padding and dilation must be pairs");
  TORCH_CHECK_VALUE(std::min(stride[0], stride[1]) >= 1 && std::min(dilation[0], dilation[1]) >= 1 &&
                        std::min(padding[0], padding[1]) >= 0,
                    "mtd.", op, ": stride and dilation must be >= 1 and padding >= 0, got stride=", stride,
                    " padding=", padding, " dilation=", dilation);
  const at::Tensor& w_first = weights.front();
  const at::Tensor& w_last = weights.back();
  TORCH_CHECK_VALUE(w_first.size(2) == 1 && w_first.size(3) == 1 && w_last.size(2) == 1 && w_last.size(3) == 1,
                    "mtd.", op, ": the first and last factors must be 1x1 conv weights");
  TORCH_CHECK_VALUE(w_first.size(1) == x.size(1), "mtd.", op, ": input has ", x.size(1),
                    " channels but the first factor expects ", w_first.size(1));
  if (has_bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == w_last.size(0), "mtd.", op, ": bias must have shape (",
                      w_last.size(0), ",), got ", shape_str(*bias));
  }
}


void check_cp_shapes(const at::Tensor& w_first, const at::Tensor& w_dw, const at::Tensor& w_last) {
  const int64_t r = w_first.size(0);
  TORCH_CHECK_VALUE(w_dw.size(0) == r && w_dw.size(1) == 1 && w_last.size(1) == r,
                    "mtd.cp_conv2d: factor shapes do not chain: expected w_first (R, S, 1, 1), "
                    "w_depthwise (R, 1, kh, kw), w_last (T, R, 1, 1) with one R; got ",
                    w_first.sizes(), ", ", w_dw.sizes(), ", ", w_last.sizes());
}

void check_cp4_shapes(const at::Tensor& w_first, const at::Tensor& w_v, const at::Tensor& w_h,
                      const at::Tensor& w_last) {
  const int64_t r = w_first.size(0);
  const bool ok = w_v.size(0) == r && w_v.size(1) == 1 && w_v.size(3) == 1 && w_h.size(0) == r &&
                  w_h.size(1) == 1 && w_h.size(2) == 1 && w_last.size(1) == r;
  TORCH_CHECK_VALUE(ok,
                    "mtd.cp4_conv2d: factor shapes do not chain: expected w_first (R, S, 1, 1), "
                    "w_vertical (R, 1, kh, 1), w_horizontal (R, 1, 1, kw), w_last (T, R, 1, 1); got ",
                    w_first.sizes(), ", ", w_v.sizes(), ", ", w_h.sizes(), ", ", w_last.sizes());
}

void check_tucker_shapes(const at::Tensor& w_first, const at::Tensor& w_core, const at::Tensor& w_last) {
  TORCH_CHECK_VALUE(w_core.size(1) == w_first.size(0) && w_last.size(1) == w_core.size(0),
                    "mtd.tucker_conv2d: factor shapes do not chain: expected w_first (R1, S, 1, 1), "
                    "w_core (R2, R1, kh, kw), w_last (T, R2, 1, 1); got ",
                    w_first.sizes(), ", ", w_core.sizes(), ", ", w_last.sizes());
}

namespace {
bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

void check_like(const at::Tensor& x, const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type() && t.device() == x.device(), "mtd.rank_bridge: ", what,
                    " must match the input's dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                    t.scalar_type(), " on ", t.device());
}
}  // namespace

int64_t check_bridge(const at::Tensor& x, at::TensorList spatial, const std::optional<at::Tensor>& w_last,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_next,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(x.dim() == 4, "mtd.rank_bridge: input must be 4-D (N, C, H, W), got shape ", shape_str(x));
  TORCH_CHECK_VALUE(spatial.size() == 1 || spatial.size() == 2,
                    "mtd.rank_bridge: spatial must hold one factor (depthwise or dense core) or two (CP4 "
                    "vertical, horizontal), got ", spatial.size());
  for (const auto& w : spatial) {
    TORCH_CHECK_VALUE(w.dim() == 4, "mtd.rank_bridge: every factor must be a 4-D conv weight, got shape ",
                      shape_str(w));
    check_like(x, w, "factors");
  }
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "mtd.rank_bridge: stride, padding and dilation must be pairs");
  TORCH_CHECK_VALUE(std::min(stride[0], stride[1]) >= 1 && std::min(dilation[0], dilation[1]) >= 1 &&
                        std::min(padding[0], padding[1]) >= 0,
                    "mtd.rank_bridge: stride and dilation must be >= 1 and padding >= 0, got stride=", stride,
                    " padding=", padding, " dilation=", dilation);
  const int64_t c = x.size(1);
  int64_t r2 = 0;
  if (spatial.size() == 2) {
    const at::Tensor& v = spatial[0];
    const at::Tensor& h = spatial[1];
    TORCH_CHECK_VALUE(v.size(0) == c && v.size(1) == 1 && v.size(3) == 1 && h.size(0) == c && h.size(1) == 1 &&
                          h.size(2) == 1,
                      "mtd.rank_bridge: a CP4 pair must be (C, 1, kh, 1) and (C, 1, 1, kw) for the input's C = ", c,
                      " channels; got ", v.sizes(), ", ", h.sizes());
    r2 = c;
  } else {
    const at::Tensor& w = spatial[0];
    const bool dense = w.size(1) == c;
    const bool depthwise = w.size(1) == 1 && w.size(0) == c;
    TORCH_CHECK_VALUE(dense || depthwise, "mtd.rank_bridge: the spatial factor must be depthwise (C, 1, kh, kw) or "
                      "dense (R2, C, kh, kw) for the input's C = ", c, " channels; got ", w.sizes());
    r2 = w.size(0);
  }
  int64_t t = r2;
  if (given(w_last)) {
    check_like(x, *w_last, "w_last");
    TORCH_CHECK_VALUE(w_last->dim() == 4 && w_last->size(1) == r2 && w_last->size(2) == 1 && w_last->size(3) == 1,
                      "mtd.rank_bridge: w_last must be (T, ", r2, ", 1, 1), got ", shape_str(*w_last));
    t = w_last->size(0);
  }
  if (given(bias)) {
    check_like(x, *bias, "bias");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == t, "mtd.rank_bridge: bias must have shape (", t,
                      ",), got ", shape_str(*bias));
  }
  if (given(w_next)) {
    check_like(x, *w_next, "w_next");
    TORCH_CHECK_VALUE(w_next->dim() == 4 && w_next->size(1) == t && w_next->size(2) == 1 && w_next->size(3) == 1,
                      "mtd.rank_bridge: w_next must be (R, ", t, ", 1, 1), got ", shape_str(*w_next));
  }
  return r2;
}

int64_t conv_out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t num = size + 2 * p - d * (k - 1) - 1;
  return (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
}

std::pair<int64_t, int64_t> output_hw(const char* op, const at::Tensor& x, int64_t kh, int64_t kw,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const int64_t h = x.size(2), w = x.size(3);
  const int64_t ho = conv_out_size(h, kh, stride[0], padding[0], dilation[0]);
  const int64_t wo = conv_out_size(w, kw, stride[1], padding[1], dilation[1]);
  TORCH_CHECK_VALUE(ho >= 1 && wo >= 1, "mtd.", op, ": input of spatial size (", h, ", ", w,
                    ") is too small for this kernel (output would be ", ho, "x", wo, ")");
  return {ho, wo};
}

bool wants_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

}  // namespace mtd
