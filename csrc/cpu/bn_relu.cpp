// Training-mode BatchNorm -> ReLU [-> 2x2 max-pool] on channels_last maps (mtd::bn_relu and its backward; schemas
// and reference in mtd_kernels/ops/bn_relu.py). PyTorch runs these as separate ops, about ten passes over the
// full-width maps a step; in the bf16 training step of a 39x VGG16 they took 42% of the time, more than every
// convolution's forward. Here: forward = one statistics pass + one pass that writes the (pooled) output; backward =
// one pass for the two per-channel sums + one that writes dx. Nothing is saved but the input: the ReLU mask and the
// pooling's argmax are recomputed from it.
//
// Every pass walks pixels (rows of C contiguous channels, the channels_last layout) a channel vector at a time; the
// row kernels (cpu/bn_relu_rows.h) are compiled for AVX-512, AVX2 and baseline x86-64 and picked by cpu/isa.h.
// Arithmetic is fp32 (per-channel sums in double) on the input's values, whatever its dtype; only what is stored
// (output, dx) is rounded to it. So on a bf16 map the ReLU mask and the pooling's argmax are those of the fp32
// values (PyTorch's separate ops compare the BatchNorm output after rounding it to bf16: a near-tie may go the other
// way, a subgradient as valid as PyTorch's).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/isa.h"
#include "cpu/simd.h"  // MTD_ALWAYS_INLINE
#include "op_checks.h"
#include "ops.h"

namespace mtd {
namespace {

using bf16_bits = uint16_t;

// The row kernels of one ISA level (one pixel = C contiguous channels; cpu/bn_relu_rows.h).
template <typename T>
struct Kernels {
  void (*stats)(const T*, int64_t, int64_t, float*, float*);
  void (*apply)(const T*, T*, int64_t, int64_t, const float*, const float*);
  void (*pool)(const T*, const T*, T*, int64_t, int64_t, const float*, const float*);
  void (*grad_sums)(const T*, const T*, int64_t, int64_t, const float*, const float*, const float*, float*, float*);
  void (*grad_x)(const T*, const T*, T*, int64_t, int64_t, const float*, const float*, const float*, const float*,
                 const float*);
  void (*pool_grad_sums)(const T*, const T*, const T*, int64_t, int64_t, const float*, const float*, const float*,
                         float*, float*);
  void (*pool_grad_x)(const T*, const T*, const T*, T*, T*, int64_t, bool, int64_t, const float*, const float*,
                      const float*, const float*, const float*);
  void (*stats_only_grad)(const T*, T*, int64_t, int64_t, const float*, const float*);
};

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
namespace avx512 {
constexpr int kBytes = 64;
#include "cpu/bn_relu_rows.h"
}  // namespace avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kBytes = 32;
#include "cpu/bn_relu_rows.h"
}  // namespace avx2
#pragma GCC pop_options
#endif
namespace base {
constexpr int kBytes = 16;
#include "cpu/bn_relu_rows.h"
}  // namespace base

template <typename T>
Kernels<T> kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  return MTD_BY_ISA(avx512::kernels<T>(), avx2::kernels<T>(), base::kernels<T>());
#else
  return base::kernels<T>();
#endif
}

constexpr int64_t kPad = 16;  // the widest vector's fp32 lanes (per-channel arrays are padded to a multiple)

// ---- the passes ----

constexpr int64_t kBlock = 64;  // pixels summed in fp32 before the sums move to double
int64_t padded(int64_t C) { return (C + kPad - 1) / kPad * kPad; }

// A per-channel float32 tensor as an array padded with zeros to padded(C).
std::vector<float> padded_copy(const at::Tensor& t) {
  const at::Tensor f = t.to(at::kFloat).contiguous();
  std::vector<float> out(padded(f.numel()), 0.0f);
  std::copy(f.data_ptr<float>(), f.data_ptr<float>() + f.numel(), out.begin());
  return out;
}

