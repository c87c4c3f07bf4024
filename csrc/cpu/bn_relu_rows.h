// The row kernels of mtd::bn_relu (csrc/cpu/bn_relu.cpp), written once with GCC vector types of kBytes bytes.
// bn_relu.cpp includes this file once per ISA level, inside `#pragma GCC target(...)` and a namespace that defines
// kBytes (64: AVX-512, 32: AVX2, 16: baseline): every helper is then compiled for that level. (Written as
// ISA-neutral always_inline templates instead, as cpu/simd.h does, GCC 12 lowers their vector compares before
// inlining and the selects run one lane at a time: measured 25x slower.)
// No include guard: included three times. Needs <cstdint>, <cstring>, <type_traits>, <algorithm>, cpu/simd.h
// (Vec, MTD_ALWAYS_INLINE) and Kernels<T>.

// ---- channel vectors: L = B / 4 fp32 lanes; a bf16 map is widened on load and rounded on store ----

template <int B>
using F32 = typename cpu::simd::Vec<float, B>::type;
template <int B>
using U32 = typename cpu::simd::Vec<uint32_t, B>::type;
template <int B>
using U16 = typename cpu::simd::Vec<uint16_t, B / 2>::type;

template <int B>
MTD_ALWAYS_INLINE F32<B> splat(float v) {
  return F32<B>{} + v;
}

template <typename T, int B>
MTD_ALWAYS_INLINE F32<B> load_full(const T* p) {
  F32<B> v;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(&v, p, B);
  } else {
    U16<B> h;
    std::memcpy(&h, p, B / 2);
    const U32<B> w = __builtin_convertvector(h, U32<B>) << 16;
    std::memcpy(&v, &w, B);
  }
  return v;
}

// n < L lanes (the channels past a multiple of L); the others read as 0.
template <typename T, int B>
MTD_ALWAYS_INLINE F32<B> load(const T* p, int64_t n) {
  constexpr int64_t L = B / 4;
  if (n == L) return load_full<T, B>(p);
  T buf[L] = {};
  std::memcpy(buf, p, n * sizeof(T));
  return load_full<T, B>(buf);
}

// v rounded to the storage type (round to nearest even for bf16; a NaN stays a NaN), still as fp32 lanes.
template <typename T, int B>
MTD_ALWAYS_INLINE F32<B> rounded(F32<B> v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    U32<B> bits;
    std::memcpy(&bits, &v, B);
    const U32<B> even = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    F32<B> r;
    std::memcpy(&r, &even, B);
    return v == v ? r : v;  // a NaN stays a NaN (a float select: see window_grads)
  }
}

// Stores v (already rounded to T) to n lanes.
template <typename T, int B>
MTD_ALWAYS_INLINE void store(T* p, F32<B> v, int64_t n) {
  constexpr int64_t L = B / 4;
  T buf[L];
  T* dst = n == L ? p : buf;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, &v, B);
  } else {
    U32<B> bits;
    std::memcpy(&bits, &v, B);
    const U16<B> h = __builtin_convertvector(bits >> 16, U16<B>);
    std::memcpy(dst, &h, B / 2);
  }
  if (n != L) std::memcpy(p, buf, n * sizeof(T));
}

template <int B>
MTD_ALWAYS_INLINE F32<B> vmax(F32<B> a, F32<B> b) {
  return a > b ? a : b;
}

template <int B>
MTD_ALWAYS_INLINE F32<B> relu(F32<B> a) {
  return a > 0.0f ? a : 0.0f;
}

// Per-channel arrays (sums, scale, shift, mean, k1..k3) are padded to a multiple of 16 lanes (bn_relu.cpp: kPad),
// so whole vectors load and accumulate there; only the maps need partial vectors.

template <int B>
MTD_ALWAYS_INLINE F32<B> at(const float* p) {
  F32<B> v;
  std::memcpy(&v, p, B);
  return v;
}

// ---- row kernels (one pixel = C contiguous channels) ----

// sum[c] += x, sq[c] += x^2 over `rows` pixels.
template <typename T, int B>
void stats_body(const T* __restrict x, int64_t rows, int64_t C, float* __restrict sum, float* __restrict sq) {
  constexpr int64_t L = B / 4;
  for (int64_t c = 0; c < C; c += L) {
    const int64_t n = std::min(L, C - c);
    F32<B> s = at<B>(sum + c), q = at<B>(sq + c);
    for (int64_t r = 0; r < rows; ++r) {
      const F32<B> v = load<T, B>(x + r * C + c, n);
      s += v;
      q += v * v;
    }
    std::memcpy(sum + c, &s, B);
    std::memcpy(sq + c, &q, B);
  }
}

