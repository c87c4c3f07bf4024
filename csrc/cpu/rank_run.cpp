// torch.ops.mtd.rank_run: a whole run of rank-space bridges (mtd_kernels/ops/rank_run.py) in one call.
//
// At batch 1 a compressed VGG's bridges each do a few hundred thousand multiply-adds, and what they cost is what
// surrounds them: a Python module call and a dispatcher call per layer, the spatial factor re-laid out and the 1x1
// factors either packed (when the call has the pixels to pay for it) or handed to BLAS, whose small-matrix path
// and threads cost more than the product. Here the factors are packed once (rank_run_pack, kept by the caller
// between calls) and every bridge of the run goes straight to the fused kernel (cpu/bridge_kernel.h) from one
// C++ loop. Inputs the fused kernel does not take (bf16, ...) run each bridge's ATen chain instead.
// RankRunPlan (ops.h) holds the split bridges and packed factors of one run: RankSpaceRun's no-grad CPU calls go to
// it straight from Python, without the dispatcher converting ~30 weights and ~100 meta integers per call and the
// Python autograd layer of the op (together ~40 us of a ~250 us batch-1 VGG11 call).
#include "cpu/bridge_kernel.h"
#include "cpu/fused_common.h"
#include "cpu/middle_stages.h"
#include "cpu/pointwise.h"
#include "cpu/small_gemm.h"
#include "op_checks.h"
#include "ops.h"

#include <c10/core/GradMode.h>

#include <array>
#include <optional>
#include <vector>

namespace mtd {
namespace cpu {
namespace {

// meta, per bridge: n_spatial, has_last, has_bias, has_next, stride (2), padding (2), dilation (2), relu, pool
constexpr size_t kMetaPerBridge = 12;

struct Bridge {
  std::vector<at::Tensor> spatial;  // 1 (depthwise or dense core) or 2 (CP4 pair)
  std::optional<at::Tensor> w_last, bias, w_next;
  std::vector<int64_t> stride, padding, dilation;
  bool relu = false, pool = false;