struct Geometry {
  int64_t n, c, h, w, ho, wo;
  bool pool;
  int64_t pixels() const { return n * h * w; }
};

Geometry geometry_of(const at::Tensor& x, bool pool) {
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  return {n, c, h, w, pool ? h / 2 : h, pool ? w / 2 : w, pool};
}

// Per-channel sums (two of them) over tasks run in parallel: each thread keeps its own double sums, added at the end.
// `task(t, s1, s2)` adds task t's contribution to the fp32 sums s1, s2 (zeroed before each task).
template <typename Task>
std::pair<std::vector<double>, std::vector<double>> channel_sums(int64_t tasks, int64_t C, const Task& task) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  std::vector<double> parts(2 * threads * C, 0.0);
  at::parallel_for(0, threads, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s1(padded(C)), s2(padded(C));
    for (int64_t th = b0; th < b1; ++th) {
      double* d1 = parts.data() + 2 * th * C;
      double* d2 = d1 + C;
      const int64_t t0 = tasks * th / threads, t1 = tasks * (th + 1) / threads;
      for (int64_t t = t0; t < t1; ++t) {
        std::fill(s1.begin(), s1.end(), 0.0f);
        std::fill(s2.begin(), s2.end(), 0.0f);
        task(t, s1.data(), s2.data());
        for (int64_t c = 0; c < C; ++c) {
          d1[c] += s1[c];
          d2[c] += s2[c];
        }
      }
    }
  });
  std::vector<double> a(C, 0.0), b(C, 0.0);
  for (int64_t th = 0; th < threads; ++th) {
    for (int64_t c = 0; c < C; ++c) {
      a[c] += parts[2 * th * C + c];
      b[c] += parts[(2 * th + 1) * C + c];
    }
  }
  return {a, b};
}

void check_args(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool pool) {
  TORCH_CHECK_VALUE(x.dim() == 4, "mtd.", op, ": input must be 4-D (N, C, H, W), got ", x.dim(), " dims");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "mtd.", op,
                    ": input must be float32 or bfloat16, got ", x.scalar_type());
  const int64_t C = x.size(1);
  for (const at::Tensor* t : {&weight, &bias}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == C, "mtd.", op, ": weight and bias must have shape (", C,
                      ",), got ", t->sizes());
    TORCH_CHECK_VALUE(t->is_floating_point() && t->device() == x.device(), "mtd.", op,
                      ": weight and bias must be floating tensors on the input's device");
  }
  TORCH_CHECK_VALUE(x.size(0) * x.size(2) * x.size(3) > 1, "mtd.", op,
                    ": batch statistics need more than one value per channel, got input shape ", x.sizes());
  TORCH_CHECK_VALUE(!pool || (x.size(2) >= 2 && x.size(3) >= 2), "mtd.", op,
                    ": 2x2 pooling needs an input of at least 2x2 pixels, got ", x.sizes());
}

// (scale, shift) of the normalisation: bn(x) = x * scale + shift.
std::pair<std::vector<float>, std::vector<float>> affine(const at::Tensor& mean, const at::Tensor& var,
                                                         const at::Tensor& weight, const at::Tensor& bias,
                                                         double eps, std::vector<float>* invstd_out = nullptr) {
  const int64_t C = mean.size(0);
  auto m = mean.accessor<float, 1>(), v = var.accessor<float, 1>();
  const std::vector<float> w = padded_copy(weight), b = padded_copy(bias);
  std::vector<float> scale(padded(C), 0.0f), shift(padded(C), 0.0f), invstd(C);
  for (int64_t c = 0; c < C; ++c) {
    invstd[c] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(v[c]) + eps));
    scale[c] = w[c] * invstd[c];
    shift[c] = b[c] - m[c] * scale[c];
  }
  if (invstd_out != nullptr) *invstd_out = invstd;
  return {scale, shift};
}

// The layout the op promises: channels_last in and out; another input is made channels_last for the kernel and its
// result given back contiguous (mtd_kernels/ops/bn_relu.py: layout).
at::Tensor as_channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }
at::Tensor in_layout_of(const at::Tensor& t, const at::Tensor& like) {
  return wants_channels_last(like) ? t : t.contiguous();
}

