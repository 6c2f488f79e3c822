// The Hopper (sm_90a) attention forward and backward, beside the sm80 kernels of attention.cu:
// same semantics, same outputs and lse, the same dropout stream (so either backward takes
// either forward's results), wgmma tensor-core instructions instead of mma.sync.
#pragma once
#include <ATen/core/Tensor.h>

#include "../attention.h"

namespace electra_fast {

// Whether the wgmma kernels take a call with these inputs: the extension was built for sm_90a
// (ELECTRA_FAST_SM90A, set by setup.py), q is on a compute capability 9.0 device, the head dim
// is 64 or 128, and ELECTRA_FAST_WGMMA=1 asks for it. Opt-in until a GPU run has checked it.
bool attention_sm90_applies(const at::Tensor& q, int64_t head_dim);

// Writes out and lse of a prepared call (inputs checked, outputs allocated as for the sm80
// kernel), on the current stream.
void attention_forward_sm90(const AttentionCall& call, at::Tensor& out, at::Tensor& lse);

// Whether the wgmma backward can write dq itself: every sequence fits one block's 128 keys, so
// no two blocks add into the same rows of dq.
bool attention_sm90_backward_writes_dq(const AttentionParams& p);

// Writes dk, dv and dq of a prepared backward call, on the current stream. dq is either the
// gradient itself, in q's dtype with rows p.grad_row_stride apart (only where
// attention_sm90_backward_writes_dq), or a zeroed fp32 sum [rows, H, D] that the blocks add into.
void attention_backward_sm90(const AttentionBackwardCall& b, const at::Tensor& dq,
                             const at::Tensor& dk, const at::Tensor& dv);

}  // namespace electra_fast
