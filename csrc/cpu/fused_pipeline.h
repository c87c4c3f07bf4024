// The fused pipeline shared by the CPU kernels (cp_conv2d, cp4_conv2d, tucker_conv2d).
//
// Every op is "1x1 conv S->R1, a spatial middle stage R1->R2, 1x1 conv R2->T (+bias, ReLU)". The
// driver `run_fused` tiles the output into tasks = (image, chunk of output rows) and, per task, keeps
// the rank-R intermediates of that chunk in a thread-local scratch buffer (sized to stay in L2):
//
//   U (rows_in, W, R1)   = first 1x1 conv of the input rows the chunk needs     (one GEMM)
//   V (rows_out*Wo, R2)  = middle stage of U                                     (op specific)
//   out tile             = last 1x1 conv of V, written in place, + bias, ReLU     (one GEMM)
//
// Intermediates are pixel-major (channels innermost) so the depthwise stencils vectorise over R.
// Two variants of the task split (plan_tiling picks): several tiny images per task (GEMMs stay big
// enough for MKL), and, for fewer images than threads on small maps, stage-by-stage channel splits.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/fused_common.h"
#include "cpu/pointwise.h"

namespace mtd {
namespace cpu {

// How the work is split into tasks.
struct Tiling {
  int64_t rows_per_chunk;    // output rows per task
  int64_t chunks_per_image;  // tasks per image (1: whole images)
  int64_t images_per_task;   // whole images per task (> 1 only for tiny images)
  bool channel_split;        // few tiny images: each stage parallel over channels instead of rows
};

// Chunks small enough that a task's working set stays in L2, and enough tasks for all threads.
Tiling plan_tiling(int64_t n, const Window& g, int64_t elem_size, int64_t in_elems_per_row,
                   int64_t scratch_elems_per_out_row, int64_t out_elems_per_row);

// Channel-split path for fewer images than threads on small maps (where row chunks would recompute
// most of the first 1x1 conv as halo and read every weight on every thread): per image, each stage
// runs over the whole map with its channels split across threads (U and V stay in L2).
template <typename T, typename Middle>
void run_channel_split(const T* xp, int64_t n, int64_t s, bool nhwc, const T* wfp, const T* wlp, const T* bp,
                       bool relu, int64_t t, const Window& g, const Middle& mid, T* op) {
  const Pointwise<T> first(wfp, mid.r1, s, nhwc ? n * g.h * g.w : 0), last(wlp, t, mid.r2, nhwc ? n * g.ho * g.wo : 0);
  const int64_t r1 = mid.r1, r2 = mid.r2, p_in = g.h * g.w, p_out = g.ho * g.wo;
  const int64_t u_elems = (p_in * r1 + 15) & ~int64_t(15), v_elems = (p_out * r2 + 15) & ~int64_t(15);
  T* u = thread_scratch<T>(u_elems + v_elems + mid.extra_elems(g.ho) + 16);
  T* v = u + u_elems;
  T* extra = v + v_elems;
  const int64_t blocks = at::get_num_threads();
  for (int64_t img = 0; img < n; ++img) {
    // U (P_in, r1), channel block [c0, c1): column-major U(c0:c1, P) = Wf(c0:c1, s) X(s, P)
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto [c0, c1] = channel_block(r1, blocks, b);
        if (nhwc) {
          first(p_in, xp + img * p_in * s, s, u + c0, r1, c0, c1, false, nullptr, false);
        } else {
          gemm(true, true, c1 - c0, p_in, s, wfp + c0 * s, s, xp + img * s * p_in, p_in, u + c0, r1);
        }
      }
    });
    mid.run_channel_split(u, extra, v, blocks);  // V (P_out, r2)
    // output, block [c0, c1) of the T channels
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto [c0, c1] = channel_block(t, blocks, b);
        if (c0 >= c1) continue;
        const T* bb = bp != nullptr ? bp + c0 : nullptr;
        if (nhwc) {
          last(p_out, v, r2, op + img * p_out * t + c0, t, c0, c1, false, bp, relu);
        } else {
          T* c = op + (img * t + c0) * p_out;
          gemm(true, false, p_out, c1 - c0, r2, v, r2, wlp + c0 * r2, r2, c, p_out);
          epilogue(c, p_out, c1 - c0, p_out, false, bb, relu);
        }
      }
    });
  }
}

