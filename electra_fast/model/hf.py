"""Hugging Face checkpoints: parameter names in each direction, and reading and writing
`model.safetensors` (or reading `pytorch_model.bin`), so that transformers' ElectraForPreTraining
and ElectraForMaskedLM load what we save and we load what they save."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from electra_fast._files import atomic_path

# (our prefix, Hugging Face's prefix) for everything but the fused query/key/value; {i} is a
# layer number.
RENAMES = [
    ("encoder.embeddings.word.", "electra.embeddings.word_embeddings."),
    ("encoder.embeddings.position.", "electra.embeddings.position_embeddings."),
    ("encoder.embeddings.token_type.", "electra.embeddings.token_type_embeddings."),
    ("encoder.embeddings.norm.", "electra.embeddings.LayerNorm."),
    ("encoder.embeddings_project.", "electra.embeddings_project."),
    ("encoder.layers.{i}.attention_out.", "electra.encoder.layer.{i}.attention.output.dense."),
    ("encoder.layers.{i}.attention_norm.", "electra.encoder.layer.{i}.attention.output.LayerNorm."),
    ("encoder.layers.{i}.ffn_in.", "electra.encoder.layer.{i}.intermediate.dense."),
    ("encoder.layers.{i}.ffn_out.", "electra.encoder.layer.{i}.output.dense."),
    ("encoder.layers.{i}.ffn_norm.", "electra.encoder.layer.{i}.output.LayerNorm."),
    ("discriminator_head.dense.", "discriminator_predictions.dense."),
    ("discriminator_head.prediction.", "discriminator_predictions.dense_prediction."),
    ("generator_head.dense.", "generator_predictions.dense."),
    ("generator_head.norm.", "generator_predictions.LayerNorm."),
    ("generator_head.bias", "generator_lm_head.bias"),
    # Finetuning heads keep Hugging Face's names.
    ("classifier.", "classifier."),
    ("qa_outputs.", "qa_outputs."),
    ("answerable_head.", "answerable_head."),
    ("qa_head.", "qa_head."),  # the official joint head: no Hugging Face counterpart
]
_QKV = re.compile(r"encoder\.layers\.(\d+)\.qkv\.(weight|bias)$")
_HF_QKV = re.compile(
    r"electra\.encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$"
)
# Keys a Hugging Face checkpoint may hold that carry no parameter of ours: buffers, and the
# output layer tied to the word embeddings.
_IGNORED = re.compile(r"(.*position_ids|.*token_type_ids|generator_lm_head\.weight)$")


def _compile(pairs):
    return [
        (re.compile(re.escape(source).replace(re.escape("{i}"), r"(\d+)")), target)
        for source, target in pairs
    ]


_TO_HF = _compile(RENAMES)
_FROM_HF = _compile([(hf, ours) for ours, hf in RENAMES])


def _rename(name: str, rules) -> str | None:
    for pattern, target in rules:
        found = pattern.match(name)
        if found:
            layer = found.group(1) if pattern.groups else ""
            return target.replace("{i}", layer) + name[found.end() :]
    return None


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict → Hugging Face names (query, key and value split again)."""
    out = {}
    for name, tensor in state.items():
        fused = _QKV.match(name)
        if fused:
            layer, kind = fused.groups()
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3), strict=True):
                out[f"electra.encoder.layer.{layer}.attention.self.{part}.{kind}"] = chunk
            continue
        renamed = _rename(name, _TO_HF)
        if renamed is None:
            raise KeyError(f"no Hugging Face name for parameter {name!r}")
        out[renamed] = tensor
    return out


def from_hf(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Hugging Face state dict → ours; returns it and the keys that map to nothing of ours.
    Keys of a bare ElectraModel (no `electra.` prefix) are accepted too."""
    out, parts, unused = {}, {}, []
    for name, tensor in state.items():
        heads = ("discriminator_", "generator_", "classifier.", "qa_outputs.", "answerable_head.",
                 "qa_head.")  # fmt: skip
        if not name.startswith(("electra.",) + heads):
            name = "electra." + name
        if _IGNORED.match(name):
            continue
        split = _HF_QKV.match(name)
        if split:
            layer, part, kind = split.groups()
            parts.setdefault((layer, kind), {})[part] = tensor
            continue
        renamed = _rename(name, _FROM_HF)
        if renamed is None:
            unused.append(name)
        else:
            out[renamed] = tensor
    for (layer, kind), pieces in parts.items():
        if set(pieces) == {"query", "key", "value"}:
            out[f"encoder.layers.{layer}.qkv.{kind}"] = torch.cat(
                [pieces["query"], pieces["key"], pieces["value"]]
            )
        else:  # an incomplete triple is reported, not silently dropped
            unused += [f"electra.encoder.layer.{layer}.attention.self.{p}.{kind}" for p in pieces]
    return out, unused


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no {' or '.join(WEIGHT_FILES)} in {directory}")


def write_weights(directory: Path, state: dict[str, torch.Tensor]) -> None:
    """model.safetensors through a temporary file and a rename: an interrupted save leaves the
    previous checkpoint whole."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous().cpu().clone() for name, t in state.items()}
    with atomic_path(directory / "model.safetensors") as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
