// Philox4x32-10 blocks many at once on the CPU, for the dropout masks of the CPU kernels: the
// same numbers as philox4x32_10 (philox.h), several times faster where the CPU has AVX2.
// GCC does not vectorise Philox's 32 x 32 -> 64-bit multiplies by itself, so the AVX2 path is
// written with intrinsics (vpmuludq on the even and the odd lanes); other CPUs and compilers
// run the scalar function eight times.
#pragma once
#include <cstdint>

#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define EF_PHILOX_AVX2 1
#endif

namespace electra_fast {

// Blocks are computed kPhiloxBatch at a time: four vectors of eight lanes whose rounds
// interleave, which hides the multiplies' latency (one vector alone is latency-bound).
constexpr int kPhiloxBatch = 32;

// Word w of block j is x[w][j].
struct PhiloxBatch {
  uint32_t x[4][kPhiloxBatch];
};

// Blocks j < kPhiloxBatch with counters (c0[j], c1[j], c2, c3) under the key (k0, k1).
inline void philox_batch_scalar(const uint32_t* c0, const uint32_t* c1, uint32_t c2, uint32_t c3,
                                uint32_t k0, uint32_t k1, PhiloxBatch& out) {
  for (int j = 0; j < kPhiloxBatch; ++j) {
    const Philox4 r = philox4x32_10(c0[j], c1[j], c2, c3, k0, k1);
    for (int w = 0; w < 4; ++w) out.x[w][j] = r.x[w];
  }
}

#if defined(EF_PHILOX_AVX2)
// hi and lo 32-bit halves of m * a for eight unsigned lanes of a (m in each 64-bit lane's low
// half): the even lanes' products, then the odd lanes' shifted down and multiplied.
__attribute__((target("avx2"), always_inline)) inline void mulhilo8(__m256i m, __m256i a,
                                                                    __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

__attribute__((target("avx2"))) inline void philox_batch_avx2(const uint32_t* c0p,
                                                              const uint32_t* c1p, uint32_t c2s,
                                                              uint32_t c3s, uint32_t k0,
                                                              uint32_t k1, PhiloxBatch& out) {
  constexpr int V = kPhiloxBatch / 8;
  __m256i c0[V], c1[V], c2[V], c3[V];
  for (int v = 0; v < V; ++v) {
    c0[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0p + 8 * v));
    c1[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c1p + 8 * v));
    c2[v] = _mm256_set1_epi32(static_cast<int>(c2s));
    c3[v] = _mm256_set1_epi32(static_cast<int>(c3s));
  }
  const __m256i m0 = _mm256_set1_epi64x(0xD2511F53), m1 = _mm256_set1_epi64x(0xCD9E8D57);
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int v = 0; v < V; ++v) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(m0, c0[v], hi0, lo0);
      mulhilo8(m1, c2[v], hi1, lo1);
      c0[v] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[v]), key0);
      c2[v] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[v]), key1);
      c1[v] = lo1;
      c3[v] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  for (int v = 0; v < V; ++v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.x[0] + 8 * v), c0[v]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.x[1] + 8 * v), c1[v]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.x[2] + 8 * v), c2[v]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.x[3] + 8 * v), c3[v]);
  }
}
#endif

inline void philox_batch(const uint32_t* c0, const uint32_t* c1, uint32_t c2, uint32_t c3,
                         uint32_t k0, uint32_t k1, PhiloxBatch& out) {
#if defined(EF_PHILOX_AVX2)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return philox_batch_avx2(c0, c1, c2, c3, k0, k1, out);
#endif
  philox_batch_scalar(c0, c1, c2, c3, k0, k1, out);
}

// The keep bits (keep_bits in philox.h) of block j of a batch.
inline uint32_t keep_halves(const PhiloxBatch& r, int j, uint32_t threshold) {
  return keep_bits(Philox4{{r.x[0][j], r.x[1][j], r.x[2][j], r.x[3][j]}}, threshold);
}

}  // namespace electra_fast
