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
  // key, drawn by the Python wrapper, so the op itself is a pure function of its inputs.
  m.def(
      "mask_tokens(Tensor input_ids, Tensor attention_mask, Tensor seed, int[] special_ids, "
      "int mask_token_id, int vocab_size, float mask_prob, int max_predictions, "
      "float replace_prob, float random_prob, bool bernoulli) -> (Tensor, Tensor, Tensor, Tensor)");
}
