"""ELECTRA's encoder and heads (google-research/electra, model/modeling.py), on electra_fast's ops.

A BERT-style post-LayerNorm encoder whose attention is electra_fast.attention (through
attention_qkvpacked). With padding, the encoder either keeps the padded layout (keys past each
length are ignored) or, with `config.unpad`, packs the real tokens and runs every layer on them
alone (cu_seqlens). With gradient checkpointing (set_gradient_checkpointing), training keeps
each layer's input alone and runs the layer's forward again in the backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from electra_fast.model.casts import casting_weights, linear, with_current_casts
from electra_fast.model.config import ElectraConfig
from electra_fast.ops import attention_qkvpacked, bias_gelu, dropout_add_layer_norm
from electra_fast.ops._common import draw_philox_keys, may_synchronise

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
# The activations bias_gelu computes (its `approximate`), which adds the bias of the linear
# layer before it (linear_activation).
_BIAS_GELU = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def linear_activation(module: nn.Linear, x: torch.Tensor, hidden_act: str) -> torch.Tensor:
    """activation(module(x)); a GELU through bias_gelu, which adds the linear layer's bias and
    returns its gradient from its own backward (no reduction of the bias gradient apart)."""
    approximate = _BIAS_GELU.get(hidden_act)
    if approximate is None:
        return _ACTIVATIONS[hidden_act](linear(x, module))
    return bias_gelu(linear(x, module, bias=False), module.bias, approximate=approximate)


class Embeddings(nn.Module):
    """Word + position + token type embeddings, LayerNorm, dropout (shared by the generator and
    the discriminator during pretraining)."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        E = config.embedding_size
        self.word = nn.Embedding(config.vocab_size, E)
        self.position = nn.Embedding(config.max_position_embeddings, E)
        self.token_type = nn.Embedding(config.type_vocab_size, E)
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class Layer(nn.Module):
    """Self-attention and feed-forward blocks, each followed by residual + LayerNorm. Query, key
    and value come from one matmul, whose output the attention takes whole (its gradient comes
    back as one tensor, not three to stack); each block's dropout, residual sum and LayerNorm are
    one op (dropout_add_layer_norm), which also adds the bias of the block's output projection; a
    GELU feed-forward block adds its first bias in its activation (bias_gelu). Those biases'
    gradients then come from the ops' backwards, not from reductions of their own. Under CUDA
    autocast each LayerNorm's output is float32 (the residual) and also, from the same op, in the
    matmuls' bfloat16 (`with_out_x`): no cast kernel before the next matmul, and no add of the
    two gradients after it."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        H = config.hidden_size
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.qkv = nn.Linear(H, 3 * H)
        self.attention_out = nn.Linear(H, H)
        self.attention_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(H, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, H)
        self.ffn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.hidden_act = config.hidden_act
        self.hidden_dropout = config.hidden_dropout_prob
        self.attention_dropout = config.attention_probs_dropout_prob

    def forward(
        self,
        x: torch.Tensor,
        tokens: tuple[int, ...],
        layout: dict,
        seeds: Sequence[torch.Tensor | None] = (None,) * 3,
        x_in: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: the tokens' rows [N, H], of a padded batch (tokens: (B, L); layout: lengths) or
        packed sequences (tokens: (T,); layout: cu_seqlens, max_seqlen). Rows, not [B, L, H]:
        a matmul of 3-D activations is a view before it and one after it, in the forward and
        again in the backward, four linear layers a layer. seeds: the Philox keys of the
        attention dropout and of the two blocks' dropouts (None: each a draw of its own). x_in:
        x as the first matmul takes it (the previous layer's out_x), or None: x. Returns the
        layer's output and the same as the next layer's first matmul takes it (the output
        itself but under CUDA autocast)."""
        h = x if x_in is None else x_in
        qkv = linear(h, self.qkv).view(*tokens, 3, self.heads, self.head_dim)
        attention_p = self.attention_dropout if self.training else 0.0
        hidden_p = self.hidden_dropout if self.training else 0.0
        # The encoder checked the layout once for all layers.
        context = attention_qkvpacked(
            qkv, dropout_p=attention_p, seed=seeds[0], check_values=False, **layout
        )
        context = context.reshape(x.shape[0], -1)  # the rows of x
        x, x_in = self._add_norm(context, self.attention_out, x, self.attention_norm, hidden_p,
                                 seeds[1])  # fmt: skip
        hidden = linear_activation(self.ffn_in, x_in, self.hidden_act)
        return self._add_norm(hidden, self.ffn_out, x, self.ffn_norm, hidden_p, seeds[2])

    @staticmethod
    def _add_norm(h, module: nn.Linear, x, norm: nn.LayerNorm, dropout_p, seed):
        """norm(x + dropout(module(h))), and the same in module's output dtype."""
        return dropout_add_layer_norm(
            linear(h, module, bias=False), x, norm.weight, norm.bias, x_bias=module.bias,
            dropout_p=dropout_p, eps=norm.eps, seed=seed, with_out_x=True,
        )  # fmt: skip


