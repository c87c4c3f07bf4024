// Fused Tucker-2 convolution on CUDA: 1x1 (R1,S) -> dense kh x kw core (R2,R1) -> 1x1 (T,R2) + bias
// [ReLU], one kernel. The core is an implicit GEMM: for each chunk of 16 first-rank channels the
// tile's intermediate is unrolled (im2col, in shared memory only) and multiplied by the matching
// core columns, accumulating the whole (R2 x P) second intermediate in fp32 shared memory.
#include "../ops.h"
#include "fused_host.cuh"

namespace mtd {
namespace cuda_detail {
namespace {

constexpr int kRank1Chunk = 16;  // first-rank channels per core step: K = 16 * kh * kw (a multiple of 16)

template <typename T>
__global__ void __launch_bounds__(kThreads) tucker_fused_kernel(FusedArgs<T> a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Tile& t = a.tile;
  const TileOrigin o = tile_origin(a);
  const int R1 = a.R1, R2 = a.R2, r2_pad = round_up(R2, kFrag);
  const int khw = a.kh * a.kw, k1 = kRank1Chunk * khw;
  float* z2acc = smem_f32(smem, a.off, kZ2acc);  // (r2_pad x p) fp32, region of its own
  const float* z1 = smem_f32(smem, a.off, kZ1);  // (16 x in_pad): nb blocks of hi x wi
  T* col = smem_buf<T>(smem, a, kMid);           // (k1 x p) im2col of z1
  T* wc = smem_buf<T>(smem, a, kWc);             // (rc x k1) core chunk
  T* z2 = smem_buf<T>(smem, a, kZ2);             // (r2_pad x p) phase 2, over phase 1's space
  for (int group = blockIdx.z; group * t.nb < a.in.n; group += gridDim.z) {
    const int n0 = group * t.nb;  // the tile's first image
    __syncthreads();
    fill_zero(z2acc, r2_pad * t.p);
    for (int r0 = 0; r0 < R1; r0 += kRank1Chunk) {
      first_pointwise(a, smem, n0, r0, kRank1Chunk, o.row0, o.col0);
      // im2col: row k = (r, i, j) matches the core's (R2, R1*kh*kw) column order.
      for (int idx = threadIdx.x; idx < k1 * t.p; idx += blockDim.x) {
        const int k = idx / t.p, p = idx % t.p;
        const int r = k / khw, i = (k % khw) / a.kw, j = k % a.kw;
        const Pixel px = tile_pixel(t, p);
        const int row = px.row * a.sh + i * a.dh, cc = px.col * a.sw + j * a.dw;
        const float v = px.valid ? z1[r * t.in_pad + px.img * t.hw_in + row * t.wi + cc] : 0.f;
        col[idx] = from_float<T>(v);  // rounded like the chain
      }
      for (int m0 = 0; m0 < r2_pad; m0 += t.rc) {
        const int mc = min(t.rc, r2_pad - m0);
        __syncthreads();  // col written / the previous chunk's readers of wc done
        load_matrix_chunk(a.w_mid_a, R2, R1 * khw, m0, r0 * khw, mc, k1, wc);
        __syncthreads();
        block_gemm_acc(wc, k1, col, t.p, z2acc + m0 * t.p, t.p, mc, t.p, k1);
      }
    }
    __syncthreads();  // z2acc complete; phase-1 buffers are free
    for (int idx = threadIdx.x; idx < r2_pad * t.p; idx += blockDim.x) z2[idx] = from_float<T>(z2acc[idx]);
    __syncthreads();
    last_pointwise_store(a, smem, z2, r2_pad, n0, o.oh0, o.ow0);
    __syncthreads();  // before the next image reuses the buffers
  }
}

}  // namespace
}  // namespace cuda_detail

at::Tensor tucker_conv2d_cuda(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_core,
                              const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              bool relu) {
  using namespace cuda_detail;
  constexpr const char* op = "tucker_conv2d";
  check_common(op, input, {w_first, w_core, w_last}, bias, stride, padding, dilation);
  check_tucker_shapes(w_first, w_core, w_last);
  const int64_t S = input.size(1), R1 = w_first.size(0), R2 = w_core.size(0), T_out = w_last.size(0);
  const int kh = static_cast<int>(w_core.size(2)), kw = static_cast<int>(w_core.size(3));
  const c10::cuda::CUDAGuard guard(input.device());
  HostCall call = begin_call(op, input, T_out, bias, stride, padding, dilation, relu, kh, kw,
                             R1 == 0 || R2 == 0 || S == 0 || kh * kw == 0);
  if (call.done) return call.out;
  at::Tensor& out = call.out;
  const int64_t ho = call.ho, wo = call.wo;
  const at::Tensor wf = w_first.contiguous(), wc = w_core.contiguous(), wl = w_last.contiguous();
  const int device = input.get_device();
  const int r2_pad = round_up(static_cast<int>(R2), kFrag);
  const int k1 = kRank1Chunk * kh * kw;

  MTD_DISPATCH_FLOAT_HALF_BF16(input.scalar_type(), "mtd_tucker_conv2d_cuda", [&] {
    using T = typename NativeType<scalar_t>::type;
    FusedArgs<T> a = base_args<T>(input, out, wf, wl, bias, stride, padding, dilation, relu);
    a.w_mid_a = reinterpret_cast<const T*>(wc.const_data_ptr());
    a.R1 = static_cast<int>(R1);
    a.R2 = static_cast<int>(R2);
    a.kh = kh;
    a.kw = kw;
    // tile.rc chunks R2 (core rows and the last GEMM's K); the first rank goes 16 at a time.
    auto tile_for = [&](int th, int tw, int target_p, int chunk) {
      return make_tile(th, tw, target_p, chunk, input.size(0), S, R2, T_out, kh, kw, a.sh, a.sw, a.dh, a.dw, wo);
    };
    auto layout = [&](const Tile& t, int* off) {
      const size_t e = sizeof(T);
      SmemPlanner region_a;
      off[kZ2acc] = static_cast<int>(region_a.take(r2_pad * t.p * sizeof(float)));
      SmemPlanner phase1{region_a.cur}, phase2{region_a.cur};  // phase 2 reuses phase 1's space
      off[kXs] = static_cast<int>(phase1.take(t.sc * t.in_pad * e));
      off[kWf] = static_cast<int>(phase1.take(kRank1Chunk * t.sc * e));
      off[kZ1] = static_cast<int>(phase1.take(kRank1Chunk * t.in_pad * sizeof(float)));
      off[kMid] = static_cast<int>(phase1.take(static_cast<size_t>(k1) * t.p * e));
      off[kWc] = static_cast<int>(phase1.take(static_cast<size_t>(t.rc) * k1 * e));
      off[kZ2] = static_cast<int>(phase2.take(r2_pad * t.p * e));
      off[kWl] = static_cast<int>(phase2.take(t.tb * t.rc * e));
      off[kAcc] = static_cast<int>(phase2.take(t.tb * acc_ld(t.p) * sizeof(float)));
      return std::max(phase1.cur, phase2.cur);
    };
    const auto chosen = choose_tile(op, ho, wo, tile_for, layout, a.off, device_smem_limit(device));
    a.tile = chosen.first;
    layout(a.tile, a.off);
    launch_fused<T>(tucker_fused_kernel<T>, a, chosen.second, device);
  });
  return out;
}

}  // namespace mtd
