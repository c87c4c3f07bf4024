// The spatial middle stages of the fused CPU kernels, shared by the per-layer ops (cp_conv2d, cp4_conv2d,
// tucker_conv2d: fused_pipeline.h) and the cross-layer rank_bridge. Each maps U, the R1-channel map of
// some input rows in pixel-major layout (rows, W, R1), to V, the R2-channel output rows (rows_out*Wo, R2):
//
//   int64_t r1, r2;                       ranks entering / leaving the stage
//   int64_t extra_elems(int64_t rows_out) scratch the stage needs besides U and V
//   void run(const T* u, int64_t ih_lo, int64_t rows_in, int64_t oh0, int64_t oh1, T* extra, T* v) const
//   void run_channel_split(const T* u, T* extra, T* v, int64_t blocks) const   (whole map, parallel)
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/fused_common.h"
#include "cpu/pointwise.h"

namespace mtd {
namespace cpu {

// CP3: depthwise kh x kw on R channels (R -> R).
template <typename T>
struct CpDepthwise {
  int64_t r1, r2;       // both R
  const T* w;           // (kh*kw, R): tap-major so the stencil reads R contiguous weights per tap
  cpu::Window g;

  int64_t extra_elems(int64_t /*rows_out*/) const { return 0; }

  void run(const T* u, int64_t lo, int64_t rows_in, int64_t oh0, int64_t oh1, T* /*extra*/, T* v) const {
    cpu::depthwise_chunk(u, lo, rows_in, g.w, r1, r1, g.kh, g.sh, g.ph, g.dh, g.kw, g.sw, g.pw, g.dw, g.wo, oh0,
                         oh1, w, v);  // (rows_in, W, R) -> (oh1-oh0, Wo, R)
  }

  // whole map (H, W, R) -> (Ho, Wo, R), channels split into `blocks` parallel pieces
  void run_channel_split(const T* u, T* /*extra*/, T* v, int64_t blocks) const {
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto [c0, c1] = cpu::channel_block(r1, blocks, b);
        if (c0 >= c1) continue;
        cpu::depthwise_chunk(u + c0, 0, g.h, g.w, c1 - c0, r1, g.kh, g.sh, g.ph, g.dh, g.kw, g.sw, g.pw, g.dw,
                             g.wo, 0, g.ho, w + c0, v + c0);
      }
    });
  }
};

// CP4: depthwise kh x 1 then 1 x kw on R channels (R -> R), through a (rows_out, W, R) buffer.
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

