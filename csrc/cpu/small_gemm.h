// Register-blocked GEMM for the small, skinny products of the rank-space bridge (K and N of 8-512, M a tile
// of a few hundred pixels), where a BLAS call's fixed cost and its packing dominate (measured: MKL at
// K = 11-17, N = 17-23 ran the 16x16 bridges of a 32x VGG16 2-3.5x slower than oneDNN's unfused chain).
//
//   C (m, n) = [C +] A (m, k) * B (k, n) [+ bias (n)] [ReLU]        all row-major, leading dims lda/ldb/ldc
//
// Vectorised over n (channels), broadcast over m (pixels); bias and ReLU are applied in registers. B's rows
// are read as whole vectors: each must be readable for n + kSmallGemmPad elements (pack B with a row stride of
// `padded_cols(columns)`, and a chunk of its columns stays readable); lanes past n are computed, never stored.
// Compiled for AVX-512, AVX2+FMA and baseline x86-64, picked once at load time (cpu/isa.h).
#pragma once

#include <cstdint>

namespace mtd {
namespace cpu {

// Elements past column n that a row of B must hold (a vector's lanes, rounded up); padded_cols keeps rows
// 64-byte aligned.
constexpr int64_t kSmallGemmPad = 32;
inline int64_t padded_cols(int64_t n) { return (n + kSmallGemmPad + 15) / 16 * 16; }

void small_gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                int64_t ldc, bool accumulate, const float* bias, bool relu);
void small_gemm(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b, int64_t ldb,
                double* c, int64_t ldc, bool accumulate, const double* bias, bool relu);

// The same product with A's columns in segments of `seg`: A (i, kk) is a[(kk / seg) * seg_ld + i * lda + kk % seg].
// A conv's im2col matrix without the im2col: over one output row of a zero-padded tap-major input (H, W, R1),
// segment ki is kernel row ki (kw * R1 contiguous values per pixel, seg_ld = one input row apart) and the pixels are
// lda = stride * R1 apart (TuckerCore's implicit path).
void small_gemm_segmented(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, int64_t seg, int64_t seg_ld,
                          const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate, const float* bias,
                          bool relu);
void small_gemm_segmented(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, int64_t seg, int64_t seg_ld,
                          const double* b, int64_t ldb, double* c, int64_t ldc, bool accumulate, const double* bias,
                          bool relu);

}  // namespace cpu
}  // namespace mtd
