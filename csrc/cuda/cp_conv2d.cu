// Fused CP3 convolution on CUDA: 1x1 (R,S) -> depthwise kh x kw on R channels -> 1x1 (T,R) + bias
// [ReLU], one kernel, intermediates in shared memory only (see fused_device.cuh for the scheme).
#include "../ops.h"
#include "fused_host.cuh"

namespace mtd {
namespace cuda_detail {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) cp_fused_kernel(FusedArgs<T> a) {
  extern __shared__ __align__(128) unsigned char smem[];
  const Tile& t = a.tile;
  const TileOrigin o = tile_origin(a);
  const int R = a.R1, r_pad = round_up(R, kFrag), khw = a.kh * a.kw;
  T* z2 = smem_buf<T>(smem, a, kZ2);           // (r_pad x p)
  const float* z1 = smem_f32(smem, a.off, kZ1);  // (rc x in_pad): nb blocks of hi x wi
  for (int group = blockIdx.z; group * t.nb < a.in.n; group += gridDim.z) {
    const int n0 = group * t.nb;  // the tile's first image
    for (int r0 = 0; r0 < r_pad; r0 += t.rc) {
      first_pointwise(a, smem, n0, r0, t.rc, o.row0, o.col0);
      // Depthwise kh x kw (stride / dilation; padding is already the zeros of z1) -> z2 rows.
      for (int idx = threadIdx.x; idx < t.rc * t.p; idx += blockDim.x) {
        const int r = idx / t.p, p = idx % t.p;
        if (r0 + r >= r_pad) continue;
        const Pixel px = tile_pixel(t, p);
        float v = 0.f;
        if (r0 + r < R && px.valid) {
          const int a_row = px.row * a.sh, b_col = px.col * a.sw;
          const float* zr = z1 + r * t.in_pad + px.img * t.hw_in;
          const T* wd = a.w_mid_a + static_cast<int64_t>(r0 + r) * khw;
          for (int i = 0; i < a.kh; ++i)
            for (int j = 0; j < a.kw; ++j)
              v += to_float(wd[i * a.kw + j]) * zr[(a_row + i * a.dh) * t.wi + b_col + j * a.dw];
        }
        z2[(r0 + r) * t.p + p] = from_float<T>(v);
      }
    }
    __syncthreads();  // z2 complete; phase-1 buffers may now be reused by phase 2
    last_pointwise_store(a, smem, z2, r_pad, n0, o.oh0, o.ow0);
    __syncthreads();  // before the next images overwrite z2
  }
}

}  // namespace
}  // namespace cuda_detail

at::Tensor cp_conv2d_cuda(const at::Tensor& input, const at::Tensor& w_first, const at::Tensor& w_depthwise,
                          const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  using namespace cuda_detail;
  constexpr const char* op = "cp_conv2d";
  check_common(op, input, {w_first, w_depthwise, w_last}, bias, stride, padding, dilation);
  check_cp_shapes(w_first, w_depthwise, w_last);
  const int64_t S = input.size(1), R = w_first.size(0), T_out = w_last.size(0);
  const int kh = static_cast<int>(w_depthwise.size(2)), kw = static_cast<int>(w_depthwise.size(3));
  const c10::cuda::CUDAGuard guard(input.device());
  HostCall call = begin_call(op, input, T_out, bias, stride, padding, dilation, relu, kh,
                             kw, R == 0 || S == 0);
  if (call.done) return call.out;
  at::Tensor& out = call.out;
  const int64_t ho = call.ho, wo = call.wo;
  const at::Tensor wf = w_first.contiguous(), wd = w_depthwise.contiguous(), wl = w_last.contiguous();
  const int device = input.get_device();
  const int r_pad = round_up(static_cast<int>(R), kFrag);

  MTD_DISPATCH_FLOAT_HALF_BF16(input.scalar_type(), "mtd_cp_conv2d_cuda", [&] {
    using T = typename NativeType<scalar_t>::type;
    FusedArgs<T> a = base_args<T>(input, out, wf, wl, bias, stride, padding, dilation, relu);
    a.w_mid_a = reinterpret_cast<const T*>(wd.const_data_ptr());
    a.R1 = a.R2 = static_cast<int>(R);
    a.kh = kh;
    a.kw = kw;
    auto tile_for = [&](int th, int tw, int target_p, int chunk) {
      return make_tile(th, tw, target_p, chunk, input.size(0), S, R, T_out, kh, kw, a.sh, a.sw, a.dh, a.dw, wo);
    };
    auto layout = [&](const Tile& t, int* off) {
      const size_t e = sizeof(T);
      SmemPlanner region_a;
      off[kZ2] = static_cast<int>(region_a.take(r_pad * t.p * e));
      SmemPlanner phase1{region_a.cur}, phase2{region_a.cur};  // phase 2 reuses phase 1's space
      off[kXs] = static_cast<int>(phase1.take(t.sc * t.in_pad * e));
      off[kWf] = static_cast<int>(phase1.take(t.rc * t.sc * e));
      off[kZ1] = static_cast<int>(phase1.take(t.rc * t.in_pad * sizeof(float)));
      off[kWl] = static_cast<int>(phase2.take(t.tb * t.rc * e));
      off[kAcc] = static_cast<int>(phase2.take(t.tb * acc_ld(t.p) * sizeof(float)));
      return std::max(phase1.cur, phase2.cur);
    };
    const auto chosen = choose_tile(op, ho, wo, tile_for, layout, a.off, device_smem_limit(device));
    a.tile = chosen.first;
    layout(a.tile, a.off);  // offsets of the chosen tile (choose_tile may have tried others after)
    launch_fused<T>(cp_fused_kernel<T>, a, chosen.second, device);
  });
  return out;
}

}  // namespace mtd
