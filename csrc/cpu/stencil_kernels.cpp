// The depthwise stencil of one output row (see depthwise_row in fused_common.h), in registers.
//
// Channels are vectors of the ISA's width; a channel count that is not a multiple of it ends with one vector
// that overlaps the previous one (channels are independent, so recomputing a few is harmless and every load
// stays inside the pixel). Interior pixels, whose taps are all inside the row, go PX at a time so that each
// weight vector loaded serves PX pixels. Built for AVX-512, AVX2+FMA and baseline x86-64 and picked once at
// load time (cpu/isa.h). Measured on the 16x16 bridges of a 32x VGG16 (Zen 5, batch 64): the previous
// channel-blocked loop spent most of its time in the tail of 16-23 channels, which is all of them there.
#include <algorithm>

#include "cpu/fused_common.h"
#include "cpu/isa.h"
#include "cpu/simd.h"

namespace mtd {
namespace cpu {
namespace {

// Any channel count, any ISA: the reference loop (channels under one vector, compilers without vector
// extensions).
template <typename T>
void row_plain(T* dst, int64_t wo, int64_t r, const T* src, int64_t w_src, const int64_t* row_off,
               const int64_t* ki_idx, int64_t n_rows, int64_t kw, int64_t sw, int64_t pw, int64_t dw, const T* w,
               int64_t ld) {
  for (int64_t ow = 0; ow < wo; ++ow) {
    T* out = dst + ow * ld;
    for (int64_t c = 0; c < r; ++c) out[c] = T(0);
    for (int64_t i = 0; i < n_rows; ++i) {
      for (int64_t kj = 0; kj < kw; ++kj) {
        const int64_t iw = ow * sw - pw + kj * dw;
        if (iw < 0 || iw >= w_src) continue;
        const T* sp = src + row_off[i] + iw * ld;
        const T* wp = w + (ki_idx[i] * kw + kj) * ld;
        for (int64_t c = 0; c < r; ++c) out[c] += wp[c] * sp[c];
      }
    }
  }
}

#if defined(__GNUC__)

using simd::load;
using simd::store;
using simd::Vec;

// PX output pixels x one channel vector, taps [kj0, kj1) of every valid kernel row. `s` points at the first
// pixel's leftmost tap (src + iw0 * ld + c), `w` at the channel (w + c); pixels are `s_step` apart in src.
template <typename T, int B, int PX>
MTD_ALWAYS_INLINE void pixels(T* out, int64_t ld, const T* s, int64_t s_step, const int64_t* row_off,
                              const int64_t* ki_idx, int64_t n_rows, int64_t kj0, int64_t kj1, int64_t kw,
                              int64_t dw, const T* w) {
  using V = typename Vec<T, B>::type;
  V acc[PX];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p) acc[p] = V{};
  for (int64_t i = 0; i < n_rows; ++i) {
    const T* srow = s + row_off[i];
    const T* wrow = w + ki_idx[i] * kw * ld;
    for (int64_t kj = kj0; kj < kj1; ++kj) {
      const V wv = load<T, B>(wrow + kj * ld);
      const T* sp = srow + kj * dw * ld;
#pragma GCC unroll 8
      for (int p = 0; p < PX; ++p) acc[p] += wv * load<T, B>(sp + p * s_step);
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p) store<T, B>(out + p * ld, acc[p]);
}

// One output row with vectors of B bytes; needs r >= the vector's lanes.
template <typename T, int B>
MTD_ALWAYS_INLINE void row_vec(T* dst, int64_t wo, int64_t r, const T* src, int64_t w_src, const int64_t* row_off,
                               const int64_t* ki_idx, int64_t n_rows, int64_t kw, int64_t sw, int64_t pw, int64_t dw,
                               const T* w, int64_t ld) {
  constexpr int64_t L = Vec<T, B>::lanes;
  constexpr int PX = 4;
  // interior pixels [in0, in1): every tap inside the row (0 <= ow*sw - pw and ow*sw - pw + (kw-1)*dw < w_src)
  const int64_t in0 = std::min(wo, (pw + sw - 1) / sw);
  const int64_t last = w_src - 1 + pw - (kw - 1) * dw;
  const int64_t in1 = last < 0 ? in0 : std::max(in0, std::min(wo, last / sw + 1));
  int64_t ow = 0;
  while (ow < wo) {
    const int64_t iw0 = ow * sw - pw;
    const bool block = ow >= in0 && ow + PX <= in1;
    int64_t kj0 = 0, kj1 = kw;
    if (!block) {
      while (kj0 < kw && iw0 + kj0 * dw < 0) ++kj0;
      while (kj1 > kj0 && iw0 + (kj1 - 1) * dw >= w_src) --kj1;
    }
    for (int64_t c = 0; c < r; c += L) {
      const int64_t cc = std::min(c, r - L);  // the last vector overlaps the one before
      T* out = dst + ow * ld + cc;
      const T* s = src + iw0 * ld + cc;  // tap kj reads s + kj * dw * ld, valid for kj in [kj0, kj1)
      if (block) {
        pixels<T, B, PX>(out, ld, s, sw * ld, row_off, ki_idx, n_rows, 0, kw, kw, dw, w + cc);
      } else {
        pixels<T, B, 1>(out, ld, s, 0, row_off, ki_idx, n_rows, kj0, kj1, kw, dw, w + cc);
      }
    }
    ow += block ? PX : 1;
  }
}

// The widest vector (at most BMAX bytes) that the channel count fills.
template <typename T, int BMAX>
MTD_ALWAYS_INLINE void row_any(T* dst, int64_t wo, int64_t r, const T* src, int64_t w_src, const int64_t* row_off,
                               const int64_t* ki_idx, int64_t n_rows, int64_t kw, int64_t sw, int64_t pw, int64_t dw,
                               const T* w, int64_t ld) {
  if constexpr (BMAX >= 64) {
    if (r >= Vec<T, 64>::lanes) return row_vec<T, 64>(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);
  }
  if constexpr (BMAX >= 32) {
    if (r >= Vec<T, 32>::lanes) return row_vec<T, 32>(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);
  }
  if (r >= Vec<T, 16>::lanes) return row_vec<T, 16>(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);
  row_plain(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);
}

template <typename T>
using RowFn = void (*)(T*, int64_t, int64_t, const T*, int64_t, const int64_t*, const int64_t*, int64_t, int64_t,
                       int64_t, int64_t, int64_t, const T*, int64_t);

#define MTD_DEPTHWISE_ROW(NAME, T, BMAX)                                                                       \
  void NAME(T* dst, int64_t wo, int64_t r, const T* src, int64_t w_src, const int64_t* row_off,             \
            const int64_t* ki_idx, int64_t n_rows, int64_t kw, int64_t sw, int64_t pw, int64_t dw, const T* w, \
            int64_t ld) {                                                                                    \
    row_any<T, BMAX>(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);                  \
  }

#if defined(__x86_64__)
MTD_TARGET_AVX512 MTD_DEPTHWISE_ROW(row_avx512_f, float, 64)
MTD_TARGET_AVX512 MTD_DEPTHWISE_ROW(row_avx512_d, double, 64)
MTD_TARGET_AVX2 MTD_DEPTHWISE_ROW(row_avx2_f, float, 32)
MTD_TARGET_AVX2 MTD_DEPTHWISE_ROW(row_avx2_d, double, 32)
#endif
MTD_DEPTHWISE_ROW(row_base_f, float, 16)
MTD_DEPTHWISE_ROW(row_base_d, double, 16)

const RowFn<float> kRowF = MTD_BY_ISA(row_avx512_f, row_avx2_f, row_base_f);
const RowFn<double> kRowD = MTD_BY_ISA(row_avx512_d, row_avx2_d, row_base_d);

#else  // not GCC / clang
void (*const kRowF)(float*, int64_t, int64_t, const float*, int64_t, const int64_t*, const int64_t*, int64_t,
                    int64_t, int64_t, int64_t, int64_t, const float*, int64_t) = row_plain<float>;
void (*const kRowD)(double*, int64_t, int64_t, const double*, int64_t, const int64_t*, const int64_t*, int64_t,
                    int64_t, int64_t, int64_t, int64_t, const double*, int64_t) = row_plain<double>;
#endif

}  // namespace

void depthwise_row(float* dst, int64_t wo, int64_t r, const float* src, int64_t w_src, const int64_t* row_off,
                   const int64_t* ki_idx, int64_t n_rows, int64_t kw, int64_t sw, int64_t pw, int64_t dw,
                   const float* w, int64_t ld) {
  kRowF(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);
}

void depthwise_row(double* dst, int64_t wo, int64_t r, const double* src, int64_t w_src, const int64_t* row_off,
                   const int64_t* ki_idx, int64_t n_rows, int64_t kw, int64_t sw, int64_t pw, int64_t dw,
                   const double* w, int64_t ld) {
  kRowD(dst, wo, r, src, w_src, row_off, ki_idx, n_rows, kw, sw, pw, dw, w, ld);
}

}  // namespace cpu
}  // namespace mtd
