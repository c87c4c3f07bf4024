// Building blocks shared by the fused CPU kernels (cp_conv2d, cp4_conv2d, tucker_conv2d): the middle
// stage's window geometry, a raw-pointer GEMM, the depthwise stencil, thread-local scratch and the
// bias/ReLU epilogue. The pipeline that uses them is in cpu/fused_pipeline.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "op_checks.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

// Builds a function once per x86 ISA level (AVX-512, AVX2+FMA, baseline); the loader picks the widest
// the CPU has, so the wheel needs no -march flag yet uses the wide vector units where they exist.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MTD_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MTD_ISA_CLONES
#endif

namespace mtd {
namespace cpu {

// Geometry of the spatial middle stage (kernel kh x kw with stride/padding/dilation).
struct Window {
  int64_t h, w;    // input spatial size
  int64_t ho, wo;  // output spatial size
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;

  // Input rows [lo, hi) that output rows [oh0, oh1) read (clipped to the image).
  int64_t rows_lo(int64_t oh0) const { return std::max<int64_t>(0, oh0 * sh - ph); }
  int64_t rows_hi(int64_t oh1) const { return std::min<int64_t>(h, (oh1 - 1) * sh - ph + (kh - 1) * dh + 1); }
  int64_t max_rows_in(int64_t rows_out) const {
    return std::min<int64_t>(h, (rows_out - 1) * sh + (kh - 1) * dh + 1);
  }
};

// Window of the middle stage; errors clearly when the input is too small for the kernel.
Window make_window(const char* op, const at::Tensor& x, int64_t kh, int64_t kw, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation);

// The unfused ATen chain's tail after its last conv (which added the bias): ReLU in place and the
// output layout. The chain runs dtypes without a fused kernel and shapes where it measured faster.
at::Tensor finish_chain(const at::Tensor& x, at::Tensor y, bool relu);

// True when the fused path handles this call (fp32/fp64, non-empty).
bool fused_supported(const at::Tensor& x, int64_t r1, int64_t r2, int64_t t);

// ----- column-major BLAS GEMM on raw pointers: C(m,n) = op(A)(m,k) * op(B)(k,n) [+ C if accumulate] -----
// Uses the BLAS inside libtorch (MKL sgemm_/dgemm_) when exported, else at::mm on views.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate = false);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
          const double* b, int64_t ldb, double* c, int64_t ldc, bool accumulate = false);

// ----- depthwise stencil over one output row, vectorised over channels (stencil_kernels.cpp) -----
// dst (wo, r) = sum over the valid taps of w[ki*kw + kj, :] * src[row_off[i] + (ow*sw - pw + kj*dw) * ld, :]
// for each of the n_rows valid kernel rows i (kernel row index ki_idx[i]); src rows have w_src pixels.
// `ld` is the pixel stride of src/dst and the tap stride of w (>= r: a channel subset may be computed).
void depthwise_row(float* dst, int64_t wo, int64_t r, const float* src, int64_t w_src, const int64_t* row_off,
                   const int64_t* ki_idx, int64_t n_rows, int64_t kw, int64_t sw, int64_t pw, int64_t dw,
                   const float* w, int64_t ld);
void depthwise_row(double* dst, int64_t wo, int64_t r, const double* src, int64_t w_src, const int64_t* row_off,
                   const int64_t* ki_idx, int64_t n_rows, int64_t kw, int64_t sw, int64_t pw, int64_t dw,
                   const double* w, int64_t ld);

// Depthwise conv of a chunk: U (rows_in, w_src, ld) holding input rows [ih_lo, ih_lo + rows_in) ->
// dst (oh1 - oh0, wo, ld), first r channels. `w` is (kh*kw, ld). Rows outside U are zero padding.
template <typename T>
void depthwise_chunk(const T* u, int64_t ih_lo, int64_t rows_in, int64_t w_src, int64_t r, int64_t ld,
                     int64_t kh, int64_t sh, int64_t ph, int64_t dh, int64_t kw, int64_t sw, int64_t pw,
                     int64_t dw, int64_t wo, int64_t oh0, int64_t oh1, const T* w, T* dst) {
  int64_t row_off[64], ki_idx[64];  // kernel rows; larger kernels use the heap
  std::vector<int64_t> heap;
  int64_t* off = row_off;
  int64_t* idx = ki_idx;
  if (kh > 64) {
    heap.resize(2 * kh);
    off = heap.data();
    idx = heap.data() + kh;
  }
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    int64_t n_rows = 0;
    for (int64_t ki = 0; ki < kh; ++ki) {
      const int64_t local = oh * sh - ph + ki * dh - ih_lo;
      if (local < 0 || local >= rows_in) continue;  // zero padding (or outside the image)
      off[n_rows] = local * w_src * ld;
      idx[n_rows] = ki;
      ++n_rows;
    }
    depthwise_row(dst + (oh - oh0) * wo * ld, wo, r, u, w_src, off, idx, n_rows, kw, sw, pw, dw, w, ld);
  }
}

// [begin, end) of block b when `total` channels are split into `blocks` pieces (multiples of 16).
inline std::pair<int64_t, int64_t> channel_block(int64_t total, int64_t blocks, int64_t b) {
  const int64_t step = ((total + blocks - 1) / blocks + 15) / 16 * 16;
  return {std::min(total, b * step), std::min(total, (b + 1) * step)};
}

// ----- thread-local scratch (kept across calls so buffers are not re-faulted every time) -----
template <typename T>
T* thread_scratch(int64_t elems) {
  thread_local std::vector<char> buf;
  const size_t bytes = static_cast<size_t>(elems) * sizeof(T) + 64;
  if (buf.size() < bytes) buf.assign(bytes, 0);
  auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
}

// bias + ReLU on an output tile still in cache. NCHW tile: (t, p) at t*ld + p; NHWC: (p, t) at p*ld + t.
template <typename T>
void epilogue(T* c, int64_t p, int64_t t, int64_t ld, bool nhwc, const T* bias, bool relu) {
  if (bias == nullptr && !relu) return;
  if (nhwc) {
    for (int64_t i = 0; i < p; ++i) {
      T* row = c + i * ld;
      if (bias != nullptr) {
#pragma omp simd
        for (int64_t j = 0; j < t; ++j) row[j] += bias[j];
      }
      if (relu) {
#pragma omp simd
        for (int64_t j = 0; j < t; ++j) row[j] = row[j] > T(0) ? row[j] : T(0);
      }
    }
  } else {
    for (int64_t j = 0; j < t; ++j) {
      T* col = c + j * ld;
      const T b = bias != nullptr ? bias[j] : T(0);
      if (relu) {
#pragma omp simd
        for (int64_t i = 0; i < p; ++i) {
          const T v = col[i] + b;
          col[i] = v > T(0) ? v : T(0);
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < p; ++i) col[i] += b;
      }
    }
  }
}

}  // namespace cpu
}  // namespace mtd
