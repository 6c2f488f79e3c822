// Vectorised CPU loops: the hot loops of the CPU kernels are written so that the compiler
// vectorises them (contiguous inner loops, no calls, explicit partial sums instead of a
// reassociated reduction), and each kernel marked EF_CPU_CLONES is compiled for AVX-512, AVX2
// and the baseline, the loader picking the best the CPU has (GCC's target clones; other
// compilers and CPUs get the baseline copy). Helpers marked EF_INLINE are always inlined, so
// that they take their caller's instruction set.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EF_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define EF_CPU_CLONES
#endif
#define EF_INLINE [[gnu::always_inline]] inline
