"""`GenerationConfig`: every decoding setting's name, default and allowed range, written once.

The names and meanings are HF transformers' (`GenerationConfig`, `generation_config.json`),
so a hub checkpoint's file reads as is. Everything else derives from the table here:
`DialoGPT.generate` and the compiled engine, the SavedModel signatures' inputs and in-graph
checks (`tfdialogpt.serving.contract`), the server's request checks, the client's
parameters and the CLI's flags. This module imports no TensorFlow.

Deliberate differences from HF's defaults: `max_new_tokens` is 40 (HF: `max_length=20`
counting the prompt), and `top_k` is 0, i.e. off (HF: 50), so sampling draws from the whole
distribution unless asked otherwise. `seed` is ours: HF seeds globally.

    >>> config = GenerationConfig(do_sample=True, top_p=0.9)
    >>> config.replace(top_p=0.8).top_p
    0.8
    >>> GenerationConfig(top_p=1.5).validate()
    Traceback (most recent call last):
        ...
    ValueError: top_p=1.5 is out of range; expected a value in (0, 1] (nucleus sampling mass; 1 keeps all)
    >>> GenerationConfig.from_json_dict({"do_sample": True, "max_length": 20}).do_sample
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILE_NAME = "generation_config.json"  # HF's name, beside config.json
SEED_LIMIT = 2**31  # seeds are int32 in the compiled graphs

# HF keys with no effect here: read without complaint, never written.
_IGNORED_HF_KEYS = frozenset(
    {
        "_from_model_config",
        "transformers_version",
        "bos_token_id",
        "max_length",
        "min_length",
        "decoder_start_token_id",
        "use_cache",
        "return_dict_in_generate",
        "output_scores",
        "output_attentions",
        "output_hidden_states",
        "num_return_sequences",
    }
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One decoding setting: type, range (inclusive unless open), and where it applies.

    `static`: the setting shapes the compiled graph (one graph per value); the others are
    run-time inputs of the compiled function, so one graph serves every value. `served`: an
    input of the exported generate signatures (a static one is served up to a bound that the
    export builds into its graph: `tfdialogpt.serving.signatures.Limits`).
    """

    name: str
    kind: type  # int, float or bool
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    served: bool = False
    static: bool = False  # shapes the compiled graph (one graph per value), not a run-time input
    optional: bool = False  # None allowed (it then means "the model's" or "a random one")

    @property
    def wire_default(self) -> Any:
        """The value a request carries when the caller gives none (a signature input has no
        None): the default, or the low end of the range for optional settings."""
        return self.default if self.default is not None else self.kind(self.low or 0)

    def range_text(self, high: float | None = None) -> str:
        high = self.high if high is None else high
        low_text = "-inf" if self.low is None else _number(self.low)
        high_text = "inf" if high is None else _number(high)
        return f"{'(' if self.low_open else '['}{low_text}, {high_text}{')' if self.high_open else ']'}"

    def check(self, value: Any, high: float | None = None, error: type[Exception] = ValueError) -> Any:
        """Returns `value` as `kind` if it fits; raises `error` naming the setting if not.

        `high` overrides the upper end (e.g. an export's cap on new tokens).
        """
        if value is None:
            if self.optional:
                return None
            raise error(f"{self.name} must be given (it has no 'unset' value)")
        if self.kind is bool:
            if not isinstance(value, bool) and not _is_np_bool(value):
                raise error(f"{self.name} must be True or False, got {value!r}")
            return bool(value)
        if isinstance(value, bool) or _is_np_bool(value) or not _is_number(value):
            raise error(f"{self.name} must be {'an integer' if self.kind is int else 'a number'}, got {value!r}")
        if self.kind is int and float(value) != int(value):
            raise error(f"{self.name} must be an integer, got {value!r}")
        high = self.high if high is None else high
        bad = not math.isfinite(float(value))
        if self.low is not None:
            bad |= value <= self.low if self.low_open else value < self.low
        if high is not None:
            bad |= value >= high if self.high_open else value > high
        if bad:
            raise error(
                f"{self.name}={_number(value)} is out of range; expected a value in "
                f"{self.range_text(high)} ({self.doc})"
            )
        return self.kind(value)


def _is_np_bool(value: Any) -> bool:
    return type(value).__name__ == "bool_"  # numpy's, without importing numpy


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes))