  bool cp4() const { return spatial.size() == 2; }
  // Packed tensors of this bridge: CP4 (kh, R), (kw, R); one factor: taps (kh*kw, R) (empty unless it could be
  // depthwise), the core packed for the (R1, tap) and for the (tap, R1) im2col; then W_last^T and W_next^T packed.
  size_t n_packed() const { return (cp4() ? 2 : 3) + (w_last ? 1 : 0) + (w_next ? 1 : 0); }
};

bool flag(int64_t v, const char* what, size_t bridge) {
  TORCH_CHECK_VALUE(v == 0 || v == 1, "mtd.rank_run: meta of bridge ", bridge, ": ", what, " must be 0 or 1, got ", v);
  return v == 1;
}

// That a bridge's factors chain among themselves (their fit to the input is check_bridge's, per call): what
// packing them needs.
void check_factors(const Bridge& b, size_t i) {
  for (const auto& w : b.spatial) {
    TORCH_CHECK_VALUE(w.dim() == 4, "mtd.rank_run: bridge ", i, ": every spatial factor must be a 4-D conv weight, got ",
                      w.sizes());
  }
  const at::Tensor& s0 = b.spatial[0];
  if (b.cp4()) {
    const at::Tensor& s1 = b.spatial[1];
    TORCH_CHECK_VALUE(s0.size(1) == 1 && s0.size(3) == 1 && s1.size(0) == s0.size(0) && s1.size(1) == 1 &&
                          s1.size(2) == 1,
                      "mtd.rank_run: bridge ", i, ": a CP4 pair must be (C, 1, kh, 1) and (C, 1, 1, kw), got ",
                      s0.sizes(), ", ", s1.sizes());
  }
  int64_t t = s0.size(0);
  if (b.w_last) {
    TORCH_CHECK_VALUE(b.w_last->dim() == 4 && b.w_last->size(1) == t && b.w_last->size(2) == 1 &&
                          b.w_last->size(3) == 1,
                      "mtd.rank_run: bridge ", i, ": w_last must be (T, ", t, ", 1, 1), got ", b.w_last->sizes());
    t = b.w_last->size(0);
  }
  if (b.bias) {
    TORCH_CHECK_VALUE(b.bias->dim() == 1 && b.bias->size(0) == t, "mtd.rank_run: bridge ", i,
                      ": bias must have shape (", t, ",), got ", b.bias->sizes());
  }
  if (b.w_next) {
    TORCH_CHECK_VALUE(b.w_next->dim() == 4 && b.w_next->size(1) == t && b.w_next->size(2) == 1 &&
                          b.w_next->size(3) == 1,
                      "mtd.rank_run: bridge ", i, ": w_next must be (R, ", t, ", 1, 1), got ", b.w_next->sizes());
  }
}

std::vector<Bridge> split(at::TensorList weights, at::IntArrayRef meta) {
  TORCH_CHECK_VALUE(!meta.empty() && meta.size() % kMetaPerBridge == 0, "mtd.rank_run: meta must hold ",
                    kMetaPerBridge, " integers per bridge, got ", meta.size());
  std::vector<Bridge> bridges(meta.size() / kMetaPerBridge);
  size_t next = 0;
  auto take = [&](size_t i) -> const at::Tensor& {
    TORCH_CHECK_VALUE(next < weights.size(), "mtd.rank_run: meta asks for more weights than the ", weights.size(),
                      " given (at bridge ", i, ")");
    return weights[next++];
  };
  for (size_t i = 0; i < bridges.size(); ++i) {
    const int64_t* m = meta.data() + i * kMetaPerBridge;
    Bridge& b = bridges[i];
    TORCH_CHECK_VALUE(m[0] == 1 || m[0] == 2, "mtd.rank_run: meta of bridge ", i,
                      ": the spatial stage has 1 or 2 factors, got ", m[0]);
    for (int64_t k = 0; k < m[0]; ++k) b.spatial.push_back(take(i));
    if (flag(m[1], "has_last", i)) b.w_last = take(i);
    if (flag(m[2], "has_bias", i)) b.bias = take(i);
    if (flag(m[3], "has_next", i)) b.w_next = take(i);
    b.stride = {m[4], m[5]};
    b.padding = {m[6], m[7]};
    b.dilation = {m[8], m[9]};
    b.relu = flag(m[10], "relu", i);
    b.pool = flag(m[11], "pool", i);
  }
  TORCH_CHECK_VALUE(next == weights.size(), "mtd.rank_run: meta describes ", next, " weights, ", weights.size(),
                    " were given");
  for (size_t i = 0; i < bridges.size(); ++i) check_factors(bridges[i], i);
  return bridges;
}

// W (n, k) -> W^T (k, padded_cols(n)), zero past column n: the layout of Pointwise's small GEMM.
at::Tensor pack_pointwise(const at::Tensor& w) {
  const at::Tensor w2 = w.reshape({w.size(0), -1});
  at::Tensor packed = at::zeros({w2.size(1), padded_cols(w2.size(0))}, w.options());
  packed.narrow(1, 0, w2.size(0)).copy_(w2.t());
  return packed;
}

void pack_bridge(const Bridge& b, std::vector<at::Tensor>& out) {
  const at::Tensor& s0 = b.spatial[0];
  const int64_t r = s0.size(0), kh = s0.size(2);
  if (b.cp4()) {
    out.push_back(s0.reshape({r, kh}).t().contiguous());                           // (kh, R)
    out.push_back(b.spatial[1].reshape({r, b.spatial[1].size(3)}).t().contiguous());  // (kw, R)
  } else {
    const bool maybe_depthwise = s0.size(1) == 1;
    out.push_back(maybe_depthwise ? s0.reshape({r, -1}).t().contiguous() : at::empty({0}, s0.options()));
    out.push_back(pack_pointwise(s0));                             // core (R2, R1*taps): K = (R1, tap)
    out.push_back(pack_pointwise(s0.permute({0, 2, 3, 1})));      // core (R2, taps*R1): K = (tap, R1)
  }
  if (b.w_last) out.push_back(pack_pointwise(*b.w_last));  // (R2, ld(T))
  if (b.w_next) out.push_back(pack_pointwise(*b.w_next));  // (T, ld(R))
}

// The activations between the bridges of a run, kept per calling thread and reused by the next call whose bridge
// i has the same output shape and dtype: a run then allocates only its result (no allocator round trip or page
// faults per layer). A buffer is reused only while nothing outside the pool holds it; the run's result is never
// pooled. Held until a call with other shapes replaces them (batch 64 of a 32x VGG16: about 20 MB).
at::Tensor activation_buffer(size_t i, const BridgeShape& s, const at::Tensor& like) {
  thread_local std::vector<at::Tensor> pool;
  if (pool.size() <= i) pool.resize(i + 1);
  at::Tensor& slot = pool[i];
  const std::array<int64_t, 4> shape{s.n, s.r_out, s.hp, s.wp};
  if (!slot.defined() || slot.sizes() != at::IntArrayRef(shape) || slot.scalar_type() != like.scalar_type() ||
      slot.use_count() > 1 || slot.storage().use_count() > 1) {  // held (or viewed) outside the pool
    slot = at::empty(shape, like.options().memory_format(at::MemoryFormat::ChannelsLast));
  }
  return slot;
}

at::MemoryFormat out_layout(const at::Tensor& x) {
  return wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// One bridge on the fused kernel with its packed factors; x is the bridge's checked input.
template <typename T>
at::Tensor run_packed(const at::Tensor& x, const Bridge& b, const at::Tensor* pk, const Window& g, int64_t r2,
                      const BridgeShape& s, at::Tensor reuse, int64_t threads) {
  const int64_t r1 = x.size(1), t = s.t;
  std::optional<Pointwise<T>> last, next;
  const at::Tensor* rest = pk + (b.cp4() ? 2 : 3);
  if (b.w_last) {
    last.emplace(b.w_last->data_ptr<T>(), t, r2, rest->data_ptr<T>(), rest->size(1));
    ++rest;
  }
  if (b.w_next) next.emplace(b.w_next->data_ptr<T>(), s.r_out, t, rest->data_ptr<T>(), rest->size(1));
  const Pointwise<T>* lp = last ? &*last : nullptr;
  const Pointwise<T>* np = next ? &*next : nullptr;
  const at::Tensor bias = b.bias ? b.bias->contiguous() : at::Tensor();
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  if (b.cp4()) {
    const Cp4Separable<T> mid{r1, r1, pk[0].data_ptr<T>(), pk[1].data_ptr<T>(), g};
    return bridge_fused<T>(x, mid, g, lp, bp, np, s, b.relu, std::move(reuse), threads);
  }
  if (b.spatial[0].size(1) == 1 && r1 > 1) {  // depthwise, as rank_bridge decides
    const CpDepthwise<T> mid{r1, r1, pk[0].data_ptr<T>(), g};
    return bridge_fused<T>(x, mid, g, lp, bp, np, s, b.relu, std::move(reuse), threads);
  }
  const bool tap_major = r2 < x.size(0) * g.ho * g.wo;  // as rank_bridge and tucker_conv2d decide
  const at::Tensor& core = pk[tap_major ? 2 : 1];
  const TuckerCore<T> mid(r1, r2, g, tap_major,
                          Pointwise<T>(b.spatial[0].data_ptr<T>(), r2, core.size(0), core.data_ptr<T>(), core.size(1)));
  return bridge_fused<T>(x, mid, g, lp, bp, np, s, b.relu, std::move(reuse), threads);
}

// The shapes pack_bridge gives this bridge.
std::vector<std::vector<int64_t>> packed_shapes(const Bridge& b) {
  const at::Tensor& s0 = b.spatial[0];
  const int64_t r = s0.size(0), kh = s0.size(2), kw = s0.size(3);
  std::vector<std::vector<int64_t>> shapes;
  if (b.cp4()) {
    shapes.push_back({kh, r});
    shapes.push_back({b.spatial[1].size(3), r});
  } else {
    shapes.push_back(s0.size(1) == 1 ? std::vector<int64_t>{kh * kw, r} : std::vector<int64_t>{0});
    shapes.push_back({s0.size(1) * kh * kw, padded_cols(r)});
    shapes.push_back({s0.size(1) * kh * kw, padded_cols(r)});
  }
  if (b.w_last) shapes.push_back({b.w_last->size(1), padded_cols(b.w_last->size(0))});
  if (b.w_next) shapes.push_back({b.w_next->size(1), padded_cols(b.w_next->size(0))});
  return shapes;
}

// Shapes, dtype and layout of a caller's packed list. A list packed from other weights of the same shapes
// cannot be told apart here: its keeper (RankSpaceRun) packs again whenever a weight changes.
void check_packed(const std::vector<Bridge>& bridges, at::TensorList packed, const at::Tensor& input) {
  size_t expected = 0;
  for (const Bridge& b : bridges) expected += b.n_packed();
  TORCH_CHECK_VALUE(packed.size() == expected, "mtd.rank_run: packed holds ", packed.size(), " tensors, these ",
                    bridges.size(), " bridges need ", expected, " (pack them with mtd_kernels.rank_run_pack)");
  size_t i = 0;
  for (const Bridge& b : bridges) {
    for (const auto& shape : packed_shapes(b)) {
      const at::Tensor& p = packed[i];
      TORCH_CHECK_VALUE(p.sizes() == at::IntArrayRef(shape) && p.scalar_type() == input.scalar_type() &&
                            p.device() == input.device() && p.is_contiguous(),
                        "mtd.rank_run: packed tensor ", i, " has shape ", p.sizes(), " (", p.scalar_type(),
                        "), expected ", at::IntArrayRef(shape), " (", input.scalar_type(),
                        ", contiguous): pack these weights again with mtd_kernels.rank_run_pack");
      ++i;
    }
  }
}

}  // namespace

// Multiply-adds below which a bridge runs on the calling thread alone: at batch 1 the last bridges of a VGG (2x2
// maps) do ~0.1-0.2 M, a few microseconds of arithmetic, less than what three parallel regions' start-up and joins
// cost. Measured on 2-core Zen 4 (a VGG11 plan at batch 1, each bridge alone): the 2x2 bridges 1-2 us faster
// alone; the 4x4 ones (0.4-0.5 M) and everything larger faster on both threads.
constexpr int64_t kSerialMacs = 300000;

at::Tensor run_bridges(const at::Tensor& input, const std::vector<Bridge>& bridges, const at::Tensor* pk) {
  at::Tensor x = input;
  const int64_t threads = at::get_num_threads();
  for (size_t i = 0; i < bridges.size(); ++i) {
    const Bridge& b = bridges[i];
    int64_t r2 = 0;
    Window g{};
    try {  // the bridge's own checks (op_checks.h, as rank_bridge makes them), naming the bridge
      r2 = check_bridge(x, b.spatial, b.w_last, b.bias, b.w_next, b.stride, b.padding, b.dilation);
      const int64_t kh = b.spatial[0].size(2), kw = b.cp4() ? b.spatial[1].size(3) : b.spatial[0].size(3);
      g = make_window("rank_bridge", x, kh, kw, b.stride, b.padding, b.dilation);
      TORCH_CHECK_VALUE(!b.pool || (g.ho >= 2 && g.wo >= 2), "mtd.rank_bridge: the ", g.ho, "x", g.wo,
                        " map is too small for the 2x2 max-pool");
    } catch (const c10::ValueError& e) {  // its input is the previous bridge's output: say which bridge
      TORCH_CHECK_VALUE(false, "mtd.rank_run: bridge ", i, " (input ", x.sizes(), "): ", e.what_without_backtrace());
    }
    const int64_t t = b.w_last ? b.w_last->size(0) : r2;
    const BridgeShape s{x.size(0), t, b.w_next ? b.w_next->size(0) : t, b.pool ? g.ho / 2 : g.ho,
                        b.pool ? g.wo / 2 : g.wo, b.pool};
    if (!fused_supported(x, x.size(1), r2, t)) {
      x = bridge_chain(x, b.spatial, b.w_last, b.bias, b.w_next, b.stride, b.padding, b.dilation, b.relu, b.pool);
    } else {
      const at::Tensor& s0 = b.spatial[0];
      const int64_t r1 = x.size(1), pixels = s.n * g.ho * g.wo;
      const int64_t taps = s0.size(2) * (b.cp4() ? 1 : s0.size(3));
      const int64_t spatial = b.cp4() ? r1 * (s0.size(2) + b.spatial[1].size(3)) : s0.size(1) == 1 ? r1 * taps
                                                                                                   : r1 * r2 * taps;
      const int64_t macs =
          pixels * (spatial + (b.w_last ? r2 * t : 0)) + (b.w_next ? s.n * s.hp * s.wp * t * s.r_out : 0);
      // every bridge but the last writes into a pooled buffer; the result is the caller's own tensor
      at::Tensor reuse = i + 1 < bridges.size() ? activation_buffer(i, s, x) : at::Tensor();
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rank_run_cpu", [&] {
        x = run_packed<scalar_t>(x, b, pk, g, r2, s, std::move(reuse), macs < kSerialMacs ? 1 : threads);
      });
    }
    pk += b.n_packed();
  }
  return x.contiguous(out_layout(input));
}

}  // namespace cpu

