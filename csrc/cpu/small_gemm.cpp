// Register-blocked small GEMM (see small_gemm.h). One template body, compiled three times under different
// target attributes (the always_inline body takes the ISA of the function it is inlined into) and picked
// once at load time (cpu/isa.h); each ISA gets the tile that fits its register file.
#include "cpu/small_gemm.h"

#include <algorithm>

#include "cpu/isa.h"
#include "cpu/simd.h"

namespace mtd {
namespace cpu {
namespace {

#if defined(__GNUC__)

using simd::load;
using simd::store;
using simd::Vec;

// One MR x (NV vectors) tile of C: rows [0, MR) of a/c, columns [0, cols) of b/c (cols <= NV * lanes).
template <typename T, int B, int MR, int NV>
MTD_ALWAYS_INLINE void tile(int64_t k, const T* a, int64_t lda, int64_t seg, int64_t seg_ld, const T* b, int64_t ldb,
                            T* c, int64_t ldc, int64_t cols, bool accumulate, const T* bias, bool relu) {
  using V = typename Vec<T, B>::type;
  constexpr int64_t L = Vec<T, B>::lanes;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  for (int64_t k0 = 0; k0 < k; k0 += seg, a += seg_ld, b += seg * ldb) {  // one segment of A's columns
    const int64_t ks = std::min(seg, k - k0);
    for (int64_t kk = 0; kk < ks; ++kk) {
      V bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = load<T, B>(b + kk * ldb + v * L, L);  // in the padded row
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T s = a[i * lda + kk];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] += s * bv[v];
      }
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int64_t lanes = std::min<int64_t>(L, cols - v * L);
    if (lanes <= 0) break;
    const V bb = bias != nullptr ? load<T, B>(bias + v * L, lanes) : V{};
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      V r = acc[i][v] + bb;
      if (accumulate) r += load<T, B>(c + i * ldc + v * L, lanes);
      if (relu) r = r > V{} ? r : V{};
      store<T, B>(c + i * ldc + v * L, r, lanes);
    }
  }
}

// The last rows % MR rows of a column block, one tile of exactly that many rows.
template <typename T, int B, int R, int NV>
MTD_ALWAYS_INLINE void tail_rows(int64_t rows, int64_t k, const T* a, int64_t lda, int64_t seg, int64_t seg_ld,
                                 const T* b, int64_t ldb, T* c, int64_t ldc, int64_t cols, bool accumulate,
                                 const T* bias, bool relu) {
  if constexpr (R > 0) {
    if (rows == R) return tile<T, B, R, NV>(k, a, lda, seg, seg_ld, b, ldb, c, ldc, cols, accumulate, bias, relu);
    tail_rows<T, B, R - 1, NV>(rows, k, a, lda, seg, seg_ld, b, ldb, c, ldc, cols, accumulate, bias, relu);
  }
}

template <typename T, int B, int MR, int NV>
MTD_ALWAYS_INLINE void column_block(int64_t m, int64_t k, const T* a, int64_t lda, int64_t seg, int64_t seg_ld,
                                    const T* b, int64_t ldb, T* c, int64_t ldc, int64_t cols, bool accumulate,
                                    const T* bias, bool relu) {
  int64_t i = 0;
  for (; i + MR <= m; i += MR) {
    tile<T, B, MR, NV>(k, a + i * lda, lda, seg, seg_ld, b, ldb, c + i * ldc, ldc, cols, accumulate, bias, relu);
  }
  tail_rows<T, B, MR - 1, NV>(m - i, k, a + i * lda, lda, seg, seg_ld, b, ldb, c + i * ldc, ldc, cols, accumulate,
                              bias, relu);
}

// Column blocks of NV vectors; a last block that fits in one vector takes the one-vector tile.
template <typename T, int B, int MR, int NV>
MTD_ALWAYS_INLINE void gemm_body(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, int64_t seg, int64_t seg_ld,
                                 const T* b, int64_t ldb, T* c, int64_t ldc, bool accumulate, const T* bias,
                                 bool relu) {
  constexpr int64_t L = Vec<T, B>::lanes, NB = NV * L;
  for (int64_t j = 0; j < n; j += NB) {
    const int64_t cols = std::min(NB, n - j);
    const T* bj = bias != nullptr ? bias + j : nullptr;
    if (NV > 1 && cols <= L) {
      column_block<T, B, MR, 1>(m, k, a, lda, seg, seg_ld, b + j, ldb, c + j, ldc, cols, accumulate, bj, relu);
    } else {
      column_block<T, B, MR, NV>(m, k, a, lda, seg, seg_ld, b + j, ldb, c + j, ldc, cols, accumulate, bj, relu);
    }
  }
}

template <typename T>
using GemmFn = void (*)(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, int64_t, const T*, int64_t, T*, int64_t,
                        bool, const T*, bool);

#define MTD_SMALL_GEMM(NAME, T, B, MR, NV)                                                                    \
  void NAME(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, int64_t seg, int64_t seg_ld, const T* b, \
            int64_t ldb, T* c, int64_t ldc, bool accumulate, const T* bias, bool relu) {                      \
    gemm_body<T, B, MR, NV>(m, n, k, a, lda, seg, seg_ld, b, ldb, c, ldc, accumulate, bias, relu);            \
  }

// Tiles chosen by measurement (single thread, the bridge shapes of a 32x VGG16, K and N of 8-512; Zen 5):
// AVX-512 float 8 x 2 zmm (16 accumulators of 32 registers; 41-100 GFLOP/s, 6 x 2 gave 42-94, 12 x 2, 4 x 4 and
// 8 x 3 less); AVX2 6 x 2 ymm (12 accumulators, 2 of B and a broadcast in 16 registers; 30-103 GFLOP/s);
// baseline x86-64 (16 xmm) 4 x 2 (18-35 GFLOP/s).
#if defined(__x86_64__)
MTD_TARGET_AVX512 MTD_SMALL_GEMM(gemm_avx512_f, float, 64, 8, 2)
MTD_TARGET_AVX512 MTD_SMALL_GEMM(gemm_avx512_d, double, 64, 6, 2)
MTD_TARGET_AVX2 MTD_SMALL_GEMM(gemm_avx2_f, float, 32, 6, 2)
MTD_TARGET_AVX2 MTD_SMALL_GEMM(gemm_avx2_d, double, 32, 6, 2)
#endif
MTD_SMALL_GEMM(gemm_base_f, float, 16, 4, 2)
MTD_SMALL_GEMM(gemm_base_d, double, 16, 4, 2)

const GemmFn<float> kGemmF = MTD_BY_ISA(gemm_avx512_f, gemm_avx2_f, gemm_base_f);
const GemmFn<double> kGemmD = MTD_BY_ISA(gemm_avx512_d, gemm_avx2_d, gemm_base_d);

#else  // not GCC / clang: plain loops (correct, not fast)

template <typename T>
void plain_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, int64_t seg, int64_t seg_ld, const T* b,
                int64_t ldb, T* c, int64_t ldc, bool accumulate, const T* bias, bool relu) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      T s = accumulate ? c[i * ldc + j] : T(0);
      for (int64_t kk = 0; kk < k; ++kk) s += a[(kk / seg) * seg_ld + i * lda + kk % seg] * b[kk * ldb + j];
      if (bias != nullptr) s += bias[j];
      c[i * ldc + j] = relu && s < T(0) ? T(0) : s;
    }
  }
}
template <typename T>
using GemmFn = void (*)(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, int64_t, const T*, int64_t, T*, int64_t,
                        bool, const T*, bool);
