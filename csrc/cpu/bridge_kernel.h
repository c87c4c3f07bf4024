// The fused kernel of one rank-space bridge (see rank_bridge.cpp for the stages), shared by the op
// torch.ops.mtd.rank_bridge (one bridge per call) and torch.ops.mtd.rank_run (a whole run of bridges per call,
// its 1x1 factors packed once). The 1x1 factors come in as cpu::Pointwise products: packed per call or prepacked.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "cpu/fused_common.h"
#include "cpu/pointwise.h"

namespace mtd {
namespace cpu {

// 2x2 / stride 2 max-pool of `rows` (even) pixel rows of width wo, first c channels:
// src (rows, wo, ld_src) -> dst (rows/2, wo/2, ld_dst). dst may alias src (pooled pixel q reads only pixels >= q).
void max_pool(const float* s, int64_t rows, int64_t wo, int64_t c, int64_t ld_src, float* d, int64_t ld_dst);
void max_pool(const double* s, int64_t rows, int64_t wo, int64_t c, int64_t ld_src, double* d, int64_t ld_dst);

// The same stages as ATen ops (oneDNN convolutions, ReLU, max-pool): the other path, and the one for dtypes
// the fused kernel lacks.
at::Tensor bridge_chain(const at::Tensor& input, at::TensorList spatial, const std::optional<at::Tensor>& w_last,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_next,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                        bool pool);

// Scratch budget of one task's V and H blocks: about a quarter of a 1-2 MiB L2, leaving room for the weights.
constexpr int64_t kTileBytes = 256 * 1024;
// Output pixels a task aims for: enough rows for the GEMMs to reach BLAS speed.
constexpr int64_t kTaskPixels = 256;

struct BridgeShape {
  int64_t n, t, r_out;  // images, layer i's output channels, output channels (R of layer i+1, or T)
  int64_t hp, wp;       // output map (pooled or not)
  bool pool;
};

// at::parallel_for over [begin, end) on `threads` threads; inline when one thread (a bridge too small to pay
// for a parallel region: at batch 1 a region's start-up and join cost more than a 2x2 map's arithmetic).
template <typename F>
void for_tasks(int64_t threads, int64_t begin, int64_t end, const F& f) {
  if (threads <= 1) {
    if (begin < end) f(begin, end);
  } else {
    at::parallel_for(begin, end, 1, f);
  }
}

// One stage of work inside a parallel region: its tasks claimed one at a time by whichever thread of the region is
// free, and no thread leaves before every task has finished (the next stage reads what this one wrote). Several
// stages in one region cost one region's start-up and join instead of one per stage -- at batch 1, a few
// microseconds against stages of a few microseconds -- and any number of threads finishes them, one included.
struct StageCounter {
  std::atomic<int64_t> next{0}, done{0};
};

template <typename F>
void run_stage(StageCounter& c, int64_t tasks, const F& f) {
  struct Done {  // counted even if f throws (say, out of memory), so that no other thread waits for it forever
    StageCounter& c;
    ~Done() { c.done.fetch_add(1, std::memory_order_release); }
  };
  for (int64_t i = c.next.fetch_add(1, std::memory_order_relaxed); i < tasks;
       i = c.next.fetch_add(1, std::memory_order_relaxed)) {
    Done done{c};
    f(i, i + 1);
  }
  for (int spins = 0; c.done.load(std::memory_order_acquire) < tasks; ++spins) {
    if (spins > 4096) std::this_thread::yield();  // the other thread was descheduled: give it the core
  }
}

// Fewer tasks than threads (batch 1 on a map of at most 16x16: one task an image): instead of leaving threads idle,
// the bridge runs as three parallel stages over all its pixels, each split where it is widest: the spatial stage
// over output rows, H = relu(V W_last^T + b) and its pooling over T, and the product with W_next over R.
// x: the input (N, H, W, R1) pixel-major; out: (N, Hp, Wp, R) pixel-major.
template <typename T, typename Middle>
void bridge_wide(const T* xp, T* op, const Middle& mid, const Window& g, const Pointwise<T>* last, const T* bias,
                 const Pointwise<T>* next, const BridgeShape& s, bool relu, int64_t threads) {
  const int64_t r1 = mid.r1, r2 = mid.r2, t = s.t, rn = s.r_out;
  const int64_t rows = s.pool ? 2 * s.hp : g.ho;  // output rows of the spatial stage (an odd last row is dropped)
  const int64_t p_img = rows * g.wo, p = s.n * p_img, p_o = s.n * s.hp * s.wp;
  const bool h_out = next == nullptr && !s.pool;  // H is the output itself
  // V (P, R2) and H (P, T) of every pixel; the pooled H (P_o, T) goes in place over H
  thread_local std::vector<T> buf;
  const int64_t v_elems = (p * r2 + 15) & ~int64_t(15), h_elems = last != nullptr && !h_out ? p * t : 0;
  if (static_cast<int64_t>(buf.size()) < v_elems + h_elems) buf.resize(v_elems + h_elems);
  T* v = buf.data();
  T* h = last == nullptr ? v : h_out ? op : v + v_elems;
  const int64_t ld_h = last == nullptr ? r2 : t;

  // 1. V: the spatial stage, output rows split over the threads (per image)
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows, (threads + s.n - 1) / s.n));
  const int64_t rpc = (rows + chunks - 1) / chunks;
  auto spatial = [&](int64_t begin, int64_t end) {
    T* extra = thread_scratch<T>(mid.extra_elems(rpc) + 16);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t img = task / chunks, oh0 = (task % chunks) * rpc, oh1 = std::min(rows, oh0 + rpc);
      if (oh0 >= oh1) continue;
      const int64_t lo = g.rows_lo(oh0), rows_in = std::max<int64_t>(0, g.rows_hi(oh1) - lo);
      T* vt = v + (img * p_img + oh0 * g.wo) * r2;
      if (rows_in > 0) {
        mid.run(xp + (img * g.h + lo) * g.w * r1, lo, rows_in, oh0, oh1, extra, vt);
      } else {
        std::fill(vt, vt + (oh1 - oh0) * g.wo * r2, T(0));
      }
    }
  };
  // 2. H = relu(V W_last^T + bias) (or V's own epilogue), then the 2x2 pool: T split over the threads
  T* pooled = next == nullptr ? op : h;  // (P_o, T): the output, or H's own first rows
  const int64_t ld_pooled = next == nullptr ? rn : ld_h;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(threads, (t + 15) / 16));
  auto middle = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const auto [c0, c1] = channel_block(t, blocks, b);
      if (c0 >= c1) continue;
      if (last != nullptr) {
        (*last)(p, v, r2, h + c0, ld_h, c0, c1, false, bias, relu);
      } else {
        epilogue(h + c0, p, c1 - c0, ld_h, true, bias != nullptr ? bias + c0 : nullptr, relu);
      }
      if (s.pool) {
        max_pool(h + c0, s.n * rows, g.wo, c1 - c0, ld_h, pooled + c0, ld_pooled);
      } else if (next == nullptr && h != op) {  // V was the output's channels: copy them out
        for (int64_t q = 0; q < p; ++q) std::copy(h + q * ld_h + c0, h + q * ld_h + c1, op + q * rn + c0);
      }
    }
  };
  // 3. out (P_o, R) = H W_next^T: R split over the threads, or, where R has too few 16-channel vectors for every
  // thread (a rank of 5-25 after a 128-512 channel layer), the output pixels
  const bool by_pixels = (rn + 15) / 16 < threads && p_o >= threads;
  const int64_t nblocks = by_pixels ? threads : std::max<int64_t>(1, std::min<int64_t>(threads, (rn + 15) / 16));
  auto product = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (by_pixels) {
        const int64_t step = ((p_o + nblocks - 1) / nblocks + 7) / 8 * 8;  // whole 8-row GEMM tiles
        const int64_t q0 = std::min(p_o, b * step), q1 = std::min(p_o, q0 + step);  // pixels [q0, q1), all R
        (*next)(q1 - q0, pooled + q0 * ld_pooled, ld_pooled, op + q0 * rn, rn, 0, rn, false, nullptr, false);
      } else {
        const auto [c0, c1] = channel_block(rn, nblocks, b);
        (*next)(p_o, pooled, ld_pooled, op + c0, rn, c0, c1, false, nullptr, false);
      }
    }
  };
  StageCounter c_spatial, c_middle, c_product;
  for_tasks(threads, 0, threads, [&](int64_t, int64_t) {  // one region, the three stages in it
    run_stage(c_spatial, s.n * chunks, spatial);
    run_stage(c_middle, blocks, middle);
    if (next != nullptr) run_stage(c_product, nblocks, product);
  });
}

