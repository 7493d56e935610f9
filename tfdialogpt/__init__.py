"""tfdialogpt: DialoGPT in TensorFlow / Keras 3."""

from tfdialogpt.config import DialoGPTConfig
from tfdialogpt.model import DialoGPT

__all__ = ["DialoGPT", "DialoGPTConfig"]
__version__ = "0.1.0"
