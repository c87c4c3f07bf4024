// Host-side helpers shared by the fused CUDA ops: the call prologue, tile choice
// under the device's shared-memory limit, and the launch.
//
// Only c10/cuda headers are used (CUDAGuard, CUDAStream, CUDAException): they ship with every torch
// wheel, so the kernels also compile (not link) against a CPU-only torch for the compile test.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <functional>
#include <climits>
#include <optional>
#include <tuple>

#include "fused_device.cuh"
#include "op_checks.h"

// float, half and bfloat16 only (AT_DISPATCH_FLOATING_TYPES would also instantiate double).
#define MTD_DISPATCH_FLOAT_HALF_BF16(TYPE, NAME, ...)                                  \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)              \
                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)                       \
                             AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace mtd {
namespace cuda_detail {

template <typename T> struct NativeType { using type = T; };
template <> struct NativeType<at::Half> { using type = __half; };
template <> struct NativeType<at::BFloat16> { using type = __nv_bfloat16; };

// What every host entry does before choosing a tile, once the shared argument checks (op_checks.h:
// the same ValueErrors as on CPU) passed: the CUDA/dtype checks and the output (the layout rule of
// wants_channels_last). `done` is set when no kernel needs to run: an empty output, or a chain that
// reduces to its bias because a rank or the input channels are zero (`degenerate`).
struct HostCall {
  at::Tensor out;
  int64_t ho = 0, wo = 0;
  bool done = false;
};

inline HostCall begin_call(const char* op, const at::Tensor& x, int64_t t_out, const std::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu,
                           int64_t kh, int64_t kw, bool degenerate) {
  TORCH_CHECK_VALUE(x.is_cuda(), "mtd.", op, " (CUDA): input must be a CUDA tensor, got ", x.device());
  const auto dt = x.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, "mtd.", op,
                    " (CUDA): the fused kernel supports float32, float16 and bfloat16, got ", dt,
                    " (torch.ops.mtd.* run other dtypes as the unfused chain)");
  TORCH_CHECK_VALUE(x.size(0) <= INT32_MAX && x.size(1) <= INT32_MAX && x.size(2) <= INT32_MAX &&
                        x.size(3) <= INT32_MAX,
                    "mtd.", op, " (CUDA): input dimensions must fit in 32 bits");
  HostCall call;
  std::tie(call.ho, call.wo) = output_hw(op, x, kh, kw, stride, padding, dilation);
  call.out = at::empty({x.size(0), t_out, call.ho, call.wo},
                       x.options().memory_format(wants_channels_last(x) ? at::MemoryFormat::ChannelsLast
                                                                        : at::MemoryFormat::Contiguous));
  if (call.out.numel() == 0) {
    call.done = true;
  } else if (degenerate) {  // the chain is just the bias (or zeros)
    call.out.zero_();
    if (bias.has_value()) call.out.add_(bias->view({1, -1, 1, 1}));
    if (relu) call.out.relu_();
    call.done = true;
  }
  return call;
}

inline Geometry4d geometry_of(const at::Tensor& t) {
  return {static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), static_cast<int>(t.size(2)),
          static_cast<int>(t.size(3)), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Lays out shared-memory buffers: each starts 128-byte aligned (wmma needs 32).
struct SmemPlanner {
  size_t cur = 0;
  size_t take(size_t bytes) {
    const size_t at = (cur + 127) / 128 * 128;
    cur = at + bytes;
    return at;
  }
};

// Fills a Tile: a th x tw output patch in each of nb = target_p / (th*tw) images (at most N), and
// chunk sizes (everything the GEMMs see a multiple of 16).
inline Tile make_tile(int th, int tw, int target_p, int chunk, int64_t N, int64_t S, int64_t R_chunked,
                      int64_t T, int kh, int kw, int sh, int sw, int dh, int dw, int64_t wo) {
  Tile t{};
  t.th = th;
  t.tw = tw;
  t.pimg = th * tw;
  t.nb = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(N, target_p / t.pimg)));
  t.p = round_up(t.nb * t.pimg, kFrag);
  t.hi = (th - 1) * sh + (kh - 1) * dh + 1;
  t.wi = (tw - 1) * sw + (kw - 1) * dw + 1;
  t.hw_in = t.hi * t.wi;
  t.in_pad = round_up(t.nb * t.hw_in, kFrag);
  t.sc = std::min<int>(chunk, round_up(static_cast<int>(std::max<int64_t>(S, 1)), kFrag));
  t.rc = std::min<int>(chunk, round_up(static_cast<int>(std::max<int64_t>(R_chunked, 1)), kFrag));
  t.tb = std::min<int>(64, round_up(static_cast<int>(T), kFrag));
  t.tiles_w = static_cast<int>((wo + tw - 1) / tw);
  return t;
}

