// Argument checks, tiling plan and the raw-pointer GEMM shared by the fused CPU kernels.
#include "cpu/fused_common.h"
#include "cpu/fused_pipeline.h"

#include <dlfcn.h>

#include <climits>
#include <string>

namespace mtd {
namespace cpu {

namespace {
std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }
}  // namespace

void check_common(const char* op, const at::Tensor& x, at::TensorList weights,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(x.dim() == 4, "mtd.", op, ": input must be 4-D (N, C, H, W), got shape ", shape_str(x));
  for (const auto& w : weights) {
    TORCH_CHECK_VALUE(w.dim() == 4, "mtd.", op, ": every factor must be a 4-D conv weight, got shape ",
                      shape_str(w));
    TORCH_CHECK_VALUE(w.scalar_type() == x.scalar_type() && w.device() == x.device(), "mtd.", op,
                      ": factors must match the input's dtype and device (", x.scalar_type(), ", ", x.device(),
                      "), got ", w.scalar_type(), " on ", w.device());
  }
  const bool has_bias = bias.has_value() && bias->defined();
  if (has_bias) {
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(), "mtd.", op,
                      ": bias must match the input's dtype and device");
  }
  TORCH_CHECK_VALUE(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "mtd.", op,
                    ": stride, padding and dilation must be pairs");
  TORCH_CHECK_VALUE(std::min(stride[0], stride[1]) >= 1 && std::min(dilation[0], dilation[1]) >= 1 &&
                        std::min(padding[0], padding[1]) >= 0,
                    "mtd.", op, ": stride and dilation must be >= 1 and padding >= 0, got stride=", stride,
                    " padding=", padding, " dilation=", dilation);
  const at::Tensor& w_first = weights.front();
  const at::Tensor& w_last = weights.back();
  TORCH_CHECK_VALUE(w_first.size(2) == 1 && w_first.size(3) == 1 && w_last.size(2) == 1 && w_last.size(3) == 1,
                    "mtd.", op, ": the first and last factors must be 1x1 conv weights");
  TORCH_CHECK_VALUE(w_first.size(1) == x.size(1), "mtd.", op, ": input has ", x.size(1),
                    " channels but the first factor expects ", w_first.size(1));
  if (has_bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == w_last.size(0), "mtd.", op, ": bias must have shape (",
                      w_last.size(0), ",), got ", shape_str(*bias));
  }
}

