// Window geometry, tiling plan and the raw-pointer GEMM shared by the fused CPU kernels.
#include "cpu/fused_common.h"
#include "cpu/fused_pipeline.h"

#include <dlfcn.h>

#include <climits>
#include <tuple>

namespace mtd {
namespace cpu {

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
  std::tie(g.ho, g.wo) = output_hw(op, x, kh, kw, stride, padding, dilation);
  return g;
}

at::Tensor finish_chain(const at::Tensor& x, at::Tensor y, bool relu) {
  if (relu) y.relu_();  // y is the last conv's fresh output
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
                   int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  at::Tensor av = ta ? cm_view(a, k, m, lda).t() : cm_view(a, m, k, lda);
  at::Tensor bv = tb ? cm_view(b, n, k, ldb).t() : cm_view(b, k, n, ldb);
  at::Tensor cv = cm_view(c, m, n, ldc);
  if (accumulate) {
    cv.add_(at::mm(av, bv));
  } else {
    cv.copy_(at::mm(av, bv));
  }
}
}  // namespace

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  const sgemm_fn fn = blas_sgemm();
  if (fn == nullptr || !fits_int(m, n, k, lda, ldb, ldc)) {
    return gemm_fallback(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  }
  const char tra = ta ? 'T' : 'N', trb = tb ? 'T' : 'N';
  const int im = int(m), in = int(n), ik = int(k), ila = int(lda), ilb = int(ldb), ilc = int(ldc);
  const float one = 1.f, beta = accumulate ? 1.f : 0.f;
  fn(&tra, &trb, &im, &in, &ik, &one, a, &ila, b, &ilb, &beta, c, &ilc);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
          int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  const dgemm_fn fn = blas_dgemm();
  if (fn == nullptr || !fits_int(m, n, k, lda, ldb, ldc)) {
    return gemm_fallback(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, accumulate);
  }
  const char tra = ta ? 'T' : 'N', trb = tb ? 'T' : 'N';
  const int im = int(m), in = int(n), ik = int(k), ila = int(lda), ilb = int(ldb), ilc = int(ldc);
  const double one = 1., beta = accumulate ? 1. : 0.;
  fn(&tra, &trb, &im, &in, &ik, &one, a, &ila, b, &ilb, &beta, c, &ilc);
}

}  // namespace cpu
}  // namespace mtd
