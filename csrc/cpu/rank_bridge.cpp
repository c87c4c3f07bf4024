// The cross-layer CPU kernel of rank space: from layer i's R1-channel map u (the output of its first 1x1
// factor) to layer i+1's R-channel map, without the T-channel map between them ever reaching memory:
//
//   V (P, R2)   = spatial stage of u (depthwise, CP4 pair, or a dense/Tucker core; cpu/middle_stages.h)
//   H (P, Tc)   = relu(V * W_last[Tc chunk]^T + bias)      one chunk of layer i's T output channels
//   Hp          = 2x2 max-pool of H (optional; exact after bias and ReLU, which are per channel)
//   out (Pp, R) += Hp * W_next[:, Tc chunk]^T             layer i+1's first 1x1, accumulated over chunks
//
// per task = (image, chunk of output rows), or several whole images when the maps are tiny, so only a
// (pixels x Tc) block of layer i's output exists at a time, in the task's L2 scratch (flash attention
// chunks its keys the same way). Without w_last the spatial stage is the layer (a dense conv: V is H);
// without w_next the output is the (pooled) T-channel map itself (the tail of a rank-space run).
// The unfused oneDNN chain of the same stages is the other path; run_fastest picks per shape.
#include "cpu/bridge_kernel.h"
#include "cpu/fused_common.h"
#include "cpu/middle_stages.h"
#include "cpu/path_choice.h"
#include "cpu/pointwise.h"
#include "op_checks.h"
#include "ops.h"

#include <algorithm>
#include <string>
#include <vector>

namespace mtd {
namespace cpu {

namespace {
template <typename T>
void max_pool_rows(const T* src, int64_t rows, int64_t wo, int64_t c, int64_t ld_src, T* dst, int64_t ld_dst) {
  const int64_t wp = wo / 2;
  for (int64_t pr = 0; pr < rows / 2; ++pr) {
    for (int64_t pc = 0; pc < wp; ++pc) {
      const T* a = src + ((2 * pr) * wo + 2 * pc) * ld_src;
      const T* b = a + ld_src;
      const T* d = a + wo * ld_src;
      const T* e = d + ld_src;
      T* o = dst + (pr * wp + pc) * ld_dst;
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) {
        const T m1 = a[j] > b[j] ? a[j] : b[j];
        const T m2 = d[j] > e[j] ? d[j] : e[j];
        o[j] = m1 > m2 ? m1 : m2;
      }
    }
  }
}

MTD_ISA_CLONES void pool_f(const float* s, int64_t r, int64_t wo, int64_t c, int64_t ls, float* d, int64_t ld) {
  max_pool_rows(s, r, wo, c, ls, d, ld);
}
MTD_ISA_CLONES void pool_d(const double* s, int64_t r, int64_t wo, int64_t c, int64_t ls, double* d, int64_t ld) {
  max_pool_rows(s, r, wo, c, ls, d, ld);
}
}  // namespace

void max_pool(const float* s, int64_t r, int64_t wo, int64_t c, int64_t ls, float* d, int64_t ld) {
  pool_f(s, r, wo, c, ls, d, ld);
}
void max_pool(const double* s, int64_t r, int64_t wo, int64_t c, int64_t ls, double* d, int64_t ld) {
  pool_d(s, r, wo, c, ls, d, ld);
}


}  // namespace cpu

