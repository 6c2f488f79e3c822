"""The pretraining forward as a GPU runs it, traced on the CPU with fake CUDA tensors
(torch's FakeTensorMode: shapes, dtypes and devices, no data), so that CI, which has no GPU,
still runs the Python branches only CUDA takes: the weight casts of CUDA autocast, LayerNorms in
float32, the choice of our CUDA kernels over the references. The GPU tests run the same code for
real (tests/pretraining/test_cuda.py), but only when a GPU is lent.

A fake tensor has no values, so reading one on the host (.item(), a data-dependent shape) raises:
the trace also proves that the forward never makes the host wait for the device. The backward
cannot be traced this way (the autograd engine needs a CUDA device to run CUDA nodes).
"""

import collections
import math
from types import SimpleNamespace

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from electra_fast import _extension
from electra_fast.model import ElectraConfig, ElectraForPretraining, set_gradient_checkpointing
from electra_fast.ops.sampling_linear import DEFAULT_VOCAB_TILE

pytestmark = pytest.mark.skipif(
    not all(_extension.use_kernel(op, torch.device("cuda")) for op in _extension.OP_NAMES),
    reason="needs the CUDA kernels built and used (their registrations decide the dispatch)",
)

VOCAB = 30522


class OpLog(TorchDispatchMode):
    """Counts the ops by name and keeps the dtypes of every matrix multiply's operands."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.matmul_dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = f"{func.namespace}.{func._opname}"
        self.calls[name] += 1
        if name in ("aten.mm", "aten.addmm", "aten.bmm"):
            self.matmul_dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


@pytest.fixture(params=[False, True], ids=["plain", "checkpointed"])
def traced_forward(monkeypatch, request):
    """ELECTRA-small's pretraining forward (batch 8 x 128, metrics on) under CUDA bf16
    autocast on fake CUDA tensors of an sm_90 device, with and without gradient checkpointing:
    (config, output, op log)."""
    # The attention's wrapper asks the device's compute capability (mma.sync needs sm80).
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(major=9, minor=0))  # fmt: skip
    config = ElectraConfig.preset("small", vocab_size=VOCAB, mask_token_id=103,
                                  special_token_ids=(0, 100, 101, 102))  # fmt: skip
    log = OpLog()
    with FakeTensorMode(allow_non_fake_inputs=True):
        try:  # torch 2.4 and 2.6 (not 2.11) initialise CUDA for this, failing without a GPU
            torch.empty(1, device="cuda").uniform_()
        except RuntimeError as error:
            pytest.skip(f"torch {torch.__version__} cannot fill a fake CUDA tensor here: {error}")
        with torch.device("cuda"):
            model = ElectraForPretraining(config)
            set_gradient_checkpointing(model, request.param)
            ids = torch.randint(1000, VOCAB, (8, 128))
            keys = torch.randint(0, 2**62, (2,))
        # torch.autocast("cuda") refuses without a GPU; the flags are what it would set.
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.bfloat16)
        try:
            with log:
                out = model(ids, torch.ones_like(ids), torch.zeros_like(ids), keys=keys,
                            metrics=True, check_values=False)  # fmt: skip
        finally:
            torch.set_autocast_enabled("cuda", False)
    return config, out, log


def test_every_layer_runs_our_cuda_kernels(traced_forward):
    """As many kernel calls as the architecture has places for them, and no reference op."""
    config, _, log = traced_forward
    layers = config.num_hidden_layers + config.generator_config().num_hidden_layers
    expected = {
        "electra_fast.mask_tokens": 1,
        "electra_fast.attention_qkv_forward": layers,
        "electra_fast.dropout_add_layer_norm": 2 * layers,  # after attention, after the FFN
        "electra_fast.bias_gelu": layers + 2,  # the FFNs, the generator and discriminator heads
        "electra_fast.generator_step_tile": math.ceil(VOCAB / DEFAULT_VOCAB_TILE),
    }
    ours = {name: n for name, n in log.calls.items() if name.startswith("electra_fast.")}
    assert ours == expected
    assert not [name for name in log.calls if name.startswith(_extension.REFERENCE_LIBRARY)]


def test_every_matmul_is_bf16_and_the_weights_are_cast_once(traced_forward):
    """Under CUDA autocast no matmul of the forward runs in float32 (each LayerNorm's float32
    output reaches the next one through its bfloat16 copy or a cast), and the weights reach the
    matmuls through casting_weights' one multi-tensor copy."""
    _, _, log = traced_forward
    assert log.calls["aten.mm"] + log.calls["aten.addmm"] > 0
    assert log.matmul_dtypes == {torch.bfloat16}
    assert log.calls["aten._foreach_copy_"] == 1


def test_the_outputs_keep_their_dtypes(traced_forward):
    _, out, _ = traced_forward
    assert out.loss.dtype == torch.float32 and out.loss.shape == ()
    assert out.loss.device.type == "cuda"
