// Fused Tucker-2 conv on CPU: 1x1 (R1,S) -> dense kh x kw core (R2,R1) -> 1x1 (T,R2) + bias [ReLU].
// Same pipeline as cp_conv2d; the middle stage is an im2col of the chunk's U (pixel-major, so each
// tap is a contiguous copy of R1 values) and one GEMM with the core, all in the task's L2 scratch.
#include <cstring>

#include "cpu/fused_pipeline.h"
#include "cpu/path_choice.h"
#include "op_checks.h"
#include "ops.h"

namespace mtd {
namespace {

template <typename T>
struct TuckerCore {
  int64_t r1, r2;
  const T* core;        // (R2, K) row-major; K = (tap, R1) if tap_major else (R1, tap), as the im2col rows
  cpu::Window g;
  bool tap_major;       // im2col copies contiguous R1 runs (needs the permuted core) or scatters them

  int64_t k() const { return g.kh * g.kw * r1; }
  bool pointwise() const {  // 1x1 core without stride/padding: U already is the im2col matrix
    return g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  }
  int64_t extra_elems(int64_t rows_out) const { return pointwise() ? 0 : rows_out * g.wo * k(); }

  void run(const T* u, int64_t lo, int64_t rows_in, int64_t oh0, int64_t oh1, T* cols, T* v) const {
    const int64_t kk = k(), p = (oh1 - oh0) * g.wo;
    if (!pointwise()) {
      im2col(u, lo, rows_in, oh0, oh1, cols);  // (P, kh*kw*R1)
      u = cols;
    }
    // V (P, R2) = cols (P, K) * core^T, i.e. column-major V(R2, P) = core(R2, K) cols(K, P)
    cpu::gemm(true, false, r2, p, kk, core, kk, u, kk, v, r2);
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
        if (c0 < c1) cpu::gemm(true, false, c1 - c0, p, kk, core + c0 * kk, kk, u, kk, v + c0, r2);
      }
    });
  }

  void im2col(const T* u, int64_t lo, int64_t rows_in, int64_t oh0, int64_t oh1, T* cols) const {
    const int64_t taps = g.kh * g.kw;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      for (int64_t ow = 0; ow < g.wo; ++ow) {
        T* pixel = cols + ((oh - oh0) * g.wo + ow) * k();  // one im2col row (K,)
        for (int64_t ki = 0; ki < g.kh; ++ki) {
          const int64_t row = oh * g.sh - g.ph + ki * g.dh - lo;
          for (int64_t kj = 0; kj < g.kw; ++kj) {
            const int64_t col = ow * g.sw - g.pw + kj * g.dw;
            const int64_t tap = ki * g.kw + kj;
            const bool inside = row >= 0 && row < rows_in && col >= 0 && col < g.w;
            const T* src = inside ? u + (row * g.w + col) * r1 : nullptr;  // outside: zero padding
            if (tap_major) {  // K = (tap, R1): a contiguous run of R1 values
              T* dst = pixel + tap * r1;
              if (inside) {
                std::memcpy(dst, src, static_cast<size_t>(r1) * sizeof(T));
              } else {
                std::memset(dst, 0, static_cast<size_t>(r1) * sizeof(T));
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

at::Tensor tucker_chain(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_core,
                        const at::Tensor& w_last, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  auto y = at::conv2d(input, w_first);
  y = at::conv2d(y, w_core, {}, stride, padding, dilation);
  return cpu::finish_chain(input, at::conv2d(y, w_last, bias), relu);  // bias inside oneDNN's conv
}

}  // namespace

at::Tensor tucker_conv2d_cpu(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_core,
                             const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             bool relu) {
  check_common("tucker_conv2d", input, {w_first, w_core, w_last}, bias, stride, padding, dilation);
  check_tucker_shapes(w_first, w_core, w_last);
  const int64_t r1 = w_core.size(1), r2 = w_core.size(0), kh = w_core.size(2), kw = w_core.size(3);
  const cpu::Window g = cpu::make_window("tucker_conv2d", input, kh, kw, stride, padding, dilation);
  if (!cpu::fused_supported(input, r1, r2, w_last.size(0))) {
    return tucker_chain(input, w_first, w_core, w_last, bias, stride, padding, dilation, relu);
  }
  // Permuting the core to (R2, kh, kw, R1) makes the im2col contiguous copies, but costs a strided
  // pass over the whole core (R2*K) instead of strided im2col writes (pixels*K): worth it only when
  // the call has more output pixels than core rows.
  auto fused = [&] {
    const bool tap_major = r2 < input.size(0) * g.ho * g.wo;
    const at::Tensor core = tap_major ? w_core.permute({0, 2, 3, 1}).contiguous() : w_core.contiguous();
    at::Tensor out;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "tucker_conv2d_cpu", [&] {
      const TuckerCore<scalar_t> mid{r1, r2, core.data_ptr<scalar_t>(), g, tap_major};
      out = cpu::run_fused<scalar_t>(input, w_first, w_last, bias, relu, g, mid);
    });
    return out;
  };
  auto chain = [&] { return tucker_chain(input, w_first, w_core, w_last, bias, stride, padding, dilation, relu); };
  return cpu::run_fastest("tucker_conv2d", input, {w_first, w_core, w_last}, bias, stride, padding, dilation, relu,
                          fused, chain);
}

}  // namespace mtd
