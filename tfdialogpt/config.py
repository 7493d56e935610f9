"""Model hyperparameters: one frozen dataclass, DialoGPT presets, HF `config.json` in and out."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

# `from_pretrained("default")`: the small model embedded in the package (HF layout).
DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default"

# Fields of HF's GPT2Config that change the math; we refuse values we do not implement
# rather than silently computing something else.
_UNSUPPORTED_HF_FLAGS = {
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "scale_attn_weights": True,
}
_SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


class ConfigError(ValueError):
    """A config that is malformed or asks for something this implementation does not do."""


@dataclasses.dataclass(frozen=True)
class DialoGPTConfig:
    """GPT-2 / DialoGPT architecture hyperparameters.

    Field names are spelled out; `from_hf_dict` / `to_hf_dict` translate to HF's
    `GPT2Config` keys (`n_embd`, `n_layer`, ...), so a `config.json` from the hub loads as is.

    Example:
        >>> cfg = DialoGPTConfig.preset("small")
        >>> cfg.hidden_size, cfg.num_layers
        (768, 12)
    """

    vocab_size: int = 50257  # tokens in the BPE vocabulary (GPT-2: 50,256 merges + <|endoftext|>)
    max_positions: int = 1024  # learned absolute positions (HF `n_positions`)
    hidden_size: int = 768  # model width (HF `n_embd`)
    num_layers: int = 12  # transformer blocks (HF `n_layer`)
    num_heads: int = 12  # attention heads per block (HF `n_head`)
    intermediate_size: int | None = None  # MLP width; None means 4 * hidden_size (HF `n_inner`)
    layer_norm_epsilon: float = 1e-5  # LayerNorm epsilon
    embedding_dropout: float = 0.1  # dropout after token + position embeddings (HF `embd_pdrop`)
    attention_dropout: float = 0.1  # dropout on attention probabilities (HF `attn_pdrop`)
    residual_dropout: float = 0.1  # dropout on sublayer outputs (HF `resid_pdrop`)
    initializer_range: float = 0.02  # stddev of the normal init for fresh weights
    bos_token_id: int = 50256  # <|endoftext|> starts a text
    eos_token_id: int = 50256  # <|endoftext|> ends a turn: DialoGPT's turn separator
    pad_token_id: int | None = None  # DialoGPT has no pad token; padding uses the mask

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_positions", "hidden_size", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"`{name}` must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.intermediate_size is not None and self.intermediate_size <= 0:
            raise ConfigError(f"`intermediate_size` must be positive, got {self.intermediate_size}")
        for name in ("embedding_dropout", "attention_dropout", "residual_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"`{name}` must be in [0, 1), got {getattr(self, name)}")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def num_parameters(self) -> int:
        """Trainable parameters (the LM head is tied to `wte` and not counted twice)."""
        c, f = self.hidden_size, self.mlp_size
        per_block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * f + f) + (f * c + c)
        return self.vocab_size * c + self.max_positions * c + self.num_layers * per_block + 2 * c

    # ---- presets ---------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DialoGPTConfig:
        """The published DialoGPT shapes: `small` (117M), `medium` (345M), `large` (762M)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes: Any) -> DialoGPTConfig:
        return dataclasses.replace(self, **changes)

    # ---- HF config.json --------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> DialoGPTConfig:
        """Builds a config from HF `GPT2Config` keys (as in the hub's `config.json`)."""
        model_type = data.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ConfigError(f"config.json has model_type {model_type!r}; expected 'gpt2'")
        for key, expected in _UNSUPPORTED_HF_FLAGS.items():
            if data.get(key, expected) != expected:
                raise ConfigError(f"config.json sets {key}={data[key]!r}; only {expected!r} is supported")
        activation = data.get("activation_function", "gelu_new")
        if activation not in _SUPPORTED_ACTIVATIONS:
            raise ConfigError(
                f"config.json sets activation_function={activation!r}; expected one of "
                f"{_SUPPORTED_ACTIVATIONS} (GPT-2's tanh GELU)"
            )
        try:
            return cls(
                vocab_size=data["vocab_size"],
                max_positions=data.get("n_positions", data.get("n_ctx", 1024)),
                hidden_size=data["n_embd"],
                num_layers=data["n_layer"],
                num_heads=data["n_head"],
                intermediate_size=data.get("n_inner"),
                layer_norm_epsilon=data.get("layer_norm_epsilon", 1e-5),
                embedding_dropout=data.get("embd_pdrop", 0.1),
                attention_dropout=data.get("attn_pdrop", 0.1),
                residual_dropout=data.get("resid_pdrop", 0.1),
                initializer_range=data.get("initializer_range", 0.02),
                bos_token_id=data.get("bos_token_id", 50256),
                eos_token_id=data.get("eos_token_id", 50256),
                pad_token_id=data.get("pad_token_id"),
            )
        except KeyError as err:
            raise ConfigError(f"config.json is missing the key {err.args[0]!r}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """HF `GPT2Config` keys, loadable by `transformers.GPT2Config.from_dict`."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.max_positions,
            "n_ctx": self.max_positions,
            "n_embd": self.hidden_size,
            "n_layer": self.num_layers,
            "n_head": self.num_heads,
            "n_inner": self.intermediate_size,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "embd_pdrop": self.embedding_dropout,
            "attn_pdrop": self.attention_dropout,
            "resid_pdrop": self.residual_dropout,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "use_cache": True,
        }

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> DialoGPTConfig:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        return cls.from_hf_dict(data)

    def save(self, directory: str | os.PathLike) -> str:
        """Writes `config.json` into `directory` and returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "config.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_hf_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path


PRESETS: dict[str, DialoGPTConfig] = {
    "small": DialoGPTConfig(hidden_size=768, num_layers=12, num_heads=12),
    "medium": DialoGPTConfig(hidden_size=1024, num_layers=24, num_heads=16),
    "large": DialoGPTConfig(hidden_size=1280, num_layers=36, num_heads=20),
}
