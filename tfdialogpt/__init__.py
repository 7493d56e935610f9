"""tfdialogpt: DialoGPT in TensorFlow / Keras 3.

    >>> from tfdialogpt import DialoGPT, Tokenizer
    >>> model = DialoGPT.from_pretrained("microsoft/DialoGPT-small")  # doctest: +SKIP

Public names are imported lazily, so `import tfdialogpt` (and the CLI's `--help`) does not
load TensorFlow until a model is needed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Chat": "tfdialogpt.chat",
    "DialoGPT": "tfdialogpt.model",
    "DialoGPTConfig": "tfdialogpt.config",
    "GenerationConfig": "tfdialogpt.generation_config",
    "Tokenizer": "tfdialogpt.tokenizer",
    "CheckpointError": "tfdialogpt.checkpoint",
    "ConfigError": "tfdialogpt.config",
    "TokenizerError": "tfdialogpt.tokenizer",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'tfdialogpt' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
