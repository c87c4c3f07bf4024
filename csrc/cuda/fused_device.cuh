// Device-side building blocks shared by the fused CP / CP4 / Tucker-2 CUDA kernels.
//
// Every fused kernel has the same shape. One thread block owns one output tile: a th x tw patch of
// output pixels in each of nb consecutive images (P = nb*th*tw, padded to 16; several images only
// for small feature maps, so the weights are reused over enough pixels), and loops over blocks of
// tb output channels.
//   phase 1  for each chunk of the first rank: the first 1x1 conv on the tile plus its halo
//            (an (rc x S) @ (S x halo) GEMM, S streamed in chunks of sc), then the op's middle
//            stage (depthwise / separable / dense core) into the rank-R2 intermediate `z2`
//            (R2 x P, stored in the input dtype, like the eager chain rounds it);
//   phase 2  for each block of output channels: (tb x R2) @ (R2 x P) into fp32 accumulators,
//            then bias + ReLU and a strided store (NCHW or channels_last alike).
// All GEMM operands live in shared memory, padded with zeros to multiples of 16 so the same
// buffers feed the tensor cores (wmma, fp16/bf16 on sm_80+) or the plain FMA loop.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

namespace mtd {
namespace cuda_detail {

constexpr int kThreads = 256;  // threads per block (8 warps)
constexpr int kWarps = kThreads / 32;
constexpr int kFrag = 16;      // wmma fragment edge; every GEMM dimension is padded to it

__host__ __device__ constexpr int round_up(int v, int m) { return (v + m - 1) / m * m; }

// ---- scalar conversions (explicit intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__) ----
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---- kernel arguments ----
struct Geometry4d {  // sizes and element strides of an (N, C, H, W) tensor, any memory format
  int n, c, h, w;
  int64_t sn, sc, sh, sw;
};

struct Tile {
  int th, tw;         // output rows / cols per image
  int nb;             // images per tile
  int pimg;           // th * tw: output pixels per image
  int p;              // nb * pimg rounded up to 16: GEMM width of the middle and last stages
  int hi, wi, hw_in;  // rows / cols of the first intermediate per image (tile + halo), hi * wi
  int in_pad;         // nb * hw_in rounded up to 16: GEMM width of the first pointwise stage
  int sc, rc, tb;     // input-channel chunk, rank chunk, output-channel block (multiples of 16)
  int tiles_w;        // tiles per output row (blockIdx.x -> (tile_row, tile_col))
};

// Column p of a tile: which image, which output row / col inside the tile, and whether it is a
// real pixel (p < nb * pimg) rather than padding up to 16.
struct Pixel {
  int img, row, col;
  bool valid;
};
__host__ __device__ inline Pixel tile_pixel(const Tile& t, int p) {
  const int img = p / t.pimg, q = p % t.pimg;
  return {img, q / t.tw, q % t.tw, img < t.nb};
}

// Shared-memory buffers (byte offsets into the dynamic shared memory, computed on the host).
enum Buf {
  kXs,     // (sc x in_pad) T        input chunk of the halo regions
  kWf,     // (rc x sc) T            first-factor chunk
  kZ1,     // (rc x in_pad) float    first intermediate of the tile + halo (nb blocks of hi x wi)
  kMid,    // op-specific: CP4 vertical result (rc x nb*th*wi) float / Tucker im2col (16*kh*kw x p) T
  kWc,     // Tucker: (rc x 16*kh*kw) T core-weight chunk
  kZ2acc,  // Tucker: (r2_pad x p) float core accumulator
  kZ2,     // (r2_pad x p) T          second intermediate, the B operand of the last pointwise
  kWl,     // (tb x rc) T            last-factor chunk
  kAcc,    // (tb x acc_ld(p)) float  output accumulators
  kNumBufs
};

template <typename T>
struct FusedArgs {
  const T* x;
  T* out;
  const T* w_first;  // (R1, S) row-major
  const T* w_mid_a;  // CP: depthwise (R, kh*kw); CP4: vertical (R, kh); Tucker: core (R2, R1*kh*kw)
  const T* w_mid_b;  // CP4: horizontal (R, kw); otherwise unused
  const T* w_last;   // (T, R2) row-major
  const T* bias;     // (T,) or nullptr
  Geometry4d in, outg;
  int S, R1, R2, T_out;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  Tile tile;
  int n_tblocks;     // ceil(T_out / tile.tb); blockIdx.y strides over them
                     // blockIdx.z strides over groups of tile.nb images
  int off[kNumBufs];
  bool relu;
};

template <typename T>
__device__ __forceinline__ T* smem_buf(unsigned char* base, const FusedArgs<T>& a, Buf b) {
  return reinterpret_cast<T*>(base + a.off[b]);
}
__device__ __forceinline__ float* smem_f32(unsigned char* base, const int* off, Buf b) {
  return reinterpret_cast<float*>(base + off[b]);
}

// ---- block-wide helpers (every thread of the block must call them) ----
__device__ __forceinline__ void fill_zero(float* p, int count) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) p[i] = 0.f;
}

