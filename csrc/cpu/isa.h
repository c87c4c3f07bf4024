// The x86 instruction-set level the CPU micro-kernels (small_gemm.cpp, stencil_kernels.cpp) run at: detected
// once at load time from the CPU's features, so one build runs on any x86-64 and uses AVX-512 where it exists.
// MTD_CPU_ISA=avx2|baseline lowers the level (tests run every variant on one host); it never raises it.
#pragma once

namespace mtd {
namespace cpu {

enum class Isa { Baseline, Avx2, Avx512 };

Isa isa();
const char* isa_name();  // "avx512", "avx2" or "baseline"

// The build of a kernel for the level in use.
template <typename F>
F by_isa(F avx512, F avx2, F base) {
  return isa() == Isa::Avx512 ? avx512 : isa() == Isa::Avx2 ? avx2 : base;
}

}  // namespace cpu
}  // namespace mtd

// Off x86-64 only the baseline build exists.
#if defined(__x86_64__)
#define MTD_BY_ISA(avx512, avx2, base) ::mtd::cpu::by_isa(avx512, avx2, base)
#else
#define MTD_BY_ISA(avx512, avx2, base) (base)
#endif
