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
namespace {

bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The layout rule of every op (op_checks.h): channels_last out iff the input is channels_last.
at::MemoryFormat out_layout(const at::Tensor& x) {
  return wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// 2x2 / stride 2 max-pool of `rows` (even) pixel rows of width wo, first c channels:
// src (rows, wo, ld_src) -> dst (rows/2, wo/2, ld_dst). dst may alias src (pooled pixel q reads only pixels >= q).
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
void max_pool(const float* s, int64_t r, int64_t wo, int64_t c, int64_t ls, float* d, int64_t ld) {
  pool_f(s, r, wo, c, ls, d, ld);
}
void max_pool(const double* s, int64_t r, int64_t wo, int64_t c, int64_t ls, double* d, int64_t ld) {
  pool_d(s, r, wo, c, ls, d, ld);
}

// Scratch budget of one task's V and H blocks: about a quarter of a 1-2 MiB L2, leaving room for the weights.
constexpr int64_t kTileBytes = 256 * 1024;
// Output pixels a task aims for: enough rows for the GEMMs to reach BLAS speed.
constexpr int64_t kTaskPixels = 256;

struct BridgeShape {
  int64_t n, t, r_out;  // images, layer i's output channels, output channels (R of layer i+1, or T)
  int64_t hp, wp;       // output map (pooled or not)
  bool pool;
};

template <typename T, typename Middle>
at::Tensor bridge_fused(const at::Tensor& input, const Middle& mid, const cpu::Window& g, const T* wl,
                        const T* bias, const T* wn, const BridgeShape& s, bool relu) {
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);  // (N, H, W, R1) pixel-major
  at::Tensor out = at::empty({s.n, s.r_out, s.hp, s.wp}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t r1 = mid.r1, r2 = mid.r2, t = s.t, rn = s.r_out;
  const int64_t step = s.pool ? 2 : 1;
  const int64_t rows_needed = s.pool ? 2 * s.hp : g.ho;  // an odd last row is dropped by the floor pool
  const int64_t threads = at::get_num_threads();

  // Tasks: row chunks of one image, or whole images (several per task) when an image is small.
  int64_t rpc = rows_needed, ipt = 1;
  const int64_t p_img = rows_needed * g.wo;
  if (p_img >= 2 * kTaskPixels) {
    rpc = std::max<int64_t>(step, kTaskPixels / g.wo / step * step);
    while (rpc > step && s.n * ((rows_needed + rpc - 1) / rpc) < 2 * threads) rpc -= step;
  } else {
    ipt = std::max<int64_t>(1, std::min<int64_t>((kTaskPixels + p_img - 1) / p_img, s.n / threads));
  }
  const int64_t cpi = (rows_needed + rpc - 1) / rpc;
  const int64_t tasks = ipt > 1 ? (s.n + ipt - 1) / ipt : s.n * cpi;
  const int64_t p_max = ipt * rpc * g.wo;  // spatial-stage pixels of a task
  // H chunk of Tc channels; the whole T when it is written straight into the output
  const bool direct = wn == nullptr && !s.pool && wl != nullptr;
  int64_t tc = t;
  if (!direct) {
    tc = std::min<int64_t>(t, std::max<int64_t>(16, kTileBytes / (p_max * int64_t(sizeof(T))) / 16 * 16));
  }
  auto round16 = [](int64_t e) { return (e + 15) & ~int64_t(15); };
  // The 1x1 factors W_last (T, R2) and W_next (R, T); `pixels`: how many rows each multiplies in this call.
  const int64_t pixels = s.n * rows_needed * g.wo;
  const cpu::Pointwise<T> last(wl, wl != nullptr ? t : 0, r2, pixels);
  const cpu::Pointwise<T> next(wn, wn != nullptr ? rn : 0, t, s.pool ? pixels / 4 : pixels);
  const int64_t v_elems = round16(p_max * r2), e_elems = round16(mid.extra_elems(rpc));
  const int64_t h_elems = wl != nullptr && !direct ? round16(p_max * tc) : 0;

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    T* v = cpu::thread_scratch<T>(v_elems + e_elems + h_elems + 16);
    T* extra = v + v_elems;
    T* hbuf = extra + e_elems;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t img = ipt > 1 ? task * ipt : task / cpi;
      const int64_t imgs = ipt > 1 ? std::min(ipt, s.n - img) : 1;
      const int64_t oh0 = ipt > 1 ? 0 : (task % cpi) * rpc;
      const int64_t oh1 = std::min(rows_needed, oh0 + rpc);
      if (oh0 >= oh1) continue;
      const int64_t lo = ipt > 1 ? 0 : g.rows_lo(oh0), hi = ipt > 1 ? g.h : g.rows_hi(oh1);
      const int64_t rows_in = std::max<int64_t>(0, hi - lo);
      const int64_t p_out = (oh1 - oh0) * g.wo, p = imgs * p_out;
      for (int64_t i = 0; i < imgs; ++i) {  // V (P, R2), image after image
        const T* u = xp + ((img + i) * g.h + lo) * g.w * r1;
        if (rows_in > 0) {
          mid.run(u, lo, rows_in, oh0, oh1, extra, v + i * p_out * r2);
        } else {
          std::fill(v + i * p_out * r2, v + (i + 1) * p_out * r2, T(0));
        }
      }
      // first output pixel of the task and its pixel count
      const int64_t o_pix = s.pool ? (img * s.hp + oh0 / 2) * s.wp : (img * g.ho + oh0) * g.wo;
      const int64_t p_o = s.pool ? imgs * ((oh1 - oh0) / 2) * s.wp : p;
      T* o = op + o_pix * rn;
      if (direct) {  // out (P, T) = relu(V W_last^T + bias): the tail of a run without pooling
        last(p, v, r2, o, t, bias, relu);
        continue;
      }
      for (int64_t c0 = 0; c0 < t; c0 += tc) {
        const int64_t c1 = std::min(t, c0 + tc), cw = c1 - c0;
        T* h = hbuf;  // (P, cw) row-major
        int64_t ld_h = cw;
        if (wl != nullptr) {  // H (P, cw) = relu(V W_last[c0:c1]^T + bias), the epilogue in registers
          last(p, v, r2, h, cw, c0, c1, false, bias, relu);
        } else {  // V already is the layer's output: its columns [c0, c1)
          h = v + c0;
          ld_h = r2;
          cpu::epilogue(h, p, cw, ld_h, true, bias != nullptr ? bias + c0 : nullptr, relu);
        }
        if (wn == nullptr) {  // the T channels are the output: pool (or copy) into it
          if (s.pool) {
            max_pool(h, imgs * (oh1 - oh0), g.wo, cw, ld_h, o + c0, t);
          } else {
            for (int64_t q = 0; q < p; ++q) std::copy(h + q * ld_h, h + q * ld_h + cw, o + q * t + c0);
          }
          continue;
        }
        if (s.pool) max_pool(h, imgs * (oh1 - oh0), g.wo, cw, ld_h, h, ld_h);  // in place, (P/4, cw)
        // out (P_o, R) += H (P_o, cw) W_next[:, c0:c1]^T
        next.k_block(p_o, h, ld_h, o, rn, c0, c1, c0 > 0);
      }
    }
  });
  return out;
}

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

}  // namespace

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
  const BridgeShape s{input.size(0), t, given(w_next) ? w_next->size(0) : t, pool ? g.ho / 2 : g.ho,
                      pool ? g.wo / 2 : g.wo, pool};
  auto chain = [&] { return bridge_chain(input, spatial, w_last, bias, w_next, stride, padding, dilation, relu, pool); };
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
      const scalar_t* wlp = wl.defined() ? wl.data_ptr<scalar_t>() : nullptr;
      const scalar_t* wnp = wn.defined() ? wn.data_ptr<scalar_t>() : nullptr;
      const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
      if (cp4) {
        const cpu::Cp4Separable<scalar_t> mid{r1, r1, w_a.data_ptr<scalar_t>(), w_b.data_ptr<scalar_t>(), g};
        out = bridge_fused<scalar_t>(input, mid, g, wlp, bp, wnp, s, relu);
      } else if (depthwise) {
        const cpu::CpDepthwise<scalar_t> mid{r1, r1, w_a.data_ptr<scalar_t>(), g};
        out = bridge_fused<scalar_t>(input, mid, g, wlp, bp, wnp, s, relu);
      } else {
        const cpu::TuckerCore<scalar_t> mid(r1, r2, w_a.data_ptr<scalar_t>(), g, tap_major, input.size(0) * g.ho * g.wo);
        out = bridge_fused<scalar_t>(input, mid, g, wlp, bp, wnp, s, relu);
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