std::vector<at::Tensor> rank_run_pack(at::TensorList weights, at::IntArrayRef meta) {
  std::vector<at::Tensor> out;
  for (const cpu::Bridge& b : cpu::split(weights, meta)) cpu::pack_bridge(b, out);
  return out;
}

at::Tensor rank_run_cpu(const at::Tensor& input, at::TensorList weights, at::IntArrayRef meta, at::TensorList packed) {
  const std::vector<cpu::Bridge> bridges = cpu::split(weights, meta);
  std::vector<at::Tensor> own;
  if (packed.empty()) {
    own = rank_run_pack(weights, meta);
    packed = own;
  } else {
    cpu::check_packed(bridges, packed, input);
  }
  return cpu::run_bridges(input, bridges, packed.data());
}

struct RankRunPlan::Bridges {
  std::vector<cpu::Bridge> bridges;
  std::vector<at::Tensor> packed;
};

RankRunPlan::RankRunPlan(std::vector<at::Tensor> weights, const std::vector<int64_t>& meta)
    : weights_(std::move(weights)) {
  c10::NoGradGuard no_grad;  // the packed copies are constants, never part of a graph
  auto b = std::make_shared<Bridges>();
  b->bridges = cpu::split(weights_, meta);
  b->packed = rank_run_pack(weights_, meta);
  bridges_ = std::move(b);
  for (const at::Tensor& w : weights_) stamps_.push_back({w._version(), w.data_ptr(), w.scalar_type()});
}