// y = relu(x * a + b) (Relu) or x * a + b over `rows` pixels: the forward's output without pooling (a, b = scale,
// shift), and dx = k2 * x + k3 where no gradient comes through the pooling (an odd input height's last row).
template <typename T, int B, bool Relu>
void affine_body(const T* __restrict x, T* __restrict y, int64_t rows, int64_t C, const float* __restrict a_c,
                 const float* __restrict b_c) {
  constexpr int64_t L = B / 4;
  for (int64_t c = 0; c < C; c += L) {
    const int64_t n = std::min(L, C - c);
    const F32<B> a = at<B>(a_c + c), b = at<B>(b_c + c);
    for (int64_t r = 0; r < rows; ++r) {
      const F32<B> v = load<T, B>(x + r * C + c, n) * a + b;
      store<T, B>(y + r * C + c, rounded<T, B>(Relu ? relu<B>(v) : v), n);
    }
  }
}

// One output row of the pooled map: y[wo] = max over the 2x2 window of relu(bn(x)). `x0`, `x1`: the window's two
// input rows; `wo` windows.
template <typename T, int B>
void pool_body(const T* __restrict x0, const T* __restrict x1, T* __restrict y, int64_t wo, int64_t C,
               const float* __restrict scale, const float* __restrict shift) {
  constexpr int64_t L = B / 4;
  for (int64_t c = 0; c < C; c += L) {
    const int64_t n = std::min(L, C - c);
    const F32<B> a = at<B>(scale + c), b = at<B>(shift + c);
    for (int64_t w = 0; w < wo; ++w) {
      const T* p = x0 + 2 * w * C + c;
      const T* q = x1 + 2 * w * C + c;
      const F32<B> m = vmax<B>(vmax<B>(load<T, B>(p, n) * a + b, load<T, B>(p + C, n) * a + b),
                               vmax<B>(load<T, B>(q, n) * a + b, load<T, B>(q + C, n) * a + b));
      store<T, B>(y + w * C + c, rounded<T, B>(relu<B>(m)), n);
    }
  }
}

// Backward sums without pooling: g = dy where bn(x) > 0; sum_g[c] += g, sum_gx[c] += g * (x - mean).
template <typename T, int B>
void grad_sums_body(const T* __restrict x, const T* __restrict dy, int64_t rows, int64_t C,
                    const float* __restrict scale, const float* __restrict shift, const float* __restrict mean,
                    float* __restrict sum_g, float* __restrict sum_gx) {
  constexpr int64_t L = B / 4;
  for (int64_t c = 0; c < C; c += L) {
    const int64_t n = std::min(L, C - c);
    const F32<B> a = at<B>(scale + c), b = at<B>(shift + c), mu = at<B>(mean + c);
    F32<B> sg = at<B>(sum_g + c), sgx = at<B>(sum_gx + c);
    for (int64_t r = 0; r < rows; ++r) {
      const F32<B> v = load<T, B>(x + r * C + c, n);
      const F32<B> g = v * a + b > 0.0f ? load<T, B>(dy + r * C + c, n) : 0.0f;
      sg += g;
      sgx += g * (v - mu);
    }
    std::memcpy(sum_g + c, &sg, B);
    std::memcpy(sum_gx + c, &sgx, B);
  }
}

// dx = k1 * g + k2 * x + k3 without pooling (g as in grad_sums_body).
template <typename T, int B>
void grad_x_body(const T* __restrict x, const T* __restrict dy, T* __restrict dx, int64_t rows, int64_t C,
                 const float* __restrict scale, const float* __restrict shift, const float* __restrict k1,
                 const float* __restrict k2, const float* __restrict k3) {
  constexpr int64_t L = B / 4;
  for (int64_t c = 0; c < C; c += L) {
    const int64_t n = std::min(L, C - c);
    const F32<B> a = at<B>(scale + c), b = at<B>(shift + c), p = at<B>(k1 + c), q = at<B>(k2 + c), o = at<B>(k3 + c);
    for (int64_t r = 0; r < rows; ++r) {
      const F32<B> v = load<T, B>(x + r * C + c, n);
      const F32<B> g = v * a + b > 0.0f ? load<T, B>(dy + r * C + c, n) : 0.0f;
      store<T, B>(dx + r * C + c, rounded<T, B>(p * g + q * v + o), n);
    }
  }
}