namespace {

bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The layout rule of every op (op_checks.h): channels_last out iff the input is channels_last.
at::MemoryFormat out_layout(const at::Tensor& x) {
  return wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace

namespace cpu {

// The same stages as ATen ops (oneDNN convolutions, ReLU, max-pool): the other path of run_fastest.
at::Tensor bridge_chain(const at::Tensor& input, at::TensorList spatial, const std::optional<at::Tensor>& w_last,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_next,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                        bool pool) {
  const int64_t c = input.size(1);
  const std::optional<at::Tensor> no_bias;
  const bool last = given(w_last);
  at::Tensor y;
  if (spatial.size() == 2) {
    y = at::conv2d(input, spatial[0], {}, at::IntArrayRef({stride[0], 1}), at::IntArrayRef({padding[0], 0}),
                   at::IntArrayRef({dilation[0], 1}), c);
    y = at::conv2d(y, spatial[1], last ? no_bias : bias, at::IntArrayRef({1, stride[1]}),
                   at::IntArrayRef({0, padding[1]}), at::IntArrayRef({1, dilation[1]}), c);
  } else {
    const int64_t groups = spatial[0].size(1) == c ? 1 : c;
    y = at::conv2d(input, spatial[0], last ? no_bias : bias, stride, padding, dilation, groups);
  }
  if (last) y = at::conv2d(y, *w_last, bias);
  if (relu) y.relu_();
  if (pool) y = at::max_pool2d(y, {2, 2}, {2, 2});
  if (given(w_next)) y = at::conv2d(y, *w_next);
  return y.contiguous(out_layout(input));
}

}  // namespace cpu

at::Tensor rank_bridge_cpu(const at::Tensor& input, at::TensorList spatial, const std::optional<at::Tensor>& w_last,
                           const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_next,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                           bool pool) {
  const int64_t r2 = check_bridge(input, spatial, w_last, bias, w_next, stride, padding, dilation);
  const bool cp4 = spatial.size() == 2;
  const int64_t kh = spatial[0].size(2), kw = cp4 ? spatial[1].size(3) : spatial[0].size(3);
  const cpu::Window g = cpu::make_window("rank_bridge", input, kh, kw, stride, padding, dilation);
  TORCH_CHECK_VALUE(!pool || (g.ho >= 2 && g.wo >= 2), "mtd.rank_bridge: the ", g.ho, "x", g.wo,
                    " map is too small for the 2x2 max-pool");
  const int64_t r1 = input.size(1);
  const int64_t t = given(w_last) ? w_last->size(0) : r2;
  const cpu::BridgeShape s{input.size(0), t, given(w_next) ? w_next->size(0) : t, pool ? g.ho / 2 : g.ho,
                           pool ? g.wo / 2 : g.wo, pool};
  auto chain = [&] {
    return cpu::bridge_chain(input, spatial, w_last, bias, w_next, stride, padding, dilation, relu, pool);
  };
  if (!cpu::fused_supported(input, r1, r2, t)) return chain();

  auto fused = [&] {
    const at::Tensor wl = given(w_last) ? w_last->contiguous() : at::Tensor();    // (T, R2)
    const at::Tensor wn = given(w_next) ? w_next->contiguous() : at::Tensor();    // (R, T)
    const at::Tensor b = given(bias) ? bias->contiguous() : at::Tensor();
    const bool depthwise = !cp4 && spatial[0].size(1) == 1 && r1 > 1;
    const bool tap_major = !cp4 && !depthwise && r2 < input.size(0) * g.ho * g.wo;  // as tucker_conv2d decides
    at::Tensor w_a, w_b;
    if (cp4) {
      w_a = spatial[0].reshape({r1, kh}).t().contiguous();  // (kh, R)
      w_b = spatial[1].reshape({r1, kw}).t().contiguous();  // (kw, R)
    } else if (depthwise) {
      w_a = spatial[0].reshape({r1, kh * kw}).t().contiguous();  // (kh*kw, R)
    } else {
      w_a = tap_major ? spatial[0].permute({0, 2, 3, 1}).contiguous() : spatial[0].contiguous();
    }
    at::Tensor out;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rank_bridge_cpu", [&] {
      // The 1x1 factors W_last (T, R2) and W_next (R, T); `pixels`: how many rows each multiplies in this call.
      const int64_t pixels = s.n * (pool ? 2 * s.hp : g.ho) * g.wo;
      const cpu::Pointwise<scalar_t> last(wl.defined() ? wl.data_ptr<scalar_t>() : nullptr, wl.defined() ? t : 0, r2,
                                          pixels);
      const cpu::Pointwise<scalar_t> next(wn.defined() ? wn.data_ptr<scalar_t>() : nullptr, wn.defined() ? s.r_out : 0,
                                          t, pool ? pixels / 4 : pixels);
      const cpu::Pointwise<scalar_t>* lp = wl.defined() ? &last : nullptr;
      const cpu::Pointwise<scalar_t>* np = wn.defined() ? &next : nullptr;
      const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
      if (cp4) {
        const cpu::Cp4Separable<scalar_t> mid{r1, r1, w_a.data_ptr<scalar_t>(), w_b.data_ptr<scalar_t>(), g};
        out = cpu::bridge_fused<scalar_t>(input, mid, g, lp, bp, np, s, relu);
      } else if (depthwise) {
        const cpu::CpDepthwise<scalar_t> mid{r1, r1, w_a.data_ptr<scalar_t>(), g};
        out = cpu::bridge_fused<scalar_t>(input, mid, g, lp, bp, np, s, relu);
      } else {
        const cpu::TuckerCore<scalar_t> mid(r1, r2, w_a.data_ptr<scalar_t>(), g, tap_major, input.size(0) * g.ho * g.wo);
        out = cpu::bridge_fused<scalar_t>(input, mid, g, lp, bp, np, s, relu);
      }
    });
    return out.contiguous(out_layout(input));
  };
  // The cache key: the op with what it includes, and every factor's size.
  const std::string op = std::string("rank_bridge") + (given(w_last) ? "+last" : "") + (given(w_next) ? "+next" : "") +
                         (pool ? "+pool" : "");
  std::vector<at::Tensor> weights(spatial.begin(), spatial.end());
  if (given(w_last)) weights.push_back(*w_last);
  if (given(w_next)) weights.push_back(*w_next);
  return cpu::run_fastest(op.c_str(), input, weights, bias, stride, padding, dilation, relu, fused, chain);
}

}  // namespace mtd
