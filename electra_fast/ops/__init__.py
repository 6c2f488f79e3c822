"""electra_fast's ops: one module per op, each with its compiled kernels and torch reference."""

from electra_fast._extension import OP_NAMES
from electra_fast.ops.masking import MaskedTokens, mask_tokens, mask_tokens_reference

__all__ = ["OP_NAMES", "MaskedTokens", "mask_tokens", "mask_tokens_reference"]
