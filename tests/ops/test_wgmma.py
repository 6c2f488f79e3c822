"""The wgmma wrappers and shared-memory layouts of csrc/ops/cuda/wgmma.cuh on their own (H100/
H200): one 64 x N tile per operand layout the Hopper attention kernels use, against torch's
matmul. Were the attention tests in test_attention_sm90.py to fail, these say whether the
descriptors and swizzle are at fault or the attention code."""

import pytest
import torch

from tests.ops import hopper

pytestmark = hopper.MARKS
K = 128

# mode: (a's stored shape, b's stored shape for N, the product from the stored matrices)
MODES = {
    0: ((64, K), lambda n: (n, K), lambda a, b: a @ b.T),  # K-major both: S = Q K^T
    1: ((K, 64), lambda n: (K, n), lambda a, b: a.T @ b),  # MN-major both: dV = P^T dO
    2: ((64, K), lambda n: (K, n), lambda a, b: a @ b),  # A in registers: O = P V
}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("N", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_one_tile_equals_torch_matmul(mode, N, dtype):
    a_shape, b_shape, product = MODES[mode]
    generator = torch.Generator("cuda").manual_seed(mode * 1000 + N)
    # Distinct values in every position, so that a misplaced row or column cannot cancel out.
    a = torch.randn(a_shape, device="cuda", generator=generator).to(dtype)
    b = torch.randn(b_shape(N), device="cuda", generator=generator).to(dtype)
    got = torch.ops.electra_fast_test.wgmma_matmul(a, b, mode)
    want = product(a.double(), b.double()).float()
    # fp32 accumulation of exact products: only the summation order (and the tensor cores'
    # internal rounding) differs, about 1e-5 here; a misplaced element moves a value by ~1.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_bad_shapes_are_refused():
    a = torch.zeros(64, K, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"b must be \[N, 128\] with N 64 or 128"):
        torch.ops.electra_fast_test.wgmma_matmul(a, torch.zeros_like(a)[:32], 0)
    with pytest.raises(ValueError, match="mode must be 0, 1 or 2"):
        torch.ops.electra_fast_test.wgmma_matmul(a, a, 3)