// dst (rows_chunk x cols_chunk, row-major) = w[r0:, c0:] of a (rows x cols) matrix, zeros outside.
template <typename T>
__device__ void load_matrix_chunk(const T* __restrict__ w, int rows, int cols, int r0, int c0,
                                  int rows_chunk, int cols_chunk, T* dst) {
  const int total = rows_chunk * cols_chunk;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int r = r0 + idx / cols_chunk, c = c0 + idx % cols_chunk;
    dst[idx] = (r < rows && c < cols) ? w[static_cast<int64_t>(r) * cols + c] : from_float<T>(0.f);
  }
}

// xs (sc x ld) = for each of the tile's images n0 + img (img < nb): x[n, s0:s0+sc, row0:row0+hi,
// col0:col0+wi], column q = img * hi * wi + row * wi + col. Zeros for channels >= S, images >= N,
// positions outside the image (the zero padding of the middle stage: the first stage has no bias,
// so a padded input pixel gives a zero intermediate) and the pad columns.
// Consecutive threads walk whichever of channels / columns is closer in memory (channels for
// channels_last, columns for NCHW), so the global reads coalesce in both layouts.
template <typename T>
__device__ void load_input_chunk(const T* __restrict__ x, const Geometry4d& g, const Tile& t, int n0, int s0,
                                 int row0, int col0, T* xs) {
  const int ld = t.in_pad, total = t.sc * ld;
  const bool channels_fastest = g.sc < g.sw;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int s_local = channels_fastest ? idx % t.sc : idx / ld;
    const int q = channels_fastest ? idx / t.sc : idx % ld;
    const int s = s0 + s_local, img = q / t.hw_in, local = q % t.hw_in;
    T v = from_float<T>(0.f);
    if (s < g.c && img < t.nb && n0 + img < g.n) {
      const int ih = row0 + local / t.wi, iw = col0 + local % t.wi;
      if (ih >= 0 && ih < g.h && iw >= 0 && iw < g.w)
        v = x[static_cast<int64_t>(n0 + img) * g.sn + s * g.sc + ih * g.sh + iw * g.sw];
    }
    xs[s_local * ld + q] = v;
  }
}

// Tensor cores for fp16 / bf16 on sm_80+; the plain FMA loop for fp32 and older devices.
template <typename T>
__device__ constexpr bool use_tensor_cores() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value;
#else
  return false;
#endif
}

// C (M x N, fp32, row-major, ldc) += A (M x K, row-major, lda) @ B (K x N, row-major, ldb), all in
// shared memory; M, N, K, lda, ldb, ldc multiples of 16 and every operand 32-byte aligned.
// The caller synchronises before (operands written) and after (C read).
template <typename T>
__device__ void block_gemm_acc(const T* A, int lda, const T* B, int ldb, float* C, int ldc, int M, int N,
                               int K) {
  if constexpr (use_tensor_cores<T>()) {
    // Each warp owns whole 16x16 tiles of C, so no two warps touch the same output.
    namespace wmma = nvcuda::wmma;
    const int warp = threadIdx.x / 32;
    const int tiles_n = N / kFrag;
    const int tiles = (M / kFrag) * tiles_n;
    for (int t = warp; t < tiles; t += kWarps) {
      const int m0 = (t / tiles_n) * kFrag, n0 = (t % tiles_n) * kFrag;
      wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float> c;
      wmma::load_matrix_sync(c, C + m0 * ldc + n0, ldc, wmma::mem_row_major);
      for (int k0 = 0; k0 < K; k0 += kFrag) {
        wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, T, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, A + m0 * lda + k0, lda);
        wmma::load_matrix_sync(fb, B + k0 * ldb + n0, ldb);
        wmma::mma_sync(c, fa, fb, c);
      }
      wmma::store_matrix_sync(C + m0 * ldc + n0, c, ldc, wmma::mem_row_major);
    }
  } else {
    // Plain FMA: each thread owns fixed elements of C (consecutive threads -> consecutive
    // columns, so A is a broadcast and B a conflict-free row read).
    for (int idx = threadIdx.x; idx < M * N; idx += blockDim.x) {
      const int m = idx / N, n = idx % N;
      float acc = 0.f;
      for (int k = 0; k < K; ++k) acc += to_float(A[m * lda + k]) * to_float(B[k * ldb + n]);
      C[m * ldc + n] += acc;
    }
  }
}

