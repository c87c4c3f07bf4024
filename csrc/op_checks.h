// The argument checks every backend of torch.ops.mtd.* runs (CPU and CUDA hosts alike), with the
// same conditions and messages as mtd_kernels/ops/_chain.py and the op files there. Every failure is
// a c10::ValueError (Python ValueError).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace mtd {

// Dims, dtypes/devices, geometry, 1x1 first/last factors, input channels and bias shape.
void check_common(const char* op, const at::Tensor& x, at::TensorList weights,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation);

// That the factors chain: (R,S,1,1) -> middle -> (T,R,1,1), per op.
void check_cp_shapes(const at::Tensor& w_first, const at::Tensor& w_depthwise, const at::Tensor& w_last);
void check_cp4_shapes(const at::Tensor& w_first, const at::Tensor& w_vertical, const at::Tensor& w_horizontal,
                      const at::Tensor& w_last);
void check_tucker_shapes(const at::Tensor& w_first, const at::Tensor& w_core, const at::Tensor& w_last);

// rank_bridge: the spatial stage's kind (depthwise, CP4 pair or dense/Tucker core), w_last, bias and w_next
// chain onto the input's channels; the geometry is valid. Returns the channels leaving the spatial stage.
int64_t check_bridge(const at::Tensor& x, at::TensorList spatial, const std::optional<at::Tensor>& w_last,
                     const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_next,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);

// floor((size + 2p - d(k-1) - 1) / s) + 1, flooring a negative numerator like torch and Python do
// (truncating would turn an input smaller than the kernel into a 1-pixel output).
int64_t conv_out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d);

// (Ho, Wo) of the spatial stage; ValueError when the input is too small for the kernel.
std::pair<int64_t, int64_t> output_hw(const char* op, const at::Tensor& x, int64_t kh, int64_t kw,
                                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);

// The layout rule of every implementation: channels_last out iff the input is channels_last-contiguous
// and not (also) plain contiguous.
bool wants_channels_last(const at::Tensor& x);

}  // namespace mtd
