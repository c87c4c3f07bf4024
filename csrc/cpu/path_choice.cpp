#include "cpu/path_choice.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <vector>

namespace mtd {
namespace cpu {
namespace {

// Timed calls per path after one warm-up call each (which also faults in scratch buffers and lets oneDNN
// pick its primitive). The two paths alternate and their medians are compared: on a shared, noisy machine
// (this project's 2-core VM varies 1.5-2x between runs), timing all of one path's calls and then the
// other's would let a burst of load decide the choice.
constexpr int kTimedReps = 5;

// A call shape as plain integers (cheap to build and hash on every call): the op's name hashed,
// then dtype, layout, every size, geometry, bias/ReLU and the thread count.
using Key = std::vector<int64_t>;

struct KeyHash {
  size_t operator()(const Key& key) const {
    size_t h = 0;
    for (const int64_t v : key) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

struct Entry {
  std::string description;  // for path_cache_entries()
  Path path;
};

std::mutex cache_mutex;
std::unordered_map<Key, Entry, KeyHash>& cache() {
  static std::unordered_map<Key, Entry, KeyHash> entries;
  return entries;
}

enum class Forced { Auto, Fused, Chain };

Forced forced_path() {
  // MTD_CPU_KERNELS, or MTD_CPU_PATH (its old name) when that is unset
  const char* name = "MTD_CPU_KERNELS";
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') {
    name = "MTD_CPU_PATH";
    env = std::getenv(name);
  }
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return Forced::Auto;
  if (std::strcmp(env, "fused") == 0) return Forced::Fused;
  if (std::strcmp(env, "chain") == 0) return Forced::Chain;
  TORCH_CHECK_VALUE(false, name, "=", env, " is not one of auto, fused, chain");
}

Key make_key(const char* op, const at::Tensor& x, at::TensorList weights, bool has_bias, at::IntArrayRef stride,
             at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  Key key;
  key.reserve(32);
  key.push_back(static_cast<int64_t>(std::hash<std::string>()(op)));
  key.push_back(static_cast<int64_t>(x.scalar_type()));
  key.push_back(x.is_contiguous() ? 0 : x.is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 2);
  auto put = [&key](at::IntArrayRef values) {
    key.push_back(static_cast<int64_t>(values.size()));
    key.insert(key.end(), values.begin(), values.end());
  };
  put(x.sizes());
  for (const auto& w : weights) put(w.sizes());
  put(stride);
  put(padding);
  put(dilation);
  key.push_back(has_bias);
  key.push_back(relu);
  key.push_back(at::get_num_threads());
  return key;
}

std::string describe(const char* op, const at::Tensor& x, at::TensorList weights, bool has_bias,
                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool relu) {
  std::ostringstream out;
  const char* layout = x.is_contiguous() ? "nchw" : x.is_contiguous(at::MemoryFormat::ChannelsLast) ? "nhwc" : "strided";
  out << op << ' ' << x.scalar_type() << ' ' << layout << " x=" << x.sizes() << " w=";
  for (const auto& w : weights) out << w.sizes();
  out << " stride=" << stride << " padding=" << padding << " dilation=" << dilation << " bias=" << has_bias
      << " relu=" << relu << " threads=" << at::get_num_threads();
  return out.str();
}

// One call of `fn` in seconds; `out` keeps its result.
double seconds(c10::function_ref<at::Tensor()> fn, at::Tensor& out) {
  const auto t0 = std::chrono::steady_clock::now();
  out = fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Below the autograd layer a training forward and a no_grad inference look alike (grad mode is off
// in both, parameters require grad in both); an input that requires grad is the sign of training
// for every layer but the first.
bool in_training_graph(const at::Tensor& x) { return x.requires_grad(); }

}  // namespace

at::Tensor run_fastest(const char* op, const at::Tensor& x, at::TensorList weights,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, bool relu, c10::function_ref<at::Tensor()> fused,
                       c10::function_ref<at::Tensor()> chain) {
  switch (forced_path()) {
    case Forced::Fused: return fused();
    case Forced::Chain: return chain();
    case Forced::Auto: break;
  }
  const bool has_bias = bias.has_value() && bias->defined();
  Key key = make_key(op, x, weights, has_bias, stride, padding, dilation, relu);
  std::optional<Path> cached;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    const auto it = cache().find(key);
    if (it != cache().end()) cached = it->second.path;
  }
  if (cached.has_value()) return *cached == Path::Fused ? fused() : chain();
  if (in_training_graph(x)) return fused();  // no timing inside a training step
  at::Tensor fused_out, chain_out;
  fused_out = fused();  // warm-up
  chain_out = chain();
  std::vector<double> t_fused, t_chain;
  for (int i = 0; i < kTimedReps; ++i) {  // alternating, so load changes hit both paths alike
    t_fused.push_back(seconds(fused, fused_out));
    t_chain.push_back(seconds(chain, chain_out));
  }
  const Path choice = median(t_fused) <= median(t_chain) ? Path::Fused : Path::Chain;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    cache().emplace(std::move(key),
                    Entry{describe(op, x, weights, has_bias, stride, padding, dilation, relu), choice});
  }
  return choice == Path::Fused ? fused_out : chain_out;
}

std::vector<std::pair<std::string, std::string>> path_cache_entries() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& item : cache()) {
    out.emplace_back(item.second.description, item.second.path == Path::Fused ? "fused" : "chain");
  }
  std::sort(out.begin(), out.end());
  return out;
}

void clear_path_cache() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  cache().clear();
}

}  // namespace cpu
}  // namespace mtd