// z1 (rc x in_pad, fp32) = w_first[r0:r0+rc, :] @ x[images n0.., :, halo of the tile]. Rows >= R1 are zero.
template <typename T>
__device__ void first_pointwise(const FusedArgs<T>& a, unsigned char* smem, int n0, int r0, int rc,
                                int row0, int col0) {
  const Tile& t = a.tile;
  T* xs = smem_buf<T>(smem, a, kXs);
  T* wf = smem_buf<T>(smem, a, kWf);
  float* z1 = smem_f32(smem, a.off, kZ1);
  __syncthreads();  // the previous chunk's readers of z1 / xs / wf are done
  fill_zero(z1, rc * t.in_pad);
  for (int s0 = 0; s0 < a.S; s0 += t.sc) {
    __syncthreads();
    load_input_chunk(a.x, a.in, t, n0, s0, row0, col0, xs);
    load_matrix_chunk(a.w_first, a.R1, a.S, r0, s0, rc, t.sc, wf);
    __syncthreads();
    block_gemm_acc(wf, t.sc, xs, t.in_pad, z1, t.in_pad, rc, t.in_pad, t.sc);
  }
  __syncthreads();
}

// Leading dimension of the (tb x p) fp32 output accumulators: padded by 4 floats so the
// channels-fastest epilogue (channels_last output) reads them with 4-way instead of 32-way bank
// conflicts; still a multiple of 4, as wmma's fp32 store needs.
__host__ __device__ constexpr int acc_ld(int p) { return p + 4; }

// Phase 2: for each block of output channels, out = w_last @ z2 + bias [ReLU], stored with the
// output's strides. z2 (r2_pad x p, T) must be complete and zero in its padding rows.
template <typename T>
__device__ void last_pointwise_store(const FusedArgs<T>& a, unsigned char* smem, const T* z2, int r2_pad,
                                     int n0, int oh0, int ow0) {
  const Tile& t = a.tile;
  T* wl = smem_buf<T>(smem, a, kWl);
  float* acc = smem_f32(smem, a.off, kAcc);
  const int P = t.p, ldc = acc_ld(P);
  const bool channels_fastest = a.outg.sc < a.outg.sw;  // channels_last output: coalesce over channels
  for (int tblk = blockIdx.y; tblk < a.n_tblocks; tblk += gridDim.y) {
    const int t0 = tblk * t.tb;
    __syncthreads();  // previous readers of acc / wl are done
    fill_zero(acc, t.tb * ldc);
    for (int k0 = 0; k0 < r2_pad; k0 += t.rc) {
      const int kc = min(t.rc, r2_pad - k0);
      __syncthreads();
      load_matrix_chunk(a.w_last, a.T_out, a.R2, t0, k0, t.tb, kc, wl);
      __syncthreads();
      block_gemm_acc(wl, kc, z2 + k0 * P, P, acc, ldc, t.tb, P, kc);
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < t.tb * P; idx += blockDim.x) {
      const int oc_local = channels_fastest ? idx % t.tb : idx / P;
      const int p = channels_fastest ? idx / t.tb : idx % P;
      const Pixel px = tile_pixel(t, p);
      const int oc = t0 + oc_local, n = n0 + px.img, oh = oh0 + px.row, ow = ow0 + px.col;
      if (px.valid && n < a.outg.n && oc < a.T_out && oh < a.outg.h && ow < a.outg.w) {
        float v = acc[oc_local * ldc + p] + (a.bias != nullptr ? to_float(a.bias[oc]) : 0.f);
        if (a.relu) v = fmaxf(v, 0.f);
        a.out[static_cast<int64_t>(n) * a.outg.sn + oc * a.outg.sc + oh * a.outg.sh + ow * a.outg.sw] =
            from_float<T>(v);
      }
    }
  }
}

// Where blockIdx.x's tile starts: output (oh0, ow0) and the first intermediate's (row0, col0)
// (the same in each of the tile's images).
struct TileOrigin {
  int oh0, ow0, row0, col0;
};
template <typename T>
__device__ __forceinline__ TileOrigin tile_origin(const FusedArgs<T>& a) {
  TileOrigin o;
  o.oh0 = (blockIdx.x / a.tile.tiles_w) * a.tile.th;
  o.ow0 = (blockIdx.x % a.tile.tiles_w) * a.tile.tw;
  o.row0 = o.oh0 * a.sh - a.ph;
  o.col0 = o.ow0 * a.sw - a.pw;
  return o;
}

}  // namespace cuda_detail
}  // namespace mtd
