// ELECTRA's masking on the CPU: sequences in parallel, a linear-time selection per sequence.
#include "masking.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "checks.h"

namespace electra_fast {

MaskingParams make_masking_params(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                  const at::Tensor& seed, c10::IntArrayRef special_ids,
                                  int64_t mask_token_id, int64_t vocab_size, double mask_prob,
                                  int64_t max_predictions, double replace_prob, double random_prob,
                                  bool bernoulli, int64_t row_offset) {
  EF_CHECK_DIM(input_ids, 2);
  EF_CHECK_DTYPE(input_ids,
                 input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
                 "int32 or int64");
  EF_CHECK_SHAPE(attention_mask, input_ids.size(0), input_ids.size(1));
  EF_CHECK_DTYPE(attention_mask, attention_mask.scalar_type() == input_ids.scalar_type(),
                 "of input_ids' dtype");
  EF_CHECK_DEVICE(attention_mask, input_ids.device());
  EF_CHECK_CONTIGUOUS(input_ids);
  EF_CHECK_CONTIGUOUS(attention_mask);
  EF_CHECK_DIM(seed, 0);
  EF_CHECK_DTYPE(seed, seed.scalar_type() == at::kLong, "int64");
  EF_CHECK_DEVICE(seed, input_ids.device());
  TORCH_CHECK_VALUE(vocab_size > 0, "vocab_size must be positive, got ", vocab_size);
  TORCH_CHECK_VALUE(mask_token_id >= 0 && mask_token_id < vocab_size,
                    "mask_token_id must be in [0, vocab_size=", vocab_size, "), got ",
                    mask_token_id);
  TORCH_CHECK_VALUE(mask_prob > 0.0 && mask_prob <= 1.0, "mask_prob must be in (0, 1], got ",
                    mask_prob);
  TORCH_CHECK_VALUE(max_predictions >= 1, "max_predictions must be at least 1, got ",
                    max_predictions);
  TORCH_CHECK_VALUE(replace_prob >= 0.0 && random_prob >= 0.0 && replace_prob + random_prob <= 1.0,
                    "replace_prob and random_prob must be non-negative and sum to at most 1, got ",
                    replace_prob, " and ", random_prob);

  MaskingParams p{};
  p.seq_len = input_ids.size(1);
  p.max_predictions = max_predictions;
  p.vocab_size = vocab_size;
  p.mask_token_id = mask_token_id;
  p.mask_prob = static_cast<float>(mask_prob);
  p.replace_prob = replace_prob;
  p.random_prob = random_prob;
  p.bernoulli = bernoulli;
  TORCH_CHECK_VALUE(row_offset >= 0, "row_offset must be non-negative, got ", row_offset);
  p.row_offset = row_offset;
  std::vector<int64_t> specials(special_ids.begin(), special_ids.end());
  specials.push_back(mask_token_id);
  std::sort(specials.begin(), specials.end());
  specials.erase(std::unique(specials.begin(), specials.end()), specials.end());
  TORCH_CHECK_VALUE(specials.size() <= kMaxSpecialIds, "special_ids may hold at most ",
                    kMaxSpecialIds - 1, " distinct ids besides mask_token_id, got ",
                    specials.size());
  for (int64_t id : specials) {
    TORCH_CHECK_VALUE(id >= 0 && id < vocab_size,
                      "special_ids must be in [0, vocab_size=", vocab_size, "), got ", id);
  }
  TORCH_CHECK_VALUE(random_prob == 0.0 || static_cast<int64_t>(specials.size()) < vocab_size,
                    "random_prob > 0 needs a non-special token, but all ", vocab_size,
                    " ids are special");
  p.num_special = static_cast<int32_t>(specials.size());
  std::copy(specials.begin(), specials.end(), p.special_ids);
  return p;
}

MaskingOutputs empty_masking_outputs(const at::Tensor& input_ids, int64_t max_predictions) {
  const std::array<int64_t, 2> slots{input_ids.size(0), max_predictions};
  return {at::empty_like(input_ids), at::empty(slots, input_ids.options().dtype(at::kLong)),
          at::empty(slots, input_ids.options().dtype(at::kLong)),
          at::empty(slots, input_ids.options().dtype(at::kFloat))};
}

namespace {

template <typename id_t>
void mask_rows(const MaskingParams& p, uint64_t seed, const id_t* ids, const id_t* attention,
               id_t* masked, int64_t* positions, int64_t* labels, float* weights, int64_t begin,
               int64_t end) {
  const int64_t L = p.seq_len, N = p.max_predictions;
  std::vector<uint64_t> keys;  // (key << 32 | position) of each candidate
  keys.reserve(L);
  for (int64_t b = begin; b < end; ++b) {
    const id_t* row = ids + b * L;
    const id_t* row_mask = attention + b * L;
    keys.clear();
    int64_t num_tokens = 0;
    for (int64_t i = 0; i < L; ++i) {
      const int64_t id = row[i];
      TORCH_CHECK_VALUE(id >= 0 && id < p.vocab_size,
                        "input_ids must be in [0, vocab_size=", p.vocab_size, "), got ", id,
                        " at [", b, ", ", i, "]");
      if (row_mask[i] == 0) continue;
      ++num_tokens;
      if (is_special(p, id)) continue;
      const uint32_t key = masking_randoms(seed, p.row_offset + b, i, L).x[0];
      if (p.bernoulli && !bernoulli_included(p, key)) continue;
      keys.push_back((static_cast<uint64_t>(key) << 32) | static_cast<uint64_t>(i));
    }
    const int64_t available = static_cast<int64_t>(keys.size());
    const int64_t k = std::min(available, p.bernoulli ? N : fixed_mask_count(p, num_tokens));
    std::nth_element(keys.begin(), keys.begin() + k, keys.end());
    std::vector<int64_t> chosen(k);
    for (int64_t s = 0; s < k; ++s) chosen[s] = static_cast<int64_t>(keys[s] & 0xffffffffu);
    std::sort(chosen.begin(), chosen.end());

    std::copy(row, row + L, masked + b * L);
    for (int64_t s = 0; s < N; ++s) {
      const bool used = s < k;
      const int64_t pos = used ? chosen[s] : 0;
      positions[b * N + s] = pos;
      labels[b * N + s] = used ? static_cast<int64_t>(row[pos]) : 0;
      weights[b * N + s] = used ? 1.0f : 0.0f;
      if (used) {
        masked[b * L + pos] = static_cast<id_t>(
            masked_value(p, row[pos], masking_randoms(seed, p.row_offset + b, pos, L)));
      }
    }
  }
}

MaskingOutputs mask_tokens_cpu(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                               const at::Tensor& seed, c10::IntArrayRef special_ids,
                               int64_t mask_token_id, int64_t vocab_size, double mask_prob,
                               int64_t max_predictions, double replace_prob, double random_prob,
                               bool bernoulli, int64_t row_offset) {
  const MaskingParams p = make_masking_params(input_ids, attention_mask, seed, special_ids,
                                              mask_token_id, vocab_size, mask_prob, max_predictions,
                                              replace_prob, random_prob, bernoulli, row_offset);
  const int64_t B = input_ids.size(0);
  auto outputs = empty_masking_outputs(input_ids, max_predictions);
  auto& [masked, positions, labels, weights] = outputs;
  const uint64_t key = static_cast<uint64_t>(seed.item<int64_t>());
  AT_DISPATCH_INDEX_TYPES(input_ids.scalar_type(), "mask_tokens_cpu", [&] {
    at::parallel_for(
        0, B, /*grain_size=*/std::max<int64_t>(1, 16384 / std::max<int64_t>(1, p.seq_len)),
        [&](int64_t begin, int64_t end) {
          mask_rows<index_t>(
              p, key, input_ids.const_data_ptr<index_t>(), attention_mask.const_data_ptr<index_t>(),
              masked.mutable_data_ptr<index_t>(), positions.mutable_data_ptr<int64_t>(),
              labels.mutable_data_ptr<int64_t>(), weights.mutable_data_ptr<float>(), begin, end);
        });
  });
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CPU, m) { m.impl("mask_tokens", &mask_tokens_cpu); }

}  // namespace electra_fast