template <typename T>
void forward_impl(const at::Tensor& x, at::Tensor& y, const Geometry& g, at::Tensor& mean, at::Tensor& var,
                  const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const Kernels<T> k = kernels<T>();
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  T* yp = reinterpret_cast<T*>(y.data_ptr());
  const int64_t C = g.c, pixels = g.pixels();
  const int64_t blocks = (pixels + kBlock - 1) / kBlock;
  auto [sum, sq] = channel_sums(blocks, C, [&](int64_t b, float* s1, float* s2) {
    const int64_t r0 = b * kBlock;
    k.stats(xp + r0 * C, std::min(kBlock, pixels - r0), C, s1, s2);
  });
  auto m = mean.accessor<float, 1>(), v = var.accessor<float, 1>();
  for (int64_t c = 0; c < C; ++c) {
    const double mu = sum[c] / pixels;
    m[c] = static_cast<float>(mu);
    v[c] = static_cast<float>(std::max(sq[c] / pixels - mu * mu, 0.0));
  }
  const auto [scale, shift] = affine(mean, var, weight, bias, eps);
  if (!g.pool) {
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * kBlock;
        k.apply(xp + r0 * C, yp + r0 * C, std::min(kBlock, pixels - r0), C, scale.data(), shift.data());
      }
    });
    return;
  }
  at::parallel_for(0, g.n * g.ho, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / g.ho, oh = t % g.ho;
      const T* x0 = xp + ((n * g.h + 2 * oh) * g.w) * C;
      k.pool(x0, x0 + g.w * C, yp + t * g.wo * C, g.wo, C, scale.data(), shift.data());
    }
  });
}