const GemmFn<float> kGemmF = plain_gemm<float>;
const GemmFn<double> kGemmD = plain_gemm<double>;
#endif

}  // namespace

void small_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                int64_t ldc, bool accumulate, const float* bias, bool relu) {
  if (m > 0 && n > 0) kGemmF(m, n, k, a, lda, std::max<int64_t>(k, 1), 0, b, ldb, c, ldc, accumulate, bias, relu);
}

void small_gemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b, int64_t ldb,
                double* c, int64_t ldc, bool accumulate, const double* bias, bool relu) {
  if (m > 0 && n > 0) kGemmD(m, n, k, a, lda, std::max<int64_t>(k, 1), 0, b, ldb, c, ldc, accumulate, bias, relu);
}

void small_gemm_segmented(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, int64_t seg, int64_t seg_ld,
                          const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate, const float* bias,
                          bool relu) {
  if (m > 0 && n > 0 && seg > 0) kGemmF(m, n, k, a, lda, seg, seg_ld, b, ldb, c, ldc, accumulate, bias, relu);
}

void small_gemm_segmented(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, int64_t seg, int64_t seg_ld,
                          const double* b, int64_t ldb, double* c, int64_t ldc, bool accumulate, const double* bias,
                          bool relu) {
  if (m > 0 && n > 0 && seg > 0) kGemmD(m, n, k, a, lda, seg, seg_ld, b, ldb, c, ldc, accumulate, bias, relu);
}

}  // namespace cpu
}  // namespace mtd
