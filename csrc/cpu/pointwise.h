// The 1x1 convolutions of the fused CPU kernels as one product with a row-major weight W (n, k):
//
//   Y (m, c1-c0) = relu([Y +] X (m, k) W[c0:c1]^T [+ bias[c0:c1]])   pixel-major X and Y (leading dims ldx, ldy)
//
// (or, chunked over the input channels, Y (m, n) [+]= X (m, k1-k0) W[:, k0:k1]^T)
//
// A call with enough pixels packs W^T once (k rows padded for whole-vector loads) and runs the register-blocked
// small GEMM with bias and ReLU in registers; a small one (batch 1 on a 2x2 map), where packing would cost more
// than the product, calls BLAS and the epilogue on W as it is. Given W^T already packed (pack_pointwise, as
// torch.ops.mtd.rank_run keeps it between calls), every call runs the small GEMM: no packing, no BLAS call. Measured (Zen 5, AVX-512, 2 threads, VGG16's convs
// at 1/8 of their parameters, batch 64, fused kernels with MKL vs the small GEMM for every 1x1): the small GEMM
// was faster on 7 of 8 layers (e.g. Tucker-2 (132, 132) on 512 channels at 4x4: 3.5 vs 5.2 ms), up to ranks of 285.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/fused_common.h"
#include "cpu/small_gemm.h"

namespace mtd {
namespace cpu {

// Pixels per call from which packing pays (its cost is about k*n copies, the product's m*k*n/16 FMAs). Measured on
// the 32x VGG16 of e2e_cpu at batch 1: thresholds of 1, 16 and 64 pixels were no faster than 256, often slower.
constexpr int64_t kPackMinPixels = 256;

template <typename T>
class Pointwise {
 public:
  // w (n, k) row-major; `pixels` is how many rows the whole call will multiply.
  Pointwise(const T* w, int64_t n, int64_t k, int64_t pixels) : w_(w), n_(n), k_(k) {
    if (pixels < kPackMinPixels || n == 0) return;
    ld_ = padded_cols(n);
    packed_.assign(static_cast<size_t>(k * ld_), T(0));
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t kk = 0; kk < k; ++kk) packed_[kk * ld_ + j] = w[j * k + kk];
    }
  }

  // w (n, k) row-major and its packed W^T (k, ld) (ld >= padded_cols(n), zero past column n), kept by the caller.
  Pointwise(const T* w, int64_t n, int64_t k, const T* packed, int64_t ld)
      : w_(w), n_(n), k_(k), ld_(ld), external_(packed) {}

  void operator()(int64_t m, const T* x, int64_t ldx, T* y, int64_t ldy, int64_t c0, int64_t c1, bool accumulate,
                  const T* bias, bool relu) const {
    if (m <= 0 || c0 >= c1) return;
    const T* b = bias != nullptr ? bias + c0 : nullptr;
    if (const T* pk = packed()) {
      small_gemm(m, c1 - c0, k_, x, ldx, pk + c0, ld_, y, ldy, accumulate, b, relu);
      return;
    }
    // column-major Y^T (c1-c0, m) = W[c0:c1] (c1-c0, k) X^T (k, m)
    gemm(true, false, c1 - c0, m, k_, w_ + c0 * k_, k_, x, ldx, y, ldy, accumulate);
    epilogue(y, m, c1 - c0, ldy, true, b, relu);
  }

  void operator()(int64_t m, const T* x, int64_t ldx, T* y, int64_t ldy, const T* bias, bool relu) const {
    (*this)(m, x, ldx, y, ldy, 0, n_, false, bias, relu);
  }

  // Y (m, n) = X (m, k) W^T with X's columns in segments (small_gemm_segmented: X (i, kk) is
  // x[(kk / seg) * seg_ld + i * ldx + kk % seg]); only where W^T is packed (is_packed()).
  void segmented(int64_t m, const T* x, int64_t ldx, int64_t seg, int64_t seg_ld, T* y, int64_t ldy) const {
    if (m > 0 && n_ > 0) small_gemm_segmented(m, n_, k_, x, ldx, seg, seg_ld, packed(), ld_, y, ldy, false, nullptr, false);
  }

  bool is_packed() const { return packed() != nullptr; }

  // Y (m, n) [+]= X (m, k1-k0) W[:, k0:k1]^T: the product over a block of the input channels (no bias, ReLU).
  void k_block(int64_t m, const T* x, int64_t ldx, T* y, int64_t ldy, int64_t k0, int64_t k1, bool accumulate) const {
    if (m <= 0 || k0 >= k1 || n_ == 0) return;
    if (const T* pk = packed()) {
      small_gemm(m, n_, k1 - k0, x, ldx, pk + k0 * ld_, ld_, y, ldy, accumulate, nullptr, false);
      return;
    }
    gemm(true, false, n_, m, k1 - k0, w_ + k0, k_, x, ldx, y, ldy, accumulate);
  }

 private:
  // W^T (k, ld_): the caller's, or packed here; nullptr when BLAS runs the product
  const T* packed() const { return external_ != nullptr ? external_ : packed_.empty() ? nullptr : packed_.data(); }

  const T* w_;
  int64_t n_, k_, ld_ = 0;
  const T* external_ = nullptr;
  std::vector<T> packed_;
};

}  // namespace cpu
}  // namespace mtd