Window make_window(const char* op, const at::Tensor& x, int64_t kh, int64_t kw, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  Window g{};
  g.h = x.size(2);
  g.w = x.size(3);
  g.kh = kh;
  g.kw = kw;
  g.sh = stride[0];
  g.sw = stride[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  // floor division of a possibly negative numerator, as in the Python conv_out_size
  auto out_size = [](int64_t size, int64_t k, int64_t s, int64_t p, int64_t d) {
    const int64_t num = size + 2 * p - d * (k - 1) - 1;
    return (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  };
  g.ho = out_size(g.h, kh, g.sh, g.ph, g.dh);
  g.wo = out_size(g.w, kw, g.sw, g.pw, g.dw);
  TORCH_CHECK_VALUE(g.ho >= 1 && g.wo >= 1, "mtd.", op, ": input of spatial size (", g.h, ", ", g.w,
                    ") is too small for this kernel (output would be ", g.ho, "x", g.wo, ")");
  return g;
}

bool wants_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

at::Tensor finish_chain(const at::Tensor& x, at::Tensor y, const std::optional<at::Tensor>& bias, bool relu) {
  if (bias.has_value() && bias->defined()) y = y + bias->view({1, -1, 1, 1});
  if (relu) y = at::relu(y);
  return y.contiguous(wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

bool fused_supported(const at::Tensor& x, int64_t r1, int64_t r2, int64_t t) {
  const auto dt = x.scalar_type();
  return (dt == at::kFloat || dt == at::kDouble) && x.numel() > 0 && r1 > 0 && r2 > 0 && t > 0;
}

Tiling plan_tiling(int64_t n, const Window& g, int64_t elem_size, int64_t in_elems_per_row,
                   int64_t scratch_elems_per_out_row, int64_t out_elems_per_row) {
  // Working set of a task (its U, middle scratch, V and output tile) kept within about half the
  // 2 MiB L2 of the target machine, leaving room for the two 1x1 weight matrices.
  constexpr int64_t kTaskBudgetBytes = 1 << 20;
  // GEMMs over fewer pixels than this run well below MKL's large-matrix speed (measured: a 285x512
  // weight times 4 pixels is ~3x slower per pixel than times 64), so tiny images are grouped.
  constexpr int64_t kMinPixelsPerTask = 256;
  auto bytes = [&](int64_t rows) {
    return (g.max_rows_in(rows) * in_elems_per_row + rows * (scratch_elems_per_out_row + out_elems_per_row)) *
           elem_size;
  };
  int64_t chunks = 1;
  while (chunks < g.ho && bytes((g.ho + chunks - 1) / chunks) > kTaskBudgetBytes) ++chunks;
  const int64_t threads = at::get_num_threads();
  Tiling tl{0, 0, 1, false};
  if (threads > 1 && n < threads && n * chunks < threads) {
    // Fewer images than threads: split images into row chunks, unless each chunk's halo (input rows
    // the first 1x1 conv recomputes) would add more than a quarter to that stage.
    chunks = std::min<int64_t>(g.ho, (threads + n - 1) / n);
    const int64_t rows = (g.ho + chunks - 1) / chunks;
    int64_t rows_in = 0;
    for (int64_t oh0 = 0; oh0 < g.ho; oh0 += rows) {
      rows_in += std::max<int64_t>(0, g.rows_hi(std::min(g.ho, oh0 + rows)) - g.rows_lo(oh0));
    }
    tl.channel_split = 4 * rows_in > 5 * g.h || chunks < threads;
  } else if (chunks == 1) {
    // Tiny images: a task takes several so its GEMMs stay efficient (channels_last images are
    // contiguous rows of one matrix; NCHW ones are staged through a channels_last copy).
    const int64_t want = (kMinPixelsPerTask + g.ho * g.wo - 1) / (g.ho * g.wo);
    const int64_t fit = std::max<int64_t>(1, kTaskBudgetBytes / std::max<int64_t>(1, bytes(g.ho)));
    tl.images_per_task = std::max<int64_t>(1, std::min({want, fit, n / threads}));
  }
  tl.rows_per_chunk = (g.ho + chunks - 1) / chunks;
  tl.chunks_per_image = (g.ho + tl.rows_per_chunk - 1) / tl.rows_per_chunk;
  return tl;
}

// ---------------------------------------------------------------------------------------------
// GEMM: the Fortran BLAS symbols of the MKL linked into libtorch_cpu, found at run time so the
// extension still loads (and stays correct through at::mm_out) on a torch built without them.
namespace {
using sgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                          const float*, const int*, const float*, const int*, const float*, float*, const int*);
using dgemm_fn = void (*)(const char*, const char*, const int*, const int*, const int*, const double*,
                          const double*, const int*, const double*, const int*, const double*, double*,
                          const int*);

void* find_blas_symbol(const char* name) {
  if (void* sym = dlsym(RTLD_DEFAULT, name)) return sym;
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &info) == 0 || info.dli_fname == nullptr) return nullptr;
  void* lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return nullptr;
  void* sym = dlsym(lib, name);
  dlclose(lib);  // drops only the reference dlopen(RTLD_NOLOAD) added
  return sym;
}

sgemm_fn blas_sgemm() {
  static const sgemm_fn fn = reinterpret_cast<sgemm_fn>(find_blas_symbol("sgemm_"));
  return fn;
}
dgemm_fn blas_dgemm() {
  static const dgemm_fn fn = reinterpret_cast<dgemm_fn>(find_blas_symbol("dgemm_"));
  return fn;
}

bool fits_int(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  return std::max({m, n, k, lda, ldb, ldc}) <= INT_MAX;
}

// Column-major (rows, cols) matrix with leading dimension ld, as a strided tensor view.
template <typename T>
at::Tensor cm_view(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {1, ld}, options);
}

template <typename T>
void gemm_fallback(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                   int64_t ldb, T* c, int64_t ldc) {
  at::Tensor av = ta ? cm_view(a, k, m, lda).t() : cm_view(a, m, k, lda);
  at::Tensor bv = tb ? cm_view(b, n, k, ldb).t() : cm_view(b, k, n, ldb);
  at::Tensor cv = cm_view(c, m, n, ldc);
  cv.copy_(at::mm(av, bv));
}
}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const sgemm_fn fn = blas_sgemm();
  if (fn == nullptr || !fits_int(m, n, k, lda, ldb, ldc)) return gemm_fallback(ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
  const char tra = ta ? 'T' : 'N', trb = tb ? 'T' : 'N';
  const int im = int(m), in = int(n), ik = int(k), ila = int(lda), ilb = int(ldb), ilc = int(ldc);
  const float one = 1.f, zero = 0.f;
  fn(&tra, &trb, &im, &in, &ik, &one, a, &ila, b, &ilb, &zero, c, &ilc);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, double* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  const dgemm_fn fn = blas_dgemm();
  if (fn == nullptr || !fits_int(m, n, k, lda, ldb, ldc)) return gemm_fallback(ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
  const char tra = ta ? 'T' : 'N', trb = tb ? 'T' : 'N';
  const int im = int(m), in = int(n), ik = int(k), ila = int(lda), ilb = int(ldb), ilc = int(ldc);
  const double one = 1., zero = 0.;
  fn(&tra, &trb, &im, &in, &ik, &one, a, &ila, b, &ilb, &zero, c, &ilc);
}

}  // namespace cpu
}  // namespace mtd