// The fused pipeline. `Middle` is one of the stages of cpu/middle_stages.h (its interface is described there).
template <typename T, typename Middle>
at::Tensor run_fused(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_last,
                     const std::optional<at::Tensor>& bias, bool relu, const Window& g, const Middle& mid) {
  const bool nhwc = wants_channels_last(input);
  // Non-contiguous views that are neither layout are made NCHW-contiguous (the output is then NCHW).
  const at::Tensor x = nhwc ? input : input.contiguous();
  const at::Tensor wf = w_first.contiguous();  // (R1, S) row-major
  const at::Tensor wl = w_last.contiguous();   // (T, R2) row-major
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->contiguous();

  const int64_t n = x.size(0), s = x.size(1), t = wl.size(0);
  const int64_t r1 = mid.r1, r2 = mid.r2;
  const int64_t h = g.h, w = g.w, ho = g.ho, wo = g.wo;
  at::Tensor out = at::empty({n, t, ho, wo}, x.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                                             : at::MemoryFormat::Contiguous));
  const T* xp = x.data_ptr<T>();
  const T* wfp = wf.data_ptr<T>();
  const T* wlp = wl.data_ptr<T>();
  const T* bp = b.defined() ? b.data_ptr<T>() : nullptr;
  T* op = out.data_ptr<T>();

  // Per output row: U rows (w*r1 each, counted via the halo), V (wo*r2), the output tile (wo*t).
  const Tiling tl = plan_tiling(n, g, sizeof(T), w * r1, wo * r2 + mid.extra_elems(1), wo * t);
  if (tl.channel_split) {
    run_channel_split(xp, n, s, nhwc, wfp, wlp, bp, relu, t, g, mid, op);
    return out;
  }
  const int64_t rpc = tl.rows_per_chunk, cpi = tl.chunks_per_image, ipt = tl.images_per_task;
  // U of one chunk; whole images when grouped (all h rows, so the group's rows are one matrix)
  const int64_t u_img = (ipt > 1 ? h : g.max_rows_in(rpc)) * w * r1;
  const int64_t v_img = rpc * wo * r2;
  auto round16 = [](int64_t e) { return (e + 15) & ~int64_t(15); };
  const int64_t u_elems = round16(ipt * u_img), v_elems = round16(ipt * v_img);
  const int64_t e_elems = round16(mid.extra_elems(rpc));
  // NCHW image groups go through channels_last staging copies of their input and output tiles
  const bool staged = !nhwc && ipt > 1;
  const int64_t xs_elems = staged ? round16(ipt * h * w * s) : 0;
  const int64_t os_elems = staged ? round16(ipt * ho * wo * t) : 0;
  const int64_t tasks = ipt > 1 ? (n + ipt - 1) / ipt : n * cpi;
  // the 1x1 products of the pixel-major paths (NCHW row chunks multiply with transposed BLAS calls instead)
  const bool pixel_major = nhwc || staged;
  const Pointwise<T> first(wfp, r1, s, pixel_major ? n * h * w : 0), last(wlp, t, r2, pixel_major ? n * ho * wo : 0);

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    T* u = thread_scratch<T>(u_elems + v_elems + e_elems + xs_elems + os_elems + 16);
    T* v = u + u_elems;
    T* extra = v + v_elems;
    T* x_stage = extra + e_elems;
    T* o_stage = x_stage + xs_elems;
    for (int64_t task = begin; task < end; ++task) {
      // task = images [img, img + imgs), output rows [oh0, oh1) of each
      const int64_t img = ipt > 1 ? task * ipt : task / cpi;
      const int64_t imgs = ipt > 1 ? std::min(ipt, n - img) : 1;
      const int64_t oh0 = ipt > 1 ? 0 : (task % cpi) * rpc;
      const int64_t oh1 = std::min(ho, oh0 + rpc);
      if (oh0 >= oh1) continue;
      const int64_t lo = ipt > 1 ? 0 : g.rows_lo(oh0), hi = ipt > 1 ? h : g.rows_hi(oh1);
      const int64_t rows_in = std::max<int64_t>(0, hi - lo);
      const int64_t p_in = rows_in * w, p_out = (oh1 - oh0) * wo;
      // U (rows_in*w, r1) = X_rows (rows_in*w, s) * Wf^T, i.e. column-major U(r1, P) = Wf(r1,s) X(s,P)
      if (rows_in > 0) {
        if (nhwc) {  // consecutive images are consecutive rows: one GEMM for the whole group
          const T* xr = xp + ((img * h + lo) * w) * s;  // (imgs*P, s) row-major
          first(imgs * p_in, xr, s, u, r1, nullptr, false);
        } else if (staged) {  // whole tiny images (rows_in == h): (imgs, s, P) -> (imgs*P, s)
          const T* xr = xp + img * s * h * w;
          for (int64_t i = 0; i < imgs; ++i)
            for (int64_t c = 0; c < s; ++c)
              for (int64_t q = 0; q < p_in; ++q) x_stage[(i * p_in + q) * s + c] = xr[(i * s + c) * p_in + q];
          first(imgs * p_in, x_stage, s, u, r1, nullptr, false);
        } else {
          const T* xr = xp + img * s * h * w + lo * w;  // (s, P) with leading dim h*w
          gemm(true, true, r1, p_in, s, wfp, s, xr, h * w, u, r1);
        }
      }
      for (int64_t i = 0; i < imgs; ++i) {
        mid.run(u + i * p_in * r1, lo, rows_in, oh0, oh1, extra, v + i * p_out * r2);  // V (P, r2)
      }
      if (nhwc || staged) {
        // (imgs*P, t) row-major = column-major (t, imgs*P)
        T* c = nhwc ? op + ((img * ho + oh0) * wo) * t : o_stage;
        last(imgs * p_out, v, r2, c, t, bp, relu);
        if (staged) {  // (imgs*P, t) -> (imgs, t, P)
          T* oc = op + img * t * p_out;
          for (int64_t i = 0; i < imgs; ++i)
            for (int64_t j = 0; j < t; ++j)
              for (int64_t q = 0; q < p_out; ++q) oc[(i * t + j) * p_out + q] = c[(i * p_out + q) * t + j];
        }
      } else {
        T* c = op + img * t * ho * wo + oh0 * wo;  // (t, P) with leading dim ho*wo = column-major (P, t)
        gemm(true, false, p_out, t, r2, v, r2, wlp, r2, c, ho * wo);
        epilogue(c, p_out, t, ho * wo, false, bp, relu);
      }
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace mtd
