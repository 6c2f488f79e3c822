"""What electra_fast was built with and what loaded: `python -m electra_fast.info [--json]`."""

from __future__ import annotations

import argparse
import importlib.util
import json

import torch

from electra_fast import _extension
from electra_fast.ops import OP_NAMES

# Tokenizer bindings arrive with their issues; each is reported by whether it imports.
TOKENIZER_BINDINGS = {"sentencepiece": "sentencepiece", "tokenizers": "tokenizers"}


def collect() -> dict:
    built = _extension.build_info()
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "extension_loaded": _extension.EXTENSION_LOADED,
        "extension_error": _extension.EXTENSION_ERROR,
        "built_with_torch": built.get("torch"),
        "cuda_built": bool(built.get("cuda_built")) and _extension.EXTENSION_LOADED,
        "cuda_archs": built.get("cuda_archs", []) if _extension.EXTENSION_LOADED else [],
        "sm90a_kernels": _extension.sm90a_kernels_built(),
        "force_reference": _extension.FORCE_REFERENCE,
        "ops": {
            name: {
                "cpu": _extension.has_kernel(name, "cpu"),
                "cuda": _extension.has_kernel(name, "cuda"),
            }
            for name in OP_NAMES
        },
        "tokenizers": {
            name: importlib.util.find_spec(module) is not None
            for name, module in TOKENIZER_BINDINGS.items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m electra_fast.info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    info = collect()
    if parser.parse_args(argv).json:
        print(json.dumps(info))
        return
    width = max(map(len, info))
    for key, value in info.items():
        if key == "ops":
            for name, kernels in value.items():
                where = ", ".join(dev for dev, ok in kernels.items() if ok) or "reference only"
                print(f"{'op ' + name:<{width}}  {where}")
        else:
            print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
