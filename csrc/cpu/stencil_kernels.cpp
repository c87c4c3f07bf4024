// The depthwise stencil of one output row, vectorised over the channel dimension.
//
// Built once per x86 ISA level (target_clones: AVX-512, AVX2+FMA, baseline) and picked at load time,
// so the wheel needs no -march flag yet uses the wide vector units where the CPU has them.
#include "cpu/fused_common.h"

namespace mtd {
namespace cpu {
namespace {

// Channels handled per register block: 4 vectors of 512 bits, so the accumulators stay in registers
// while all kernel taps are applied.
template <typename T>
constexpr int64_t kBlock = 256 / sizeof(T);

template <typename T>
__attribute__((always_inline)) inline void depthwise_row_impl(T* dst, int64_t wo, int64_t r, const T* src,
                                                              int64_t w_src, const int64_t* row_off,
                                                              const int64_t* ki_idx, int64_t n_rows, int64_t kw,
                                                              int64_t sw, int64_t pw, int64_t dw, const T* w,
                                                              int64_t ld) {
  constexpr int64_t B = kBlock<T>;
  for (int64_t ow = 0; ow < wo; ++ow) {
    // valid horizontal taps kj in [kj0, kj1): 0 <= ow*sw - pw + kj*dw < w_src
    const int64_t iw0 = ow * sw - pw;
    int64_t kj0 = 0, kj1 = kw;
    while (kj0 < kw && iw0 + kj0 * dw < 0) ++kj0;
    while (kj1 > kj0 && iw0 + (kj1 - 1) * dw >= w_src) --kj1;
    T* out = dst + ow * ld;
    int64_t c = 0;
    for (; c + B <= r; c += B) {
      T acc[B] = {};
      for (int64_t i = 0; i < n_rows; ++i) {
        const T* srow = src + row_off[i] + c;
        const T* wrow = w + ki_idx[i] * kw * ld + c;
        for (int64_t kj = kj0; kj < kj1; ++kj) {
          const T* sp = srow + (iw0 + kj * dw) * ld;
          const T* wp = wrow + kj * ld;
#pragma omp simd
          for (int64_t j = 0; j < B; ++j) acc[j] += wp[j] * sp[j];
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < B; ++j) out[c + j] = acc[j];
    }
    if (c < r) {  // channel tail, accumulated in place
      const int64_t rem = r - c;
      for (int64_t j = 0; j < rem; ++j) out[c + j] = T(0);
      for (int64_t i = 0; i < n_rows; ++i) {
        const T* srow = src + row_off[i] + c;
        const T* wrow = w + ki_idx[i] * kw * ld + c;
        for (int64_t kj = kj0; kj < kj1; ++kj) {
          const T* sp = srow + (iw0 + kj * dw) * ld;
          const T* wp = wrow + kj * ld;
#pragma omp simd
          for (int64_t j = 0; j < rem; ++j) out[c + j] += wp[j] * sp[j];
        }
      }
    }
  }
}

}  // namespace

MTD_ISA_CLONES void depthwise_row(float* dst, int64_t wo, int64_t r, const float* src, int64_t w_src,
                                  const int64_t* row_off, const int64_t* ki_idx, int64_t n_rows, int64_t kw,
                                  int64_t sw, int64_t pw, int64_t dw, const float* w, int64_t ld) {
  depthwise_row_impl(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);
}

MTD_ISA_CLONES void depthwise_row(double* dst, int64_t wo, int64_t r, const double* src, int64_t w_src,
                                  const int64_t* row_off, const int64_t* ki_idx, int64_t n_rows, int64_t kw,
                                  int64_t sw, int64_t pw, int64_t dw, const double* w, int64_t ld) {
  depthwise_row_impl(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);
}

}  // namespace cpu
}  // namespace mtd
