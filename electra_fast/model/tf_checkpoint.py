"""google-research/electra's TensorFlow checkpoints (the released models, or a run of its
run_pretraining.py) as our Hugging Face-format discriminator and generator:
`electra-fast convert-tf CKPT --out DIR`.

The official code names the discriminator's encoder `electra/...` and the generator's
`generator/...`; the generator shares `electra/embeddings` unless it was trained with untied
embeddings. The sizes are read from the variables' shapes; the number of attention heads is
not in them, and is by default the official hidden_size // 64.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import torch

from electra_fast.model.config import ElectraConfig
from electra_fast.model.models import ElectraDiscriminator, ElectraGenerator
from electra_fast.model.tf_bundle import read_checkpoint

# TensorFlow name (below the encoder's scope) → Hugging Face name (below `electra.`).
_ENCODER = [
    (r"embeddings/(word|position|token_type)_embeddings", r"embeddings.\1_embeddings.weight"),
    (r"embeddings/LayerNorm/(gamma|beta)", r"embeddings.LayerNorm.\1"),
    (r"embeddings_project/(kernel|bias)", r"embeddings_project.\1"),
    (r"encoder/layer_(\d+)/attention/self/(query|key|value)/(kernel|bias)",
     r"encoder.layer.\1.attention.self.\2.\3"),
    (r"encoder/layer_(\d+)/attention/output/dense/(kernel|bias)",
     r"encoder.layer.\1.attention.output.dense.\2"),
    (r"encoder/layer_(\d+)/attention/output/LayerNorm/(gamma|beta)",
     r"encoder.layer.\1.attention.output.LayerNorm.\2"),
    (r"encoder/layer_(\d+)/intermediate/dense/(kernel|bias)",
     r"encoder.layer.\1.intermediate.dense.\2"),
    (r"encoder/layer_(\d+)/output/dense/(kernel|bias)", r"encoder.layer.\1.output.dense.\2"),
    (r"encoder/layer_(\d+)/output/LayerNorm/(gamma|beta)", r"encoder.layer.\1.output.LayerNorm.\2"),
]  # fmt: skip
_HEADS = {
    "discriminator": [
        (r"discriminator_predictions/dense/(kernel|bias)", r"discriminator_predictions.dense.\1"),
        (r"discriminator_predictions/dense_1/(kernel|bias)",
         r"discriminator_predictions.dense_prediction.\1"),
    ],
    "generator": [
        (r"generator_predictions/dense/(kernel|bias)", r"generator_predictions.dense.\1"),
        (r"generator_predictions/LayerNorm/(gamma|beta)", r"generator_predictions.LayerNorm.\1"),
        (r"generator_predictions/output_bias", "generator_lm_head.bias"),
    ],
}  # fmt: skip
# Optimizer slots and counters: not parameters.
_NOT_PARAMETERS = re.compile(r"(.*/adam_[mv]|global_step|.*/Adam(_\d+)?|beta[12]_power)$")


def _untied_generator(variables) -> bool:
    """Whether the generator has embeddings of its own (untied_generator_embeddings)."""
    return "generator/embeddings/word_embeddings" in variables


def _rules(variables, part: str) -> list[tuple[str, str]]:
    scope = "electra" if part == "discriminator" else "generator"
    rules = [(f"{scope}/{tf}", f"electra.{hf}") for tf, hf in _ENCODER] + _HEADS[part]
    if part == "generator" and not _untied_generator(variables):
        # Tied embeddings: the generator's are the discriminator's.
        rules += [(f"electra/{tf}", f"electra.{hf}") for tf, hf in _ENCODER
                  if tf.startswith("embeddings/")]  # fmt: skip
    return rules


def tf_to_hf(variables: dict[str, np.ndarray], part: str) -> dict[str, torch.Tensor]:
    """The `part` ("discriminator" or "generator") of a checkpoint's variables under Hugging
    Face's names: kernels transposed to weights, gamma/beta to weight/bias."""
    rules = _rules(variables, part)
    out = {}
    for name, array in variables.items():
        for pattern, target in rules:
            if re.fullmatch(pattern, name):
                hf = re.sub(pattern, target, name)
                tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
                if hf.endswith(".kernel"):
                    hf, tensor = hf[: -len("kernel")] + "weight", tensor.T.contiguous()
                out[hf.replace(".gamma", ".weight").replace(".beta", ".bias")] = tensor
                break
    return out


