"""ELECTRA's pretraining objective (google-research/electra, run_pretraining.py), step by step on
electra_fast's ops: mask, generate at the masked positions only, sample, build the
discriminator's input, discriminate; loss = gen_weight * MLM loss + disc_weight * disc loss."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from electra_fast.model import hf
from electra_fast.model.casts import casting_weights
from electra_fast.model.config import ElectraConfig
from electra_fast.model.modeling import Embeddings, check_encoder_inputs
from electra_fast.model.models import ElectraDiscriminator, ElectraGenerator, with_overrides
from electra_fast.ops import build_discriminator_inputs, generator_step_linear, mask_tokens
from electra_fast.ops._common import draw_philox_keys
from electra_fast.ops.sampling_linear import DEFAULT_VOCAB_TILE, tile_logits, vocab_tiles


@dataclass
class PretrainingOutput:
    loss: torch.Tensor  # gen_weight * gen_loss + disc_weight * disc_loss
    gen_loss: torch.Tensor  # MLM cross-entropy averaged over the masked positions
    disc_loss: torch.Tensor  # sigmoid cross-entropy averaged over the non-padding tokens
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached, in [0, 1]


class ElectraForPretraining(nn.Module):
    """A generator and a discriminator sharing one embedding module (unless
    config.untied_generator_embeddings), trained jointly."""

    def __init__(self, config: ElectraConfig, generator_config: ElectraConfig | None = None):
        super().__init__()
        self.config = config
        generator_config = generator_config or config.generator_config()
        if generator_config.embedding_size != config.embedding_size:
            raise ValueError(
                "the generator must have the discriminator's embedding size to share its "
                f"embeddings, got {generator_config.embedding_size} and {config.embedding_size}"
            )
        shared = None if config.untied_generator_embeddings else Embeddings(config)
        self.discriminator = ElectraDiscriminator(config, shared)
        self.generator = ElectraGenerator(generator_config, shared)

    @casting_weights
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        keys: torch.Tensor | None = None,
        metrics: bool = True,
        row_offset: int = 0,
        sync_counts: bool = False,
        check_values: bool = True,
    ) -> PretrainingOutput:
        """One pretraining step's losses on a batch of [B, L] ids (no masking done yet).
        `generator` is the torch generator the masking and the sampling draw from; or `keys`,
        [2] int64 on the batch's device, gives their Philox keys (masking, sampling) instead,
        which is how a step under torch.compile gets them: it cannot trace a generator.
        `metrics` adds MLM accuracy and the discriminator's accuracy, precision and recall.
        `check_values` checks the ids' range and the right padding (on a GPU the host waits
        for the device; a loop that checked its batches on the host passes False). Nothing
        after that check reads values back: the ops get ids and labels known to be in range.

        Data parallelism: with row_offset = rank * B (the rank's first row in the global
        batch) and sync_counts=True (the masked-token and token counts all-reduced, each
        loss normalised by the global count times the world size), the gradients that
        DistributedDataParallel averages are those of one process on the whole batch."""
        c = self.config
        if not 0 <= c.mask_token_id < c.vocab_size:
            raise ValueError(
                f"config.mask_token_id must be in [0, vocab_size={c.vocab_size}), "
                f"got {c.mask_token_id}"
            )
        # Checked once here: the encoders below see these ids masked or corrupted, never out of
        # range, and the same attention mask.
        check_encoder_inputs(c, input_ids, attention_mask, token_type_ids, check_values)
        mask_key, sample_key = _philox_keys(keys, generator, input_ids.device)
        masked = mask_tokens(
            input_ids,
            attention_mask,
            mask_token_id=c.mask_token_id,
            special_token_ids=c.special_token_ids,
            vocab_size=c.vocab_size,
            mask_prob=c.mask_prob,
            generator=generator,
            seed=mask_key,
            row_offset=row_offset,
            check_values=False,  # checked above, or by the caller
        )
        weights = masked.weights.flatten()
        labels = torch.where(weights > 0, masked.labels.flatten(), -100)
        hidden = self.generator.masked_hidden(
            masked.masked_ids, attention_mask, token_type_ids, masked.positions, check_values=False
        )
        head = (hidden, self.generator.output_weight, self.generator.generator_head.bias)
        step = generator_step_linear(
            *head,
            labels,
            temperature=c.temperature,
            disallow_labels=c.disallow_correct,
            generator=generator,
            seed=sample_key,
            row_offset=row_offset * masked.positions.shape[1],
            check_values=False,  # the labels are checked ids, or -100
        )
        gen_loss = (step.loss * weights).sum() / _count(weights.sum(), sync_counts)

        disc = build_discriminator_inputs(input_ids, masked.positions, masked.weights, step.samples)
        disc_logits = self.discriminator(
            disc.input_ids, attention_mask, token_type_ids, check_values=False
        )
        tokens = torch.ones_like(disc.labels) if attention_mask is None else attention_mask.float()
        per_token = F.binary_cross_entropy_with_logits(disc_logits, disc.labels, reduction="none")
        disc_loss = (per_token * tokens).sum() / _count(tokens.sum(), sync_counts)
        loss = c.gen_weight * gen_loss + c.disc_weight * disc_loss
        out = PretrainingOutput(loss, gen_loss, disc_loss)
        if metrics:
            with torch.no_grad():
                predictions = _argmax_over_tiles(*(t.detach() for t in head))
                out.metrics = _metrics(
                    predictions, step.samples, labels, weights, disc_logits, disc.labels, tokens
                )
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """`directory/discriminator` and `directory/generator`, each a Hugging Face checkpoint."""
        directory = Path(directory)
        self.generator.save_pretrained(directory / "generator")
        self.discriminator.save_pretrained(directory / "discriminator")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides) -> ElectraForPretraining:
        """Restores both models from save_pretrained's layout, the embeddings shared again."""
        directory = Path(directory)
        config = ElectraConfig.load(directory / "discriminator")
        generator_config = ElectraConfig.load(directory / "generator")
        if overrides:
            config = with_overrides(config, overrides)
            generator_config = with_overrides(generator_config, overrides)
        model = cls(config, generator_config)
        model.generator.load_hf_state_dict(
            hf.read_weights(directory / "generator"), source=str(directory / "generator")
        )
        generator_embeddings = {
            k: v.clone() for k, v in model.generator.encoder.embeddings.state_dict().items()
        }
        model.discriminator.load_hf_state_dict(
            hf.read_weights(directory / "discriminator"), source=str(directory / "discriminator")
        )
        if not config.untied_generator_embeddings:
            shared = model.discriminator.encoder.embeddings.state_dict()
            different = [
                k for k, v in generator_embeddings.items() if not torch.equal(v, shared[k])
            ]
            if different:
                raise ValueError(
                    f"the generator's and the discriminator's embeddings at {directory} differ "
                    f"({different}); load with untied_generator_embeddings=True to keep both"
                )
        return model