def _number(value: float | int) -> str:
    value = float(value)
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def _field(default: Any, doc: str, kind: type, **range_and_flags):
    return dataclasses.field(default=default, metadata={"setting": (kind, doc, range_and_flags)})


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How to decode: greedy, sampling or beam search, and HF's logits processors.

    Frozen: derive variants with `replace(**changes)`. Build-time checks are in `validate()`.
    """

    # Field order is the compiled function's input order (run-time settings first).
    max_new_tokens: int = _field(40, "tokens to generate at most", int, low=1, served=True)
    temperature: float = _field(1.0, "softmax temperature for sampling", float, low=0.0, low_open=True, served=True)
    top_k: int = _field(0, "keep the k most likely tokens; 0 keeps all", int, low=0, served=True)
    top_p: float = _field(
        1.0, "nucleus sampling mass; 1 keeps all", float, low=0.0, high=1.0, low_open=True, served=True
    )
    repetition_penalty: float = _field(
        1.0, "HF's repetition penalty; 1 is off", float, low=0.0, low_open=True, served=True
    )
    seed: int | None = _field(
        None,
        "seed of the stateless sampler; None draws one",
        int,
        low=0,
        high=SEED_LIMIT - 1,
        served=True,
        optional=True,
    )
    min_new_tokens: int = _field(0, "EOS is suppressed before this many new tokens", int, low=0)
    do_sample: bool = _field(False, "sample instead of decoding greedily", bool, served=True)
    length_penalty: float = _field(1.0, "beam search: score / length ** length_penalty", float)
    num_beams: int = _field(1, "beam search width; 1 is no beam search", int, low=1, static=True)
    no_repeat_ngram_size: int = _field(
        0, "forbid repeating n-grams of this size; 0 is off", int, low=0, served=True, static=True
    )
    eos_token_id: int | None = _field(None, "ends a row; None is the model's", int, low=0, optional=True, static=True)
    pad_token_id: int | None = _field(
        None,
        "fills a row after its EOS; None is the model's, else EOS",
        int,
        low=0,
        optional=True,
        static=True,
    )

    def replace(self, **changes) -> GenerationConfig:
        """A copy with `changes`; unknown names raise `TypeError` naming them."""
        unknown = sorted(set(changes) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown generation setting {unknown[0]!r}; the settings are {', '.join(SETTINGS)}")
        return dataclasses.replace(self, **changes)

    def validate(self, vocab_size: int | None = None, max_positions: int | None = None) -> GenerationConfig:
        """Checks every setting; returns the config with values of the right Python types.

        Raises:
            ValueError: the first bad setting, by name.
        """
        values = {name: setting.check(getattr(self, name)) for name, setting in SETTINGS.items()}
        if values["min_new_tokens"] > values["max_new_tokens"]:
            raise ValueError(
                f"min_new_tokens ({values['min_new_tokens']}) exceeds max_new_tokens ({values['max_new_tokens']})"
            )
        if values["num_beams"] > 1 and values["do_sample"]:
            raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported")
        for name in ("eos_token_id", "pad_token_id"):
            if vocab_size is not None and values[name] is not None and values[name] >= vocab_size:
                raise ValueError(f"{name} {values[name]} is outside the vocabulary [0, {vocab_size})")
        if max_positions is not None and values["max_new_tokens"] >= max_positions:
            raise ValueError(
                f"max_new_tokens ({values['max_new_tokens']}) leaves no room for a prompt in the model's "
                f"{max_positions} positions"
            )
        return dataclasses.replace(self, **values)

    # ---- HF's generation_config.json ----
    def to_json_dict(self) -> dict[str, Any]:
        """The settings that are set (None ones left out), with HF's keys."""
        return {name: getattr(self, name) for name in SETTINGS if getattr(self, name) is not None}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> GenerationConfig:
        """Reads HF's keys; keys HF writes that do not change decoding here are skipped.

        Raises:
            ValueError: a key this project does not implement (e.g. `typical_p`), or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a generation config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SETTINGS) - _IGNORED_HF_KEYS)
        if unknown:
            raise ValueError(f"unsupported generation setting {unknown[0]!r}; supported: {', '.join(SETTINGS)}")
        values = {name: data[name] for name in SETTINGS if name in data}
        if isinstance(values.get("eos_token_id"), list):  # HF allows several; we end on one
            eos = values["eos_token_id"]
            if len(eos) != 1:
                raise ValueError(f"eos_token_id {eos}: only one EOS id is supported")
            values["eos_token_id"] = eos[0]
        return cls(**values).validate()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes `generation_config.json` into `directory`; returns its path."""
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GenerationConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the generation config {path}: {err}") from None
        try:
            return cls.from_json_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None


def _settings() -> dict[str, Setting]:
    table = {}
    for f in dataclasses.fields(GenerationConfig):
        kind, doc, extra = f.metadata["setting"]
        table[f.name] = Setting(f.name, kind, f.default, doc, **extra)
    return table


SETTINGS: dict[str, Setting] = _settings()
SERVED: tuple[str, ...] = tuple(name for name, s in SETTINGS.items() if s.served)
RUNTIME: tuple[str, ...] = tuple(name for name, s in SETTINGS.items() if not s.static)