bool RankRunPlan::unchanged(size_t i, const at::Tensor& w) const {
  const Stamp& s = stamps_[i];
  return w._version() == s.version && w.data_ptr() == s.data && w.scalar_type() == s.dtype;
}

bool RankRunPlan::packed_from(const std::vector<at::Tensor>& weights) const {
  if (weights.size() != weights_.size()) return false;
  for (size_t i = 0; i < weights.size(); ++i) {
    if (!weights[i].is_same(weights_[i]) || !unchanged(i, weights[i])) return false;
  }
  return true;
}

const std::vector<at::Tensor>& RankRunPlan::packed() const { return bridges_->packed; }

at::Tensor RankRunPlan::operator()(const at::Tensor& input) const {
  for (size_t i = 0; i < weights_.size(); ++i) {
    TORCH_CHECK_VALUE(unchanged(i, weights_[i]), "mtd.RankRunPlan: weight ", i,
                      " changed (in place, cast or moved) since it was packed; make a new plan");
  }
  TORCH_CHECK_VALUE(input.device().is_cpu() && !weights_.empty() && input.scalar_type() == weights_[0].scalar_type(),
                    "mtd.RankRunPlan: the input must be a CPU tensor of the weights' dtype, got ", input.scalar_type(),
                    " on ", input.device());
  c10::NoGradGuard no_grad;
  return cpu::run_bridges(input, bridges_->bridges, bridges_->packed.data());
}

}  // namespace mtd