template <typename T>
void backward_impl(const at::Tensor& grad, const at::Tensor& x, at::Tensor& dx, const Geometry& g,
                   const at::Tensor& mean, const at::Tensor& var, const at::Tensor& weight, const at::Tensor& bias,
                   double eps, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  const Kernels<T> k = kernels<T>();
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  const T* gp = reinterpret_cast<const T*>(grad.data_ptr());
  T* dp = reinterpret_cast<T*>(dx.data_ptr());
  const int64_t C = g.c, pixels = g.pixels();
  std::vector<float> invstd;
  const auto [scale, shift] = affine(mean, var, weight, bias, eps, &invstd);
  const std::vector<float> mean_padded = padded_copy(mean);
  const float* mp = mean_padded.data();
  const int64_t blocks = (pixels + kBlock - 1) / kBlock;
  std::pair<std::vector<double>, std::vector<double>> sums;
  if (!g.pool) {
    sums = channel_sums(blocks, C, [&](int64_t b, float* s1, float* s2) {
      const int64_t r0 = b * kBlock;
      k.grad_sums(xp + r0 * C, gp + r0 * C, std::min(kBlock, pixels - r0), C, scale.data(), shift.data(), mp, s1,
                  s2);
    });
  } else {
    sums = channel_sums(g.n * g.ho, C, [&](int64_t t, float* s1, float* s2) {
      const int64_t n = t / g.ho, oh = t % g.ho;
      const T* x0 = xp + ((n * g.h + 2 * oh) * g.w) * C;
      k.pool_grad_sums(x0, x0 + g.w * C, gp + t * g.wo * C, g.wo, C, scale.data(), shift.data(), mp, s1, s2);
    });
  }
  // dx = w * invstd * (g - mean(g) - (x - mean) * invstd^2 * mean(g * (x - mean))) = k1 g + k2 x + k3
  const std::vector<float> w = padded_copy(weight);
  std::vector<float> k1(padded(C), 0.0f), k2(padded(C), 0.0f), k3(padded(C), 0.0f);
  auto gw = grad_weight.accessor<float, 1>(), gb = grad_bias.accessor<float, 1>();
  for (int64_t c = 0; c < C; ++c) {
    const double is = invstd[c], mg = sums.first[c] / pixels, mgx = sums.second[c] / pixels;
    gb[c] = static_cast<float>(sums.first[c]);
    gw[c] = static_cast<float>(sums.second[c] * is);
    const double a = w[c] * is, b = -w[c] * is * is * is * mgx;
    k1[c] = static_cast<float>(a);
    k2[c] = static_cast<float>(b);
    k3[c] = static_cast<float>(-a * mg - b * mp[c]);
  }
  if (!g.pool) {
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * kBlock;
        k.grad_x(xp + r0 * C, gp + r0 * C, dp + r0 * C, std::min(kBlock, pixels - r0), C, scale.data(),
                 shift.data(), k1.data(), k2.data(), k3.data());
      }
    });
    return;
  }
  const bool tail_w = g.w % 2, tail_h = g.h % 2;
  at::parallel_for(0, g.n * g.ho, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / g.ho, oh = t % g.ho;
      const int64_t off = ((n * g.h + 2 * oh) * g.w) * C;
      k.pool_grad_x(xp + off, xp + off + g.w * C, gp + t * g.wo * C, dp + off, dp + off + g.w * C, g.wo, tail_w, C,
                    scale.data(), shift.data(), k1.data(), k2.data(), k3.data());
      if (tail_h && oh == g.ho - 1) {  // the image's last input row lies outside every window
        const int64_t last = ((n * g.h + g.h - 1) * g.w) * C;
        k.stats_only_grad(xp + last, dp + last, g.w, C, k2.data(), k3.data());
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                            const at::Tensor& bias, double eps, bool pool) {
  check_args("bn_relu", input, weight, bias, pool);
  const at::Tensor x = as_channels_last(input);
  const Geometry g = geometry_of(x, pool);
  at::Tensor y = at::empty({g.n, g.c, g.ho, g.wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor mean = at::empty({g.c}, x.options().dtype(at::kFloat));
  at::Tensor var = at::empty({g.c}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kFloat) {
    forward_impl<float>(x, y, g, mean, var, weight, bias, eps);
  } else {
    forward_impl<bf16_bits>(x, y, g, mean, var, weight, bias, eps);
  }
  return {in_layout_of(y, input), mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_relu_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                                                     const at::Tensor& weight, const at::Tensor& bias,
                                                                     const at::Tensor& mean, const at::Tensor& var,
                                                                     double eps, bool pool) {
  check_args("bn_relu_backward", input, weight, bias, pool);
  const at::Tensor x = as_channels_last(input);
  const Geometry g = geometry_of(x, pool);
  TORCH_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == g.n && grad.size(1) == g.c && grad.size(2) == g.ho &&
                        grad.size(3) == g.wo,
                    "mtd.bn_relu_backward: grad must have the output's shape [", g.n, ", ", g.c, ", ", g.ho, ", ", g.wo,
                    "], got ", grad.sizes());
  for (const at::Tensor* t : {&mean, &var}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == g.c && t->scalar_type() == at::kFloat, "mtd.bn_relu_backward: ",
                      "mean and var must be float32 of shape (", g.c, ",), got ", t->scalar_type(), " ", t->sizes());
  }
  const at::Tensor dy = as_channels_last(grad.to(x.scalar_type()));
  at::Tensor dx = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor grad_weight = at::empty({g.c}, x.options().dtype(at::kFloat));
  at::Tensor grad_bias = at::empty({g.c}, x.options().dtype(at::kFloat));
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  if (x.scalar_type() == at::kFloat) {
    backward_impl<float>(dy, x, dx, g, m, v, weight, bias, eps, grad_weight, grad_bias);
  } else {
    backward_impl<bf16_bits>(dy, x, dx, g, m, v, weight, bias, eps, grad_weight, grad_bias);
  }
  return {in_layout_of(dx, input), grad_weight.to(weight.scalar_type()), grad_bias.to(bias.scalar_type())};
}

}  // namespace mtd