def draw_keys(device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The `keys` of one ElectraForPretraining call, [2] int64 on `device`, drawn from
    `generator` (default: the device's default generator) outside the call: how a compiled
    step gets its randomness from a generator it could not trace."""
    return draw_philox_keys(device, generator, (2,))


def _philox_keys(keys, generator, device):
    """(masking key, sampling key): the two entries of `keys`, or (None, None) for draws from
    `generator`."""
    if keys is None:
        return None, None
    if generator is not None:
        raise ValueError("give keys or generator, not both")
    if not isinstance(keys, torch.Tensor) or keys.shape != (2,) or keys.dtype != torch.int64:
        raise ValueError(f"keys must be a [2] int64 tensor, got {_describe(keys)}")
    if keys.device != device:
        raise ValueError(f"keys must be on input_ids' device {device}, got {keys.device}")
    return keys[0], keys[1]


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return repr(value)


def _count(local: torch.Tensor, sync: bool) -> torch.Tensor:
    """The normaliser of a loss: the local count, or with `sync` the global count divided by
    the world size (so that averaging the ranks' gradients gives the global mean's)."""
    import torch.distributed as dist

    if sync and dist.is_initialized() and dist.get_world_size() > 1:
        total = local.detach().clone()
        dist.all_reduce(total)
        return total / dist.get_world_size() + 1e-6
    return local + 1e-6


def _argmax_over_tiles(hidden, weight, bias, tile: int = DEFAULT_VOCAB_TILE) -> torch.Tensor:
    """argmax over v of hidden @ weight.T + bias, a tile of columns at a time (no [M, V])."""
    best = torch.full(hidden.shape[:1], -torch.inf, device=hidden.device)
    index = torch.zeros(hidden.shape[:1], dtype=torch.long, device=hidden.device)
    for start, end in vocab_tiles(weight.shape[0], tile):
        value, column = tile_logits(hidden, weight, bias, start, end).float().max(dim=1)
        better = value > best
        best = torch.where(better, value, best)
        index = torch.where(better, column + start, index)
    return index


def _metrics(predictions, samples, labels, weights, disc_logits, disc_labels, tokens):
    def mean(hits, over):
        return (hits.float() * over).sum() / (over.sum() + 1e-6)

    predicted_fake = (disc_logits > 0).float()
    fake = disc_labels * tokens
    return {
        "mlm_accuracy": mean(predictions == labels, weights),
        "sampled_accuracy": mean(samples == labels, weights),
        "disc_accuracy": mean(predicted_fake == disc_labels, tokens),
        "disc_precision": (predicted_fake * fake).sum() / ((predicted_fake * tokens).sum() + 1e-6),
        "disc_recall": (predicted_fake * fake).sum() / (fake.sum() + 1e-6),
        "replaced_fraction": fake.sum() / (tokens.sum() + 1e-6),
    }