def infer_config(state: dict[str, torch.Tensor], num_attention_heads: int | None) -> ElectraConfig:
    """An encoder's sizes from its Hugging Face-named weights."""
    vocab, embedding = state["electra.embeddings.word_embeddings.weight"].shape
    hidden = state["electra.encoder.layer.0.attention.self.query.weight"].shape[0]
    layers = 1 + max(int(n.split(".")[3]) for n in state if n.startswith("electra.encoder.layer."))
    heads = num_attention_heads or max(1, hidden // 64)
    if hidden % heads:
        raise ValueError(f"num_attention_heads={heads} does not divide hidden_size={hidden}")
    return ElectraConfig(
        vocab_size=vocab, embedding_size=embedding, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=state["electra.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["electra.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["electra.embeddings.token_type_embeddings.weight"].shape[0],
    )  # fmt: skip


def convert_tf_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_attention_heads: int | None = None,
    generator_num_attention_heads: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    lowercase: bool = True,
) -> list[Path]:
    """Writes OUT/discriminator and, when the checkpoint has one, OUT/generator (with the
    tokenizer beside each, if given: a vocab.txt, lower-cased with accents stripped unless
    `lowercase` is false, as the official do_lower_case; or anything tokenization.load
    reads); returns the directories. A variable that is neither a parameter of these models
    nor an optimizer slot is an error that names it (a finetuned checkpoint's head, say)."""
    variables = read_checkpoint(checkpoint, skip=_NOT_PARAMETERS.match)
    if "electra/embeddings/word_embeddings" not in variables:
        raise ValueError(f"{checkpoint} holds no ELECTRA encoder (electra/embeddings/...)")
    tok = None
    if tokenizer is not None and Path(tokenizer).suffix == ".txt":
        from electra_fast.tokenization.wordpiece import WordPieceTokenizer

        # The official do_lower_case (default true), which also strips accents.
        tok = WordPieceTokenizer(tokenizer, lowercase=lowercase, strip_accents=lowercase)
    elif tokenizer is not None:
        from electra_fast import tokenization

        tok = tokenization.load(tokenizer)
    patterns = [p for part in ("discriminator", "generator") for p, _ in _rules(variables, part)]
    unknown = sorted(n for n in variables if not any(re.fullmatch(p, n) for p in patterns))
    if unknown:
        raise ValueError(f"{checkpoint} holds variables of no ELECTRA discriminator or "
                         f"generator: {unknown[:10]}")  # fmt: skip
    models = {"discriminator": (ElectraDiscriminator, num_attention_heads),
              "generator": (ElectraGenerator, generator_num_attention_heads)}  # fmt: skip
    built = {}
    for part, (cls, heads) in models.items():
        state = tf_to_hf(variables, part)
        if "electra.encoder.layer.0.attention.self.query.weight" not in state:
            continue  # no generator: a discriminator-only checkpoint
        config = infer_config(state, heads)
        if tok is not None:
            if tok.vocab_size > config.vocab_size:  # (a larger embedding table is harmless)
                raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the checkpoint's "
                                 f"embeddings only {config.vocab_size}")  # fmt: skip
            special = (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id)
            config = dataclasses.replace(config, pad_token_id=tok.pad_token_id,
                                         mask_token_id=tok.mask_token_id,
                                         special_token_ids=special)  # fmt: skip
        built[part] = (cls, config, state)
    if "generator" in built:  # the pair's proportions, as configure_pretraining.py states them
        disc, gen = built["discriminator"][1], built["generator"][1]
        built["discriminator"] = (built["discriminator"][0], dataclasses.replace(
            disc, generator_hidden_size=gen.hidden_size / disc.hidden_size,
            generator_layers=gen.num_hidden_layers / disc.num_hidden_layers,
            untied_generator_embeddings=_untied_generator(variables),
        ), built["discriminator"][2])  # fmt: skip
    written = []
    for part, (cls, config, state) in built.items():
        model = cls(config)
        model.load_hf_state_dict(state, source=f"{checkpoint} ({part})")
        directory = Path(out) / part
        model.save_pretrained(directory)
        if tok is not None:
            tok.save(directory)
        written.append(directory)
    return written
