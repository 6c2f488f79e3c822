"""Names a package exports but imports only on first use (PEP 562)."""

from __future__ import annotations

import importlib
import sys


def lazy_getattr(package: str, exports: dict[str, str]):
    """A module __getattr__ for `package` that imports exports[name] when `name` is first
    asked for, and keeps it in the package's namespace."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