// A short copy as a plain loop: GCC would turn the loop (or std::copy) into a call to memcpy, whose fixed cost
// dominated the im2col of a first conv (3 channels: 12-byte copies, 9 per pixel).
template <typename T>
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif
inline void copy_run(T* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

// Tucker-2 (and a dense conv, whose kernel is the core): im2col of U, then one GEMM with the core (R1 -> R2).
template <typename T>
struct TuckerCore {
  int64_t r1, r2;
  cpu::Window g;
  bool tap_major;       // im2col copies contiguous R1 runs (needs the permuted core) or scatters them
  Pointwise<T> product;  // the core (R2, K) row-major; K = (tap, R1) if tap_major else (R1, tap), as im2col's rows

  // `pixels`: output pixels of the whole call (the product packs the core when there are enough).
  TuckerCore(int64_t r1_, int64_t r2_, const T* core, const cpu::Window& g_, bool tap_major_, int64_t pixels)
      : r1(r1_), r2(r2_), g(g_), tap_major(tap_major_), product(core, r2_, g_.kh * g_.kw * r1_, pixels) {}
  // The core's product given already packed for this layout (torch.ops.mtd.rank_run).
  TuckerCore(int64_t r1_, int64_t r2_, const cpu::Window& g_, bool tap_major_, Pointwise<T> product_)
      : r1(r1_), r2(r2_), g(g_), tap_major(tap_major_), product(std::move(product_)) {}

  int64_t k() const { return g.kh * g.kw * r1; }
  bool pointwise() const {  // 1x1 core without stride/padding: U already is the im2col matrix
    return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  }
  // No im2col: each output row's product reads its kh kernel rows straight from a zero-padded copy of the input rows
  // (small_gemm_segmented), one copy of the input instead of kh*kw. It pays where the im2col's copies are short and
  // many against the product (small R1, R2: the high-resolution layers, a first conv's 3 channels); an output row
  // of fewer than 8 pixels would leave the GEMM's 8-row tiles part-empty and reload the core per few pixels.
  bool implicit() const {
    return tap_major && !pointwise() && g.dh == 1 && g.dw == 1 && g.wo >= 8 && product.is_packed();
  }
  int64_t padded_w() const { return (g.wo - 1) * g.sw + g.kw; }  // input columns -pw .. (Wo-1)*sw - pw + kw - 1
  // the im2col matrix (run_channel_split always makes it), or the padded rows where larger
  int64_t extra_elems(int64_t rows_out) const {
    const int64_t cols = pointwise() ? 0 : rows_out * g.wo * k();
    return implicit() ? std::max(cols, ((rows_out - 1) * g.sh + g.kh) * padded_w() * r1) : cols;
  }

  void run(const T* u, int64_t lo, int64_t rows_in, int64_t oh0, int64_t oh1, T* cols, T* v) const {
    const int64_t kk = k(), p = (oh1 - oh0) * g.wo;
    if (implicit()) {
      const int64_t wp = padded_w();
      pad_rows(u, lo, rows_in, oh0, oh1, cols);  // (Hp, Wp, R1)
      for (int64_t oh = oh0; oh < oh1; ++oh) {  // V row (Wo, R2): pixel ow's K values are kh runs of kw*R1
        product.segmented(g.wo, cols + (oh - oh0) * g.sh * wp * r1, g.sw * r1, g.kw * r1, wp * r1,
                          v + (oh - oh0) * g.wo * r2, r2);
      }
      return;
    }
    if (!pointwise()) {
      im2col(u, lo, rows_in, oh0, oh1, cols);  // (P, kh*kw*R1)
      u = cols;
    }
    product(p, u, kk, v, r2, nullptr, false);  // V (P, R2) = cols (P, K) core^T
  }

  // The input rows output rows [oh0, oh1) read, zero-padded: (Hp, Wp, R1), padded row 0 = input row oh0*sh - ph,
  // padded column 0 = input column -pw. u holds input rows [lo, lo + rows_in).
  void pad_rows(const T* u, int64_t lo, int64_t rows_in, int64_t oh0, int64_t oh1, T* dst) const {
    const int64_t wp = padded_w(), hp = (oh1 - oh0 - 1) * g.sh + g.kh;
    const int64_t left = std::min(g.pw, wp), inside = std::max<int64_t>(0, std::min(g.w, wp - g.pw));
    for (int64_t r = 0; r < hp; ++r, dst += wp * r1) {
      const int64_t row = oh0 * g.sh - g.ph + r - lo;  // in u
      if (row < 0 || row >= rows_in) {
        std::fill(dst, dst + wp * r1, T(0));
        continue;
      }
      std::fill(dst, dst + left * r1, T(0));
      std::copy(u + row * g.w * r1, u + (row * g.w + inside) * r1, dst + left * r1);
      std::fill(dst + (left + inside) * r1, dst + wp * r1, T(0));
    }
  }

  // whole map: im2col split over output rows, then the core GEMM split over R2 blocks
  void run_channel_split(const T* u, T* cols, T* v, int64_t blocks) const {
    const int64_t kk = k(), p = g.ho * g.wo;
    if (!pointwise()) {
      at::parallel_for(0, g.ho, 1, [&](int64_t oh0, int64_t oh1) {
        im2col(u, 0, g.h, oh0, oh1, cols + oh0 * g.wo * kk);  // (Ho*Wo, K), rows split over threads
      });
      u = cols;
    }
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto [c0, c1] = cpu::channel_block(r2, blocks, b);
        product(p, u, kk, v + c0, r2, c0, c1, false, nullptr, false);
      }
    });
  }

  void im2col(const T* u, int64_t lo, int64_t rows_in, int64_t oh0, int64_t oh1, T* cols) const {
    const int64_t taps = g.kh * g.kw;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow = 0; ow < g.wo; ++ow) {
        T* pixel = cols + ((oh - oh0) * g.wo + ow) * k();  // one im2col row (K,)
        const int64_t col0 = ow * g.sw - g.pw;
        for (int64_t ki = 0; ki < g.kh; ++ki) {
          const int64_t row = oh * g.sh - g.ph + ki * g.dh - lo;
          const bool row_inside = row >= 0 && row < rows_in;
          if (tap_major && row_inside && g.dw == 1 && col0 >= 0 && col0 + g.kw <= g.w) {
            // the kernel row's taps are one contiguous run of kw * R1 values (a first conv has R1 = 3: 9 values)
            copy_run(pixel + ki * g.kw * r1, u + (row * g.w + col0) * r1, g.kw * r1);
            continue;
          }
          for (int64_t kj = 0; kj < g.kw; ++kj) {
            const int64_t col = col0 + kj * g.dw;
            const int64_t tap = ki * g.kw + kj;
            const bool inside = row_inside && col >= 0 && col < g.w;
            const T* src = inside ? u + (row * g.w + col) * r1 : nullptr;  // outside: zero padding
            if (tap_major) {  // K = (tap, R1): a contiguous run of R1 values
              T* dst = pixel + tap * r1;
              if (inside) {
                copy_run(dst, src, r1);
              } else {
                std::fill(dst, dst + r1, T(0));
              }
            } else {  // K = (R1, tap): the native (R2, R1, kh, kw) core order
              for (int64_t c = 0; c < r1; ++c) pixel[c * taps + tap] = inside ? src[c] : T(0);
            }
          }
        }
      }
    }
  }
};

}  // namespace cpu
}  // namespace mtd
