"""Lazy public names for a package's `__init__`: `import tfdialogpt` (and the CLI's `--help`)
loads TensorFlow only when a name that needs it is first used (PEP 562)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_names(package: str, namespace: dict, public: Mapping[str, str]) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for `package`, resolving each name of `public` (name -> module
    holding it) on first use and caching it in the package's `namespace`."""

    def __getattr__(name: str):
        if name in public:
            value = getattr(importlib.import_module(public[name]), name)
            namespace[name] = value  # later look-ups skip this hook
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
