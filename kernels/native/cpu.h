// Runtime CPU feature detection and a parallel-for on onnxruntime's intra-op thread pool, shared by the kernel
// files. setup.py compiles portable x86-64 code (no -march): SIMD paths are functions with
// __attribute__((target("avx2,fma"))) (or "avx512f,..."), chosen at run time with these predicates.
//
// ONNXCOMP_NATIVE_ISA (read on every call, so a test can change it between sessions) caps what the predicates
// report: "scalar" turns every SIMD path off, "avx2" turns the AVX-512 paths off. Unset or anything else: the CPU
// decides. Kernels read the predicates when a session creates them, so one kernel keeps one ISA.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "registry.h"

namespace onnxcomp {

namespace cpu_detail {
inline int isa_cap() {  // 0: scalar only, 1: up to AVX2/FMA, 2: no cap
  const char* env = std::getenv("ONNXCOMP_NATIVE_ISA");
  if (env == nullptr) return 2;
  if (std::strcmp(env, "scalar") == 0) return 0;
  if (std::strcmp(env, "avx2") == 0) return 1;
  return 2;
}
}  // namespace cpu_detail

// AVX2 and FMA are there (and the OS saves YMM state: GCC's __builtin_cpu_supports checks XCR0).
inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has && cpu_detail::isa_cap() >= 1;
#else
  return false;
#endif
}

// AVX-512 F (with AVX2 and FMA) is there and the OS saves ZMM state.
inline bool cpu_has_avx512f() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has && cpu_detail::isa_cap() >= 2;
#else
  return false;
#endif
}

// Runs body(i) for every i in [0, n) on onnxruntime's intra-op pool (Ort::KernelContext::ParallelFor, which
// honours intra_op_num_threads; with one thread, or n <= 1, everything runs inline on the calling thread). Each
// i is one task: make n a handful of equal chunks per thread, not one task per element. body must not throw.
template <class F>
inline void parallel_for(OrtKernelContext* ctx, size_t n, F&& body) {
  using Body = std::remove_reference_t<F>;
  if (n == 0) return;
  if (n == 1 || ctx == nullptr) {
    for (size_t i = 0; i < n; ++i) body(i);
    return;
  }
  auto trampoline = [](void* data, size_t i) { (*static_cast<Body*>(data))(i); };
  Ort::KernelContext(ctx).ParallelFor(trampoline, n, 0, const_cast<void*>(static_cast<const void*>(&body)));
}

}  // namespace onnxcomp
