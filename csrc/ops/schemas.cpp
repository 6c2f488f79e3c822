// The one place where electra_fast's operators are declared. Kernels for each backend are
// registered next to their code: CPU in csrc/ops/<op>.cpp, CUDA in csrc/ops/cuda/<op>.cu.
#include <Python.h>
#include <torch/library.h>

// `import electra_fast._C` loads this library, which runs the registrations below. The module
// itself is empty: everything is reached through torch.ops.electra_fast.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(electra_fast, m) {
  // ELECTRA's masking (pretrain_helpers.mask). `seed` is a 0-d int64 tensor holding the Philox
  // key, drawn by the Python wrapper, so the op itself is a pure function of its inputs. Row b
  // draws the numbers of row row_offset + b: a batch split across ranks masks as if whole.
  m.def(
      "mask_tokens(Tensor input_ids, Tensor attention_mask, Tensor seed, int[] special_ids, "
      "int mask_token_id, int vocab_size, float mask_prob, int max_predictions, "
      "float replace_prob, float random_prob, bool bernoulli, int row_offset) "
      "-> (Tensor, Tensor, Tensor, Tensor)");

  // The generator step (the MLM loss, a Gumbel-max sample per row and the logsumexp that the
  // backward needs) over logits [M, V]. `seed` and `row_offset` as for mask_tokens.
  // `inplace_backward` is read by the autograd formula only: the gradient then overwrites the
  // logits.
  m.def(
      "generator_step(Tensor logits, Tensor labels, Tensor seed, float temperature, "
      "bool disallow_labels, int ignore_index, bool inplace_backward, int row_offset) "
      "-> (Tensor, Tensor, Tensor)");
  // The same over a tile of columns [vocab_start, vocab_start + n) of a vocabulary of
  // vocab_size: (logsumexp, label logit, best Gumbel score, its column) of each row, to be merged
  // across tiles. Samples equal generator_step's for the same seed.
  m.def(
      "generator_step_tile(Tensor logits, Tensor labels, Tensor seed, float temperature, "
      "bool disallow_labels, int ignore_index, int vocab_start, int vocab_size, int row_offset) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // d loss / d logits = (softmax - onehot(label)) * grad_loss, from the saved logsumexp; for a
  // tile, `vocab_start` is its first column. The `_` variant writes it over the logits.
  m.def(
      "generator_step_backward(Tensor grad_loss, Tensor logits, Tensor labels, Tensor lse, "
      "int ignore_index, int vocab_start) -> Tensor");
  m.def(
      "generator_step_backward_(Tensor grad_loss, Tensor(a!) logits, Tensor labels, Tensor lse, "
      "int ignore_index, int vocab_start) -> ()");
  // Bidirectional attention over padded [B, L, H, D] (lengths optional, max_seqlen = L) or packed
  // [T, H, D] (cu_seqlens) sequences, flash style: returns (out, lse), lse [rows, H] fp32. The
  // backward recomputes the probabilities and the dropout mask from lse and `seed` (the Philox
  // key, required with dropout; csrc/ops/attention.h).
  m.def(
      "attention_forward(Tensor q, Tensor k, Tensor v, Tensor? lengths, Tensor? cu_seqlens, "
      "int max_seqlen, Tensor? seed, float dropout_p, float softmax_scale) -> (Tensor, Tensor)");
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor? lengths, Tensor? cu_seqlens, int max_seqlen, Tensor? seed, float dropout_p, "
      "float softmax_scale) -> (Tensor, Tensor, Tensor)");
  // The same over q, k and v packed as the encoder's fused projection makes them: qkv
  // [B, L, 3, H, D], or [T, 3, H, D] with cu_seqlens. The backward returns qkv's gradient as one
  // tensor that the kernels write into, where the three gradients of attention_backward cost
  // autograd a stack (a copy of all three) to become the projection's.
  m.def(
      "attention_qkv_forward(Tensor qkv, Tensor? lengths, Tensor? cu_seqlens, int max_seqlen, "
      "Tensor? seed, float dropout_p, float softmax_scale) -> (Tensor, Tensor)");
  m.def(
      "attention_qkv_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor lse, "
      "Tensor? lengths, Tensor? cu_seqlens, int max_seqlen, Tensor? seed, float dropout_p, "
      "float softmax_scale) -> Tensor");
  // LayerNorm(residual + dropout(x + x_bias)) * weight + bias over the last dimension
  // (layer_norm.h): returns (out, mean, rstd, out_x), the statistics fp32 of x's shape without
  // its last dimension, out_x the output in x's dtype too when with_out_x (else empty). The
  // backward recomputes the sum and the dropout mask from x, residual and `seed`; it takes the
  // gradients of out and (optionally) out_x, and returns those of x and residual, and those of
  // weight, bias and x_bias (when given) as the rows of one float32 [2 or 3, H] tensor.
  m.def(
      "dropout_add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, "
      "Tensor? x_bias, Tensor? seed, float dropout_p, float eps, bool with_out_x) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "dropout_add_layer_norm_backward(Tensor grad_out, Tensor? grad_out_x, Tensor x, "
      "Tensor residual, Tensor weight, Tensor? x_bias, Tensor mean, Tensor rstd, Tensor? seed, "
      "float dropout_p) -> (Tensor, Tensor, Tensor)");
  // gelu(x + bias) over the last dimension (bias_gelu.h), the exact form or, with `approximate`,
  // the tanh one. The backward returns the gradients of x and of bias.
  m.def("bias_gelu(Tensor x, Tensor bias, bool approximate) -> Tensor");
  m.def(
      "bias_gelu_backward(Tensor grad, Tensor x, Tensor bias, bool approximate) "
      "-> (Tensor, Tensor)");
  // The float32 sums of x over every dimension but the last (column_sums.h): a linear layer's
  // bias gradient from its output's.
  m.def("column_sums(Tensor x) -> Tensor");
}

// Test-only ops (no CPU kernel, no Python wrapper), for tests/ops/test_wgmma.py.
TORCH_LIBRARY(electra_fast_test, m) {
  // One wgmma tile (csrc/ops/cuda/wgmma_probe.cu): D [64, N] fp32 from a and b stored as the
  // attention kernels store their operands; mode 0: D = a b^T, 1: D = a^T b, 2: D = a b.
  m.def("wgmma_matmul(Tensor a, Tensor b, int mode) -> Tensor");
}
