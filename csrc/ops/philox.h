// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), shared
// by the CPU and CUDA kernels so that both draw the same stream. The pure-torch twin is
// electra_fast/ops/_philox.py; tests check all of them against the Random123 known answers.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define EF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define EF_HOST_DEVICE inline
#endif

namespace electra_fast {

// Which op a stream belongs to: the third counter word, so that one seed reused across ops
// never gives two ops the same numbers.
enum PhiloxStream : uint32_t {
  kStreamMasking = 1,
  kStreamSampling = 2,
  kStreamAttentionDropout = 3,
  kStreamResidualDropout = 4,
};

struct Philox4 {
  uint32_t x[4];
};

EF_HOST_DEVICE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  lo = static_cast<uint32_t>(p);
  hi = static_cast<uint32_t>(p >> 32);
#endif
}

EF_HOST_DEVICE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kMul0, c0, hi0, lo0);
    mulhilo32(kMul1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Word w (0..3) of r, chosen without indexing, so that r stays in registers on the GPU when w
// is not a compile-time constant.
EF_HOST_DEVICE uint32_t philox_word(const Philox4& r, uint32_t w) {
  const uint32_t low = (w & 1u) ? r.x[1] : r.x[0];
  const uint32_t high = (w & 1u) ? r.x[3] : r.x[2];
  return (w & 2u) ? high : low;
}

// The 16-bit dropout rule of the attention and residual dropouts: a 16-bit half of a Philox word
// keeps its value when it is at least t = round(p * 2^16) (at most 2^16 - 1; 0: no dropout), and
// kept values are scaled by 2^16 / (2^16 - t), so the expectation is exact. Host only.
inline uint32_t dropout_threshold(double dropout_p) {
  return static_cast<uint32_t>(std::min(65535.0, std::nearbyint(dropout_p * 65536.0)));
}
inline float dropout_keep_scale(uint32_t threshold) {
  return static_cast<float>(65536.0 / (65536.0 - threshold));
}

// The 8 keep decisions of a block's 16-bit halves as a bit mask: bit 2w is the low half of word
// w, bit 2w + 1 its high half.
EF_HOST_DEVICE uint32_t keep_bits(const Philox4& r, uint32_t threshold) {
  uint32_t bits = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (uint32_t w = 0; w < 4; ++w) {
    const uint32_t word = philox_word(r, w);
    bits |= static_cast<uint32_t>((word & 0xFFFFu) >= threshold) << (2 * w);
    bits |= static_cast<uint32_t>((word >> 16) >= threshold) << (2 * w + 1);
  }
  return bits;
}

// The four numbers of element `index` (a 64-bit position in the op's own index space) of
// `stream`, under the 64-bit key `seed`.
EF_HOST_DEVICE Philox4 philox_element(uint64_t seed, uint64_t index, uint32_t stream) {
  return philox4x32_10(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), stream, 0u,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

}  // namespace electra_fast
