// GCC/clang vector extensions for the CPU micro-kernels: one template body per kernel, instantiated with the
// vector width of each ISA (64 bytes: zmm, 32: ymm, 16: xmm) inside functions compiled with that ISA's
// target attribute. A vector wider than the ISA's registers is lowered through the stack (measured: a small
// GEMM at 6-10 GFLOP/s under AVX2 with 64-byte vectors, 30-103 with 32-byte ones).
#pragma once

#include <cstdint>
#include <cstring>


#if defined(__GNUC__)
// The vector types never cross a call (every helper is always_inline), so GCC's ABI note is moot.
#pragma GCC diagnostic ignored "-Wpsabi"
#define MTD_ALWAYS_INLINE inline __attribute__((always_inline))
#define MTD_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#define MTD_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace mtd {
namespace cpu {
namespace simd {

template <typename T, int B>  // B bytes of T
struct Vec {
  typedef T type __attribute__((vector_size(B)));
  static constexpr int64_t lanes = B / sizeof(T);
};

// A part of a vector: the first `lanes` (< the vector's) elements; a load zeroes the rest. AVX-512 and AVX2 mask
// the lanes in one instruction, written as inline assembly: the intrinsics would be target functions that
// cannot inline into these ISA-neutral templates, while the assembly is checked only where it finally lands,
// the wrapper compiled for that ISA. Baseline x86-64 (and the other sizes) copy with memcpy, a library call.
template <typename T, int B>
MTD_ALWAYS_INLINE typename Vec<T, B>::type load_part(const T* p, int64_t lanes) {
  typename Vec<T, B>::type v = {};
#if defined(__x86_64__)
  if constexpr (B == 64) {
    if constexpr (sizeof(T) == 4) {
      const unsigned short mask = static_cast<unsigned short>((1u << lanes) - 1u);
      asm("vmovups %1, %0%{%2%}%{z%}" : "=v"(v) : "m"(*reinterpret_cast<const T(*)[16]>(p)), "Yk"(mask));
    } else {
      const unsigned char mask = static_cast<unsigned char>((1u << lanes) - 1u);
      asm("vmovupd %1, %0%{%2%}%{z%}" : "=v"(v) : "m"(*reinterpret_cast<const T(*)[8]>(p)), "Yk"(mask));
    }
    return v;
  } else if constexpr (B == 32) {
    if constexpr (sizeof(T) == 4) {
      typedef int32_t I __attribute__((vector_size(32)));
      const I mask = I{0, 1, 2, 3, 4, 5, 6, 7} < static_cast<int32_t>(lanes);
      asm("vmaskmovps %1, %2, %0" : "=x"(v) : "m"(*reinterpret_cast<const T(*)[8]>(p)), "x"(mask));
    } else {
      typedef int64_t I __attribute__((vector_size(32)));
      const I mask = I{0, 1, 2, 3} < static_cast<int64_t>(lanes);
      asm("vmaskmovpd %1, %2, %0" : "=x"(v) : "m"(*reinterpret_cast<const T(*)[4]>(p)), "x"(mask));
    }
    return v;
  }
#endif
  std::memcpy(&v, p, lanes * sizeof(T));
  return v;
}

// The lanes past `lanes` in memory are left as they are ("+m": the assembly reads the whole span too, so no
// earlier store to it is dropped).
template <typename T, int B>
MTD_ALWAYS_INLINE void store_part(T* p, typename Vec<T, B>::type v, int64_t lanes) {
#if defined(__x86_64__)
  if constexpr (B == 64) {
    if constexpr (sizeof(T) == 4) {
      const unsigned short mask = static_cast<unsigned short>((1u << lanes) - 1u);
      asm("vmovups %1, %0%{%2%}" : "+m"(*reinterpret_cast<T(*)[16]>(p)) : "v"(v), "Yk"(mask));
    } else {
      const unsigned char mask = static_cast<unsigned char>((1u << lanes) - 1u);
      asm("vmovupd %1, %0%{%2%}" : "+m"(*reinterpret_cast<T(*)[8]>(p)) : "v"(v), "Yk"(mask));
    }
    return;
  } else if constexpr (B == 32) {
    if constexpr (sizeof(T) == 4) {
      typedef int32_t I __attribute__((vector_size(32)));
      const I mask = I{0, 1, 2, 3, 4, 5, 6, 7} < static_cast<int32_t>(lanes);
      asm("vmaskmovps %2, %1, %0" : "+m"(*reinterpret_cast<T(*)[8]>(p)) : "x"(mask), "x"(v));
    } else {
      typedef int64_t I __attribute__((vector_size(32)));
      const I mask = I{0, 1, 2, 3} < static_cast<int64_t>(lanes);
      asm("vmaskmovpd %2, %1, %0" : "+m"(*reinterpret_cast<T(*)[4]>(p)) : "x"(mask), "x"(v));
    }
    return;
  }
#endif
  std::memcpy(p, &v, lanes * sizeof(T));
}

// The first `lanes` elements at p (default: a whole vector, one vmovups), the rest zero.
template <typename T, int B>
MTD_ALWAYS_INLINE typename Vec<T, B>::type load(const T* p, int64_t lanes = Vec<T, B>::lanes) {
  if (lanes != Vec<T, B>::lanes) return load_part<T, B>(p, lanes);
  typename Vec<T, B>::type v;
  std::memcpy(&v, p, B);
  return v;
}

template <typename T, int B>
MTD_ALWAYS_INLINE void store(T* p, typename Vec<T, B>::type v, int64_t lanes = Vec<T, B>::lanes) {
  if (lanes != Vec<T, B>::lanes) return store_part<T, B>(p, v, lanes);
  std::memcpy(p, &v, B);
}

}  // namespace simd
}  // namespace cpu
}  // namespace mtd
#endif