class Encoder(nn.Module):
    """Embeddings (optionally someone else's, to share them), a projection to the hidden size
    when the embedding size differs, and the layers."""

    def __init__(self, config: ElectraConfig, embeddings: Embeddings | None = None):
        super().__init__()
        self.config = config
        self.embeddings = embeddings if embeddings is not None else Embeddings(config)
        E, H = config.embedding_size, config.hidden_size
        self.embeddings_project = nn.Linear(E, H) if E != H else None
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False  # set_gradient_checkpointing

    @casting_weights
    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, check_values=True
    ) -> torch.Tensor:
        """[B, L] ids → [B, L, H] hidden states (padded positions hold values of no meaning).
        check_values=False skips the checks that read values back from the device (id range,
        right padding), for callers that made them already."""
        attention_mask, token_type_ids = check_encoder_inputs(
            self.config, input_ids, attention_mask, token_type_ids, check_values
        )
        x = self.embeddings(input_ids, token_type_ids)
        B, L = input_ids.shape
        # As the attention kernels take them.
        lengths = None if attention_mask is None else attention_mask.sum(1, dtype=torch.int32)
        if lengths is None or not self.config.unpad:
            layout = {} if lengths is None else {"lengths": lengths}
            return self._layers(x.reshape(B * L, -1), (B, L), layout).view(B, L, -1)
        keep = attention_mask.bool()
        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).int()
        rows = x[keep]
        layout = {"cu_seqlens": cu_seqlens, "max_seqlen": L}
        packed = self._layers(rows, rows.shape[:1], layout)
        return packed.new_zeros(B, L, packed.shape[-1]).index_put((keep,), packed)

    def _layers(self, x, tokens, layout):
        """The embedding projection and the layers over the tokens' rows x [N, E]; `tokens`
        the shape of the N tokens, (B, L) or (T,)."""
        if self.embeddings_project is not None:
            x = linear(x, self.embeddings_project)
        # The layers' dropout keys (attention, then each block's output) in one draw, not one
        # per op: on a GPU each draw is a kernel launch, and the host issuing launches is what
        # limits a small model's step.
        seeds = [(None,) * 3] * len(self.layers)
        c = self.config
        dropout = c.attention_probs_dropout_prob > 0 or c.hidden_dropout_prob > 0
        if self.training and dropout and seeds:
            seeds = [row.unbind() for row in draw_philox_keys(x.device, None, (len(seeds), 3))]
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        x_in = None
        for layer, layer_seeds in zip(self.layers, seeds, strict=True):
            if recompute:
                # A layer's randomness is its seeds, inputs like x: the second forward draws
                # nothing and repeats the first exactly, so no generator state is kept (saving
                # it would read the CUDA generator, which a CUDA graph cannot record).
                # The second forward also gets the first's weight casts.
                x, x_in = checkpoint(with_current_casts(layer), x, tokens, layout, layer_seeds,
                                     x_in, use_reentrant=False,
                                     preserve_rng_state=False)  # fmt: skip
            else:
                x, x_in = layer(x, tokens, layout, layer_seeds, x_in)
        return x


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Gradient (activation) checkpointing in every encoder of `model`: in training, each layer
    keeps only its input for the backward, where its forward runs again. Activations then take
    the memory of one layer's instead of all layers', for one more forward of the encoder
    (about a third more compute). The gradients are the ones without it."""
    for module in model.modules():
        if isinstance(module, Encoder):
            module.gradient_checkpointing = enabled


def check_encoder_inputs(config, input_ids, attention_mask, token_type_ids, check_values=True):
    """Validates a batch; returns (attention_mask or None, token_type_ids). The id range and
    the right padding are checked when check_values (each costs a device synchronisation)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be a [B, L] tensor, got {getattr(input_ids, 'shape', input_ids)}"
        )
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"input_ids must be int32 or int64, got {input_ids.dtype}")
    B, L = input_ids.shape
    if L > config.max_position_embeddings:
        raise ValueError(
            f"input_ids has sequences of {L} tokens, more than "
            f"max_position_embeddings={config.max_position_embeddings}"
        )
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if t is not None and (t.shape != input_ids.shape or t.device != input_ids.device):
            raise ValueError(
                f"{name} must have input_ids' shape {tuple(input_ids.shape)} and device, "
                f"got {tuple(t.shape)} on {t.device}"
            )
    check_values = check_values and may_synchronise(input_ids)
    if check_values:
        low, high = (int(v) for v in torch.aminmax(input_ids))
        if low < 0 or high >= config.vocab_size:
            raise ValueError(
                f"input_ids must be in [0, vocab_size={config.vocab_size}), got {low}..{high}"
            )
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    if attention_mask is not None:
        attention_mask = attention_mask.long()
        lengths = attention_mask.sum(1, keepdim=True)
        if check_values:
            right_padded = attention_mask == (torch.arange(L, device=input_ids.device) < lengths)
            if not bool(right_padded.all()):
                raise ValueError("attention_mask must be 1s then 0s in each row (right padding)")
    return attention_mask, token_type_ids


class DiscriminatorHead(nn.Module):
    """dense → activation → dense to one logit per token."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.prediction = nn.Linear(config.hidden_size, 1)
        self.hidden_act = config.hidden_act

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(
            linear_activation(self.dense, hidden, self.hidden_act), self.prediction
        ).squeeze(-1)


class GeneratorHead(nn.Module):
    """dense to the embedding size → GELU → LayerNorm; the output layer is the word embedding
    matrix (tied: passed in, not owned) plus `bias`. GELU whatever hidden_act is, as in Hugging
    Face's model."""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.norm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the output layer: [..., E]."""
        return self.norm(linear_activation(self.dense, x, "gelu"))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.hidden(x), word_embeddings, self.bias)


def init_weights(module: nn.Module, initializer_range: float) -> None:
    """BERT's initialisation: normal(0, 0.02) weights and embeddings, zero biases, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=initializer_range)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, GeneratorHead):
            nn.init.zeros_(m.bias)
