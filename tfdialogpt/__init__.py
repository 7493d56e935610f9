"""tfdialogpt: DialoGPT in TensorFlow / Keras 3.

    >>> from tfdialogpt import DialoGPT, Tokenizer
    >>> model = DialoGPT.from_pretrained("microsoft/DialoGPT-small")  # doctest: +SKIP

Public names are imported lazily, so `import tfdialogpt` (and the CLI's `--help`) does not
load TensorFlow until a model is needed.
"""

from __future__ import annotations

from tfdialogpt._lazy import lazy_names

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


__getattr__, __dir__ = lazy_names(__name__, globals(), _PUBLIC)