// The gradient each of a 2x2 window's inputs receives: dy to the first maximum of the four ReLU outputs (fp32, as
// the forward computed them; PyTorch's max_pool2d also keeps the first of equal values, scanning row by row), if
// that maximum is positive; 0 to the others.
template <typename T, int B>
MTD_ALWAYS_INLINE void window_grads(const F32<B> (&v)[4], F32<B> a, F32<B> b, F32<B> dy, F32<B> (&g)[4]) {
  // Written with float selects only: GCC 12 scalarises integer masks from vector compares (measured 25x slower).
  F32<B> z[4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) z[i] = relu<B>(v[i] * a + b);
  const F32<B> m01 = vmax<B>(z[0], z[1]), m23 = vmax<B>(z[2], z[3]);
  const F32<B> zero = splat<B>(0.0f);
  const F32<B> d = vmax<B>(m01, m23) > 0.0f ? dy : zero;
  g[0] = z[0] >= vmax<B>(z[1], m23) ? d : zero;  // z0 is a maximum
  g[1] = z[1] > z[0] ? (z[1] >= m23 ? d : zero) : zero;  // z1 is one and z0 is not
  g[2] = z[2] > m01 ? (z[2] >= z[3] ? d : zero) : zero;
  g[3] = z[3] > vmax<B>(m01, z[2]) ? d : zero;
}

// Backward sums of one pooled output row (`wo` windows over input rows x0, x1; dy: the pooled gradient row).
template <typename T, int B>
void pool_grad_sums_body(const T* __restrict x0, const T* __restrict x1, const T* __restrict dy, int64_t wo, int64_t C,
                         const float* __restrict scale, const float* __restrict shift, const float* __restrict mean,
                         float* __restrict sum_g, float* __restrict sum_gx) {
  constexpr int64_t L = B / 4;
  for (int64_t c = 0; c < C; c += L) {
    const int64_t n = std::min(L, C - c);
    const F32<B> a = at<B>(scale + c), b = at<B>(shift + c), mu = at<B>(mean + c);
    F32<B> sg = at<B>(sum_g + c), sgx = at<B>(sum_gx + c);
    for (int64_t w = 0; w < wo; ++w) {
      const T* p = x0 + 2 * w * C + c;
      const T* q = x1 + 2 * w * C + c;
      const F32<B> v[4] = {load<T, B>(p, n), load<T, B>(p + C, n), load<T, B>(q, n), load<T, B>(q + C, n)};
      F32<B> g[4];
      window_grads<T, B>(v, a, b, load<T, B>(dy + w * C + c, n), g);
      sg += (g[0] + g[1]) + (g[2] + g[3]);
      sgx += (g[0] * (v[0] - mu) + g[1] * (v[1] - mu)) + (g[2] * (v[2] - mu) + g[3] * (v[3] - mu));
    }
    std::memcpy(sum_g + c, &sg, B);
    std::memcpy(sum_gx + c, &sgx, B);
  }
}

// dx of one pooled output row's windows; `tail`: an odd input width leaves a last column outside every window.
template <typename T, int B>
void pool_grad_x_body(const T* __restrict x0, const T* __restrict x1, const T* __restrict dy, T* __restrict d0,
                      T* __restrict d1, int64_t wo, bool tail, int64_t C, const float* __restrict scale,
                      const float* __restrict shift, const float* __restrict k1, const float* __restrict k2,
                      const float* __restrict k3) {
  constexpr int64_t L = B / 4;
  for (int64_t c = 0; c < C; c += L) {
    const int64_t n = std::min(L, C - c);
    const F32<B> a = at<B>(scale + c), b = at<B>(shift + c), p1 = at<B>(k1 + c), p2 = at<B>(k2 + c), p3 = at<B>(k3 + c);
    for (int64_t w = 0; w < wo; ++w) {
      const int64_t o = 2 * w * C + c;
      const F32<B> v[4] = {load<T, B>(x0 + o, n), load<T, B>(x0 + o + C, n), load<T, B>(x1 + o, n),
                           load<T, B>(x1 + o + C, n)};
      F32<B> g[4];
      window_grads<T, B>(v, a, b, load<T, B>(dy + w * C + c, n), g);
      store<T, B>(d0 + o, rounded<T, B>(p1 * g[0] + p2 * v[0] + p3), n);
      store<T, B>(d0 + o + C, rounded<T, B>(p1 * g[1] + p2 * v[1] + p3), n);
      store<T, B>(d1 + o, rounded<T, B>(p1 * g[2] + p2 * v[2] + p3), n);
      store<T, B>(d1 + o + C, rounded<T, B>(p1 * g[3] + p2 * v[3] + p3), n);
    }
    if (tail) {  // the last column of both rows: no gradient through the pooling, only the statistics' terms
      const int64_t o = 2 * wo * C + c;
      store<T, B>(d0 + o, rounded<T, B>(p2 * load<T, B>(x0 + o, n) + p3), n);
      store<T, B>(d1 + o, rounded<T, B>(p2 * load<T, B>(x1 + o, n) + p3), n);
    }
  }
}

template <typename T>
Kernels<T> kernels() {
  return {stats_body<T, kBytes>,     affine_body<T, kBytes, true>, pool_body<T, kBytes>,
          grad_sums_body<T, kBytes>, grad_x_body<T, kBytes>,       pool_grad_sums_body<T, kBytes>,
          pool_grad_x_body<T, kBytes>, affine_body<T, kBytes, false>};
}
