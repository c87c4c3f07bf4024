// Declarations of the kernels behind torch.ops.mtd.* (schemas live in mtd_kernels/ops/*.py).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <memory>
#include <tuple>
#include <vector>

namespace mtd {

// CP3: 1x1 (R,S,1,1) -> depthwise (R,1,kh,kw) -> 1x1 (T,R,1,1) + bias [ReLU]
at::Tensor cp_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_depthwise,
                         const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu);

// CP4: 1x1 -> depthwise (R,1,kh,1) -> depthwise (R,1,1,kw) -> 1x1 + bias [ReLU]
at::Tensor cp4_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_vertical,
                          const at::Tensor& w_horizontal, const at::Tensor& w_last,
                          const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool relu);

// Tucker-2: 1x1 (R1,S,1,1) -> dense core (R2,R1,kh,kw) -> 1x1 (T,R2,1,1) + bias [ReLU]
at::Tensor tucker_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_core,
                             const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             bool relu);

// Rank space: layer i's spatial factor(s) -> its last 1x1 + bias [ReLU] [2x2 max-pool] -> layer i+1's first 1x1
at::Tensor rank_bridge_cpu(const at::Tensor& input, at::TensorList spatial, const std::optional<at::Tensor>& w_last,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_next,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                           bool pool);

// A run of rank bridges in one call: weights and meta as mtd_kernels/ops/rank_run.py describes them; `packed`
// from rank_run_pack(weights, meta) (empty: packed during the call).
at::Tensor rank_run_cpu(const at::Tensor& input, at::TensorList weights, at::IntArrayRef meta, at::TensorList packed);
std::vector<at::Tensor> rank_run_pack(at::TensorList weights, at::IntArrayRef meta);

// rank_run's CPU kernel bound to its weights, split and packed once: what RankSpaceRun calls at inference without
// autograd, so that a batch-1 call pays neither the dispatcher's conversion of every weight and meta entry nor
// the per-call split and checks of the packed list. Not an op: traced, compiled and exported calls use rank_run.
class RankRunPlan {
 public:
  RankRunPlan(std::vector<at::Tensor> weights, const std::vector<int64_t>& meta);
  // True when `weights` are the very tensors packed, none changed since (in place: version counter; cast or
  // moved: data pointer and dtype).
  bool packed_from(const std::vector<at::Tensor>& weights) const;
  // The packed factors, as rank_run takes them (for its autograd and autocast calls).
  const std::vector<at::Tensor>& packed() const;
  // rank_run(input, weights, meta, packed) without autograd; ValueError if a weight changed since packing.
  at::Tensor operator()(const at::Tensor& input) const;

 private:
  struct Bridges;  // cpu::Bridge list and packed factors (rank_run.cpp)
  struct Stamp {
    int64_t version;
    const void* data;
    at::ScalarType dtype;
  };
  bool unchanged(size_t i, const at::Tensor& w) const;
  std::vector<at::Tensor> weights_;
  std::vector<Stamp> stamps_;
  std::shared_ptr<const Bridges> bridges_;
};

// Training-mode BatchNorm (batch statistics) -> ReLU [-> 2x2 max-pool]: (output, batch mean, biased batch variance)
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                            const at::Tensor& bias, double eps, bool pool);
// Its gradient: (grad input, grad weight, grad bias) from the forward's input and statistics
std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                                                     const at::Tensor& weight, const at::Tensor& bias,
                                                                     const at::Tensor& mean, const at::Tensor& var,
                                                                     double eps, bool pool);

#ifdef MTD_WITH_CUDA
at::Tensor cp_conv2d_cuda(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_depthwise,
                          const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu);
at::Tensor cp4_conv2d_cuda(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_vertical,
                           const at::Tensor& w_horizontal, const at::Tensor& w_last,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, bool relu);
at::Tensor tucker_conv2d_cuda(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_core,
                              const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              bool relu);
#endif

}  // namespace mtd