// `reuse`: a channels_last tensor of the output's shape and dtype to write into (torch.ops.mtd.rank_run's
// activation buffers), or undefined to allocate the output. `threads`: at most this many (0: at::get_num_threads()).
template <typename T, typename Middle>
at::Tensor bridge_fused(const at::Tensor& input, const Middle& mid, const Window& g, const Pointwise<T>* last,
                        const T* bias, const Pointwise<T>* next, const BridgeShape& s, bool relu,
                        at::Tensor reuse = at::Tensor(), int64_t threads = 0) {
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);  // (N, H, W, R1) pixel-major
  at::Tensor out = reuse.defined() ? std::move(reuse)
                                   : at::empty({s.n, s.r_out, s.hp, s.wp},
                                               x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t r1 = mid.r1, r2 = mid.r2, t = s.t, rn = s.r_out;
  const int64_t step = s.pool ? 2 : 1;
  const int64_t rows_needed = s.pool ? 2 * s.hp : g.ho;  // an odd last row is dropped by the floor pool
  if (threads <= 0) threads = at::get_num_threads();

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
  if (tasks < threads) {
    bridge_wide<T>(xp, op, mid, g, last, bias, next, s, relu, threads);
    return out;
  }
  const int64_t p_max = ipt * rpc * g.wo;  // spatial-stage pixels of a task
  // H chunk of Tc channels; the whole T when it is written straight into the output
  const bool direct = next == nullptr && !s.pool && last != nullptr;
  int64_t tc = t;
  if (!direct) {
    tc = std::min<int64_t>(t, std::max<int64_t>(16, kTileBytes / (p_max * int64_t(sizeof(T))) / 16 * 16));
  }
  auto round16 = [](int64_t e) { return (e + 15) & ~int64_t(15); };
  const int64_t v_elems = round16(p_max * r2), e_elems = round16(mid.extra_elems(rpc));
  const int64_t h_elems = last != nullptr && !direct ? round16(p_max * tc) : 0;

  for_tasks(threads, 0, tasks, [&](int64_t begin, int64_t end) {
    T* v = thread_scratch<T>(v_elems + e_elems + h_elems + 16);
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
        (*last)(p, v, r2, o, t, bias, relu);
        continue;
      }
      for (int64_t c0 = 0; c0 < t; c0 += tc) {
        const int64_t c1 = std::min(t, c0 + tc), cw = c1 - c0;
        T* h = hbuf;  // (P, cw) row-major
        int64_t ld_h = cw;
        if (last != nullptr) {  // H (P, cw) = relu(V W_last[c0:c1]^T + bias), the epilogue in registers
          (*last)(p, v, r2, h, cw, c0, c1, false, bias, relu);
        } else {  // V already is the layer's output: its columns [c0, c1)
          h = v + c0;
          ld_h = r2;
          epilogue(h, p, cw, ld_h, true, bias != nullptr ? bias + c0 : nullptr, relu);
        }
        if (next == nullptr) {  // the T channels are the output: pool (or copy) into it
          if (s.pool) {
            max_pool(h, imgs * (oh1 - oh0), g.wo, cw, ld_h, o + c0, t);
          } else {
            for (int64_t q = 0; q < p; ++q) std::copy(h + q * ld_h, h + q * ld_h + cw, o + q * t + c0);
          }
          continue;
        }
        if (s.pool) max_pool(h, imgs * (oh1 - oh0), g.wo, cw, ld_h, h, ld_h);  // in place, (P/4, cw)
        // out (P_o, R) += H (P_o, cw) W_next[:, c0:c1]^T
        next->k_block(p_o, h, ld_h, o, rn, c0, c1, c0 > 0);
      }
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace mtd