// Tries tiles from the largest (64 output pixels) down and returns the first whose shared memory
// (as computed by `layout`, which also fills the offsets) fits the device; a clear error if none.
// `tile_for(th, tw, target_p, chunk)` builds the candidate.
inline std::pair<Tile, size_t> choose_tile(
    const char* op, int64_t ho, int64_t wo, const std::function<Tile(int, int, int, int)>& tile_for,
    const std::function<size_t(const Tile&, int*)>& layout, int* off, size_t smem_limit) {
  auto edge = [](int64_t size) { return size <= 2 ? 2 : size <= 4 ? 4 : 8; };  // small maps: no waste
  size_t smallest = 0;
  for (int target_p : {64, 32, 16}) {
    int th = edge(ho), tw = edge(wo);
    while (th * tw > target_p) (th >= tw ? th : tw) /= 2;
    for (int chunk : {32, 16}) {
      const Tile t = tile_for(th, tw, target_p, chunk);
      const size_t bytes = layout(t, off);
      if (bytes <= smem_limit) return {t, bytes};
      smallest = smallest == 0 ? bytes : std::min(smallest, bytes);
    }
  }
  TORCH_CHECK(false, op, ": even the smallest tile needs ", smallest, " bytes of shared memory but the device "
              "allows ", smem_limit, " per block (rank or kernel too large for the fused CUDA kernel); use "
              "the Triton backend or the unfused chain (mtd_kernels.set_cuda_backend('torch'))");
}

inline size_t device_smem_limit(int device) {
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return static_cast<size_t>(optin);
}

inline int device_sm_count(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

// Fills the arguments every op shares (the op sets w_mid_*, R1/R2, kh/kw, tile and offsets).
template <typename T>
FusedArgs<T> base_args(const at::Tensor& x, at::Tensor& out, const at::Tensor& w_first,
                       const at::Tensor& w_last, const std::optional<at::Tensor>& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  FusedArgs<T> a{};
  a.x = reinterpret_cast<const T*>(x.const_data_ptr());
  a.out = reinterpret_cast<T*>(out.mutable_data_ptr());
  a.w_first = reinterpret_cast<const T*>(w_first.const_data_ptr());
  a.w_last = reinterpret_cast<const T*>(w_last.const_data_ptr());
  a.bias = bias.has_value() ? reinterpret_cast<const T*>(bias->const_data_ptr()) : nullptr;
  a.in = geometry_of(x);
  a.outg = geometry_of(out);
  a.S = static_cast<int>(x.size(1));
  a.T_out = static_cast<int>(out.size(1));
  a.sh = static_cast<int>(stride[0]);
  a.sw = static_cast<int>(stride[1]);
  a.ph = static_cast<int>(padding[0]);
  a.pw = static_cast<int>(padding[1]);
  a.dh = static_cast<int>(dilation[0]);
  a.dw = static_cast<int>(dilation[1]);
  a.relu = relu;
  return a;
}

// Grid: x = spatial tiles, y = splits of the output-channel blocks (only when there are too few
// tiles x image groups to fill the device: each split recomputes phase 1), z = groups of tile.nb
// images (strided in the kernel beyond 65535).
template <typename T>
void launch_fused(void (*kernel)(FusedArgs<T>), FusedArgs<T>& a, size_t smem_bytes, int device) {
  const int64_t tiles = static_cast<int64_t>(a.tile.tiles_w) * ((a.outg.h + a.tile.th - 1) / a.tile.th);
  TORCH_CHECK(tiles <= INT32_MAX, "mtd fused CUDA kernel: too many output tiles");
  const int64_t groups = (static_cast<int64_t>(a.in.n) + a.tile.nb - 1) / a.tile.nb;
  const int images = static_cast<int>(std::min<int64_t>(groups, 65535));
  a.n_tblocks = (a.T_out + a.tile.tb - 1) / a.tile.tb;
  const int64_t blocks = tiles * images;
  const int64_t want = 2LL * device_sm_count(device);
  const int splits = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(a.n_tblocks, (want + blocks - 1) / blocks)));
  if (smem_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem_bytes)));
  }
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits), static_cast<unsigned>(images));
  kernel<<<grid, kThreads, smem_bytes, c10::cuda::getCurrentCUDAStream(device).stream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda_detail
}  // namespace mtd
