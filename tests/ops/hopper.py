"""What the tests of the sm_90a (wgmma) kernels need: an H100/H200 and a build with that code."""

import pytest
import torch

from electra_fast import _extension

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
MARKS = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HOPPER, reason="needs an H100/H200 (compute capability 9.0)"),
    pytest.mark.skipif(
        not _extension.sm90a_kernels_built(), reason="this build has no sm_90a kernels"
    ),
]
