// ELECTRA's masking on CUDA: one block per sequence. The candidates' (key, position) pairs sit
// in shared memory; a candidate is chosen when fewer than k pairs are smaller than its own, and a
// block-wide scan over the chosen flags gives each its slot, so positions come out ascending,
// exactly as from the CPU kernel (same Philox stream, same decisions: ../masking.h).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks.h"
#include "../masking.h"

namespace electra_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// 8 bytes of shared memory per position; with the static counters this stays inside the 48 KiB
// a block gets without opting in (6144 positions would not: 48 KiB of keys alone).
constexpr int64_t kMaxSeqLen = 6016;
constexpr uint64_t kNotCandidate = ~0ull;

__host__ __device__ constexpr int64_t padded_len(int64_t seq_len) { return (seq_len + 3) / 4 * 4; }
static_assert(padded_len(kMaxSeqLen) == kMaxSeqLen, "the shared-memory bound holds padded");

template <typename id_t>
__global__ void __launch_bounds__(kThreads)
    mask_tokens_kernel(const MaskingParams p, const int64_t* __restrict__ seed_ptr,
                       const id_t* __restrict__ ids, const id_t* __restrict__ attention,
                       id_t* __restrict__ masked, int64_t* __restrict__ positions,
                       int64_t* __restrict__ labels, float* __restrict__ weights) {
  // (key << 32 | position), kNotCandidate otherwise; padded_len(L) long, so that the count of
  // smaller keys reads whole groups of four and has no tail for the compiler to over-read (nvcc
  // 13 loaded 16 bytes for a tail of one, past the end, which memcheck caught).
  extern __shared__ uint64_t keys[];
  __shared__ int counts[2];  // tokens, candidates
  __shared__ int warp_chosen[kWarps];

  const int64_t b = blockIdx.x, L = p.seq_len, N = p.max_predictions;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const id_t* row = ids + b * L;
  id_t* masked_row = masked + b * L;
  if (tid < 2) counts[tid] = 0;
  __syncthreads();

  int tokens = 0, candidates = 0;
  for (int64_t i = tid; i < L; i += kThreads) {
    const id_t id = row[i];
    uint64_t packed = kNotCandidate;
    if (attention[b * L + i] != 0) {
      ++tokens;
      if (!is_special(p, id)) {
        const uint32_t key = masking_randoms(seed, p.row_offset + b, i, L).x[0];
        if (!p.bernoulli || bernoulli_included(p, key)) {
          packed = (static_cast<uint64_t>(key) << 32) | static_cast<uint64_t>(i);
          ++candidates;
        }
      }
    }
    keys[i] = packed;
    masked_row[i] = id;  // the same thread overwrites it below if the position is chosen
  }
  const int64_t padded = padded_len(L);
  for (int64_t i = L + tid; i < padded; i += kThreads) keys[i] = kNotCandidate;
  tokens = __reduce_add_sync(0xffffffffu, tokens);
  candidates = __reduce_add_sync(0xffffffffu, candidates);
  if (lane == 0) {
    atomicAdd(&counts[0], tokens);
    atomicAdd(&counts[1], candidates);
  }
  __syncthreads();
  const int64_t available = counts[1];
  const int64_t wanted = p.bernoulli ? N : fixed_mask_count(p, counts[0]);
  const int64_t k = wanted < available ? wanted : available;

  int64_t slots_before = 0;  // chosen positions in earlier chunks
  for (int64_t start = 0; start < L; start += kThreads) {
    const int64_t i = start + tid;
    bool chosen = false;
    if (i < L && keys[i] != kNotCandidate) {
      if (k >= available) {
        chosen = true;
      } else {
        const uint64_t mine = keys[i];
        int64_t smaller = 0;
        // Padding is kNotCandidate, never smaller than a candidate's key.
        for (int64_t j = 0; j < padded; j += 4) {
          smaller +=
              (keys[j] < mine) + (keys[j + 1] < mine) + (keys[j + 2] < mine) + (keys[j + 3] < mine);
        }
        chosen = smaller < k;
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, chosen);
    if (lane == 0) warp_chosen[warp] = __popc(ballot);
    __syncthreads();
    int64_t slot = slots_before + __popc(ballot & ((1u << lane) - 1u));
    int64_t chunk_total = 0;
    for (int w = 0; w < kWarps; ++w) {
      slot += w < warp ? warp_chosen[w] : 0;
      chunk_total += warp_chosen[w];
    }
    if (chosen) {
      const id_t original = row[i];
      positions[b * N + slot] = i;
      labels[b * N + slot] = original;
      weights[b * N + slot] = 1.0f;
      masked_row[i] = static_cast<id_t>(
          masked_value(p, original, masking_randoms(seed, p.row_offset + b, i, L)));
    }
    slots_before += chunk_total;
    __syncthreads();  // warp_chosen is rewritten by the next chunk
  }
  for (int64_t s = k + tid; s < N; s += kThreads) {
    positions[b * N + s] = 0;
    labels[b * N + s] = 0;
    weights[b * N + s] = 0.0f;
  }
}

MaskingOutputs mask_tokens_cuda(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                const at::Tensor& seed, c10::IntArrayRef special_ids,
                                int64_t mask_token_id, int64_t vocab_size, double mask_prob,
                                int64_t max_predictions, double replace_prob, double random_prob,
                                bool bernoulli, int64_t row_offset) {
  const MaskingParams p = make_masking_params(input_ids, attention_mask, seed, special_ids,
                                              mask_token_id, vocab_size, mask_prob, max_predictions,
                                              replace_prob, random_prob, bernoulli, row_offset);
  TORCH_CHECK_VALUE(p.seq_len <= kMaxSeqLen,
                    "input_ids: the CUDA kernel handles sequences of at "
                    "most ",
                    kMaxSeqLen, " tokens, got ", p.seq_len);
  const c10::cuda::CUDAGuard guard(input_ids.device());
  const int64_t B = input_ids.size(0);
  auto outputs = empty_masking_outputs(input_ids, max_predictions);
  auto& [masked, positions, labels, weights] = outputs;
  if (B == 0) return outputs;
  const size_t shared_bytes = static_cast<size_t>(padded_len(p.seq_len)) * sizeof(uint64_t);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INDEX_TYPES(input_ids.scalar_type(), "mask_tokens_cuda", [&] {
    mask_tokens_kernel<index_t><<<static_cast<unsigned>(B), kThreads, shared_bytes, stream>>>(
        p, seed.const_data_ptr<int64_t>(), input_ids.const_data_ptr<index_t>(),
        attention_mask.const_data_ptr<index_t>(), masked.mutable_data_ptr<index_t>(),
        positions.mutable_data_ptr<int64_t>(), labels.mutable_data_ptr<int64_t>(),
        weights.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) { m.impl("mask_tokens", &mask_tokens_cuda); }

}  // namespace electra_fast
