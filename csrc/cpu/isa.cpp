#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace mtd {
namespace cpu {
namespace {

Isa detect() {
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();  // libgcc also checks that the OS saves the wide registers (XCR0)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::Avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Baseline;
}

Isa lowered(Isa detected) {
  const char* env = std::getenv("MTD_CPU_ISA");
  if (env == nullptr) return detected;
  if (std::strcmp(env, "baseline") == 0) return Isa::Baseline;
  if (std::strcmp(env, "avx2") == 0 && detected == Isa::Avx512) return Isa::Avx2;
  return detected;
}

}  // namespace

Isa isa() {
  static const Isa level = lowered(detect());
  return level;
}

const char* isa_name() {
  switch (isa()) {
    case Isa::Avx512:
      return "avx512";
    case Isa::Avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace cpu
}  // namespace mtd
