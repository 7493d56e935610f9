"""The serving contract: signature names, input and output keys, dtypes, shapes, value ranges.

Defined once here and used by all three sides:
- `export.py` builds the SavedModel's signatures from `SIGNATURES` (`tf_input_signature`);
- `servables.py` checks every request against it (`request_checks.check_inputs`) and answers
  bad ones with INVALID_ARGUMENT and a message naming the input and what was expected;
- `client.py` builds requests from it.

A reply is generated from a left-padded prompt, so every row's history ends at the last
column, where the reply starts. The settings are `GenerationConfig`'s served ones
(`tfdialogpt.generation_config.SERVED`), with its names, defaults and ranges: `do_sample`
false decodes greedily (argmax), true samples, with `seed` making the draw reproducible.

Every setting is a vector along the batch axis: `[B]`, one value per row, or `[1]`, one value
for every row of the request. Nothing is a scalar, so TF Serving's batcher (which concatenates
every input along dimension 0) can merge requests, and rows with different settings share a
run: each row is decoded as if alone (its own seed stream and `max_new_tokens`).

This module needs only numpy: a client machine imports it without TensorFlow.

Example:
    >>> GENERATE.input_names[:3], GENERATE.input_names[-1]
    (('input_ids', 'attention_mask', 'max_new_tokens'), 'no_repeat_ngram_size')
    >>> SIGNATURES["score"].output_names
    ('log_probs', 'num_tokens')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfdialogpt.generation_config import SERVED, SETTINGS, Setting
from tfdialogpt.padding import NEW_TOKEN_BUCKETS, PROMPT_BUCKETS, padded_length  # noqa: F401 (the contract's)
from tfdialogpt.serving.protos import DTYPE_ENUMS, DTYPE_NAMES

# ---- names -----------------------------------------------------------------------------------

DEFAULT_SIGNATURE = "serving_default"  # what TF Serving runs when a request names none: the chat, turns only
CHAT_SIGNATURE = "chat"  # text in, text out: the tokenizer, the decoding loop and the detokenizer
CHAT_XLA_SIGNATURE = "chat_xla"  # the same with the decoding loop compiled by XLA (needs XLA flags)
GENERATE_SIGNATURE = "generate"  # ids in, ids out: the decoding loop, plain graph
GENERATE_XLA_SIGNATURE = "generate_xla"  # the same loop with jit_compile=True (needs XLA flags)
SCORE_SIGNATURE = "score"  # log P(reply | context), for MMI reranking

PREDICT_METHOD = "tensorflow/serving/predict"
SERVING_TAG = "serve"

# TF Serving's layout: BASE/<version>/saved_model.pb, with extras beside the model.
SAVED_MODEL_FILE = "saved_model.pb"
ASSETS_EXTRA_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"  # TFRecord of PredictionLog, read at load time
METADATA_FILE = "tfdialogpt.json"  # limits of this export (below); TF Serving ignores it
METADATA_FORMAT = 1

# Export defaults.
DEFAULT_MAX_NEW_TOKENS_CAP = 64  # the decoding buffer every generate call preallocates
# The largest no_repeat_ngram_size served: the in-graph ban compares this many - 1 positions per step.
DEFAULT_MAX_NO_REPEAT_NGRAM_SIZE = 8
# Clients left-pad prompts to one of `tfdialogpt.padding`'s buckets, as `model.generate` does,
# so the XLA signature compiles once per bucket and answers equal in-process `generate`.
# Clients send `turns` with a bucketed number of slots ("" after the last turn), so chat
# requests share shapes and TF Serving's batcher can concatenate them.
TURN_SLOT_BUCKETS = (8, 16, 32, 64, 128, 256)
DEFAULT_WARMUP_PROMPT_LENGTHS = PROMPT_BUCKETS  # one warmup record per bucket that fits
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many

# TensorFlow's DataType enum values and names (`"int32"` -> 3, 3 -> `"DT_INT32"`): the table of
# `protos.py` (numpy only, like this module).
TF_NAME_OF_NUMPY = {dtype: DTYPE_NAMES[enum] for dtype, enum in DTYPE_ENUMS.items()}  # for messages
STRING = "string"  # the contract's name for DT_STRING; its arrays are numpy object arrays of bytes


class ContractError(ValueError):
    """A request does not fit a signature; the message names the input and the expectation."""


# ---- tensors and signatures ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a signature.

    Args:
        name: the key in `PredictRequest.inputs` / `PredictResponse.outputs`.
        dtype: numpy dtype name (`"int32"`, `"float32"`, `"bool"`), or `"string"` (`DT_STRING`,
            numpy object arrays of UTF-8 `bytes`).
        shape: axis names; `()` is a scalar. Every named axis has a dynamic size.
        doc: what it holds.
    """

    name: str
    dtype: str
    shape: tuple[str, ...]
    doc: str

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == STRING else np.dtype(self.dtype)

    @property
    def dtype_enum(self) -> int:
        """TensorFlow's `DataType` enum value (`DT_INT32` is 3)."""
        return DTYPE_ENUMS[self.np_dtype.name]

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype_enum]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def static_shape(self) -> tuple[None, ...]:
        """The shape as TensorFlow sees it: every axis of unknown size."""
        return (None,) * self.rank

    def describe(self) -> str:
        axes = "[" + ", ".join(self.shape) + "]" if self.shape else "scalar"
        return f"{self.dtype} {axes}"


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A settings input of the generate and chat signatures: one `GenerationConfig` setting on
    the wire, a vector `[B]` (one value per row) or `[1]` (one for all rows)."""

    spec: TensorSpec
    setting: Setting

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def default(self) -> float | int | bool:
        """What the client sends when the caller gives nothing (a signature has no None)."""
        return self.setting.wire_default

    def array(self, value: float | int | bool | None = None, rows: int = 1) -> np.ndarray:
        """The wire tensor: `value` (the default if None) for each of `rows` rows."""
        return np.full([rows], self.default if value is None else value, self.spec.np_dtype)

    def range_text(self, high: float | None = None) -> str:
        return self.setting.range_text(high)

    def check(self, value: float | int | bool, high: float | None = None) -> None:
        """Raises `ContractError` if `value` is outside the range (`high` overrides the cap)."""
        self.setting.check(value, high, error=ContractError)


@dataclasses.dataclass(frozen=True)
class Signature:
    """A named SignatureDef: its inputs (all required but `optional`) and outputs, in this order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str
    jit_compile: bool = False
    # Inputs a request may leave out: the export writes their defaults into the SignatureDef
    # (`SignatureDef.defaults`), which TF Serving and `servables.py` fill in.
    optional: tuple[str, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(f"signature {self.name!r} has no input {name!r}; it takes {', '.join(self.input_names)}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(f"signature {self.name!r} has no output {name!r}; it gives {', '.join(self.output_names)}")


# ---- the signatures --------------------------------------------------------------------------

_PROMPT = (
    TensorSpec("input_ids", "int32", ("batch", "length"), "prompt token ids, left-padded"),
    TensorSpec("attention_mask", "int32", ("batch", "length"), "1 for prompt tokens, 0 for left padding"),
)

_WIRE_DTYPES = {int: "int32", float: "float32", bool: "bool"}
# The served settings, in `GenerationConfig`'s order; `max_new_tokens`' upper end is the
# export's cap, read from its metadata (`Limits.max_new_tokens_cap`).
PARAMETERS: dict[str, Parameter] = {
    name: Parameter(TensorSpec(name, _WIRE_DTYPES[SETTINGS[name].kind], ("batch",), SETTINGS[name].doc), SETTINGS[name])
    for name in SERVED
}


def setting_inputs(values: Mapping[str, Any] | None = None, rows: int = 1) -> dict[str, np.ndarray]:
    """Every served setting as a wire tensor of `rows` values: `values[name]` where given
    (a number for all rows, or a sequence of one per row), else the default.

    Example:
        >>> setting_inputs({"top_k": 5}, rows=2)["top_k"].tolist()
        [5, 5]
    """
    values = values or {}
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise ContractError(f"{unknown[0]!r} is not a served setting; they are {', '.join(PARAMETERS)}")
    out = {}
    for name, parameter in PARAMETERS.items():
        value = values.get(name)
        if value is not None and np.ndim(value) == 1:
            out[name] = np.asarray(value, parameter.spec.np_dtype)
            if out[name].shape != (rows,):
                raise ContractError(f"{name} has {out[name].size} values for {rows} rows")
        else:
            out[name] = parameter.array(value, rows)
    return out


_GENERATE_OUTPUTS = (
    TensorSpec(
        "sequences",
        "int32",
        ("batch", "new_tokens"),
        "generated ids only (no prompt); after a row's EOS, the pad id",
    ),
    TensorSpec("lengths", "int32", ("batch",), "generated tokens per row, its EOS included"),
)

GENERATE = Signature(
    GENERATE_SIGNATURE,
    _PROMPT + tuple(p.spec for p in PARAMETERS.values()),
    _GENERATE_OUTPUTS,
    "Continues each left-padded prompt: the whole decoding loop with its KV cache, plain graph.",
)
GENERATE_XLA = dataclasses.replace(
    GENERATE,
    name=GENERATE_XLA_SIGNATURE,
    doc="The same decoding loop compiled with XLA (TF Serving needs --xla_cpu_compilation_enabled).",
    jit_compile=True,
)
SCORE = Signature(
    SCORE_SIGNATURE,
    (
        TensorSpec("input_ids", "int32", ("batch", "length"), "context then reply, right-padded"),
        TensorSpec("attention_mask", "int32", ("batch", "length"), "1 for tokens, 0 for right padding"),
        TensorSpec("target_mask", "int32", ("batch", "length"), "1 on the reply tokens to score"),
    ),
    (
        TensorSpec("log_probs", "float32", ("batch",), "sum of log P(token | before) over target tokens"),
        TensorSpec("num_tokens", "int32", ("batch",), "target tokens per row"),
    ),
    "log P(reply | context) per row, for MMI reranking.",
)

_TURNS = TensorSpec(
    "turns",
    STRING,
    ("batch", "turns"),
    'each row a dialogue history, oldest turn first, the user\'s newest last; "" for unused trailing slots',
)
_CHAT_OUTPUTS = (
    TensorSpec("reply", STRING, ("batch",), "the reply text (UTF-8, special tokens dropped, stripped)"),
) + _GENERATE_OUTPUTS

CHAT = Signature(
    CHAT_SIGNATURE,
    (_TURNS,) + tuple(p.spec for p in PARAMETERS.values()),
    _CHAT_OUTPUTS,
    "Replies to each dialogue history: tokenizes in the graph (the oldest whole turns dropped until "
    "history + reply fit the positions), decodes with the plain graph, detokenizes.",
    optional=tuple(PARAMETERS),
)
CHAT_XLA = dataclasses.replace(
    CHAT,
    name=CHAT_XLA_SIGNATURE,
    doc="The chat signature with the decoding loop compiled by XLA (TF Serving needs --xla_cpu_compilation_enabled).",
    jit_compile=True,
)

# A request that names no signature (a curl user's) chats with the export's default settings.
# Its only input is `turns`: TF Serving's REST API requires every input a signature declares
# (`{"inputs": {...}}` and each of `"instances"` must name them all; SignatureDef defaults are
# filled for gRPC only), so `{"inputs": {"turns": [["Hello"]]}}` is a whole request here alone.
CHAT_DEFAULT = Signature(
    DEFAULT_SIGNATURE,
    (_TURNS,),
    _CHAT_OUTPUTS,
    "The chat with the export's default settings (the model's generation_config): only turns in.",
)

SIGNATURES: dict[str, Signature] = {
    DEFAULT_SIGNATURE: CHAT_DEFAULT,
    CHAT_SIGNATURE: CHAT,
    CHAT_XLA_SIGNATURE: CHAT_XLA,
    GENERATE_SIGNATURE: GENERATE,
    GENERATE_XLA_SIGNATURE: GENERATE_XLA,
    SCORE_SIGNATURE: SCORE,
}


def signature(name: str) -> Signature:
    """The contract of a signature by name; `""` means `serving_default` as in TF Serving.

    Raises:
        ContractError: no such signature.
    """
    name = name or DEFAULT_SIGNATURE
    if name not in SIGNATURES:
        raise ContractError(f"unknown signature {name!r}; this model serves {', '.join(SIGNATURES)}")
    return SIGNATURES[name]


# ---- limits of one export --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one export allows, written to `assets.extra/tfdialogpt.json` by the exporter."""

    vocab_size: int
    max_positions: int
    eos_token_id: int
    pad_token_id: int
    cache_bytes_per_position: int  # a row's KV cache per position: 2 x layers x hidden x dtype bytes
    max_new_tokens_cap: int = DEFAULT_MAX_NEW_TOKENS_CAP
    warmup_prompt_lengths: tuple[int, ...] = DEFAULT_WARMUP_PROMPT_LENGTHS
    max_no_repeat_ngram_size: int = DEFAULT_MAX_NO_REPEAT_NGRAM_SIZE  # built into the decoding graph

    def highs(self) -> dict[str, int]:
        """The upper ends this export puts on settings whose range is open above."""
        return {
            "max_new_tokens": self.max_new_tokens_cap,
            "top_k": self.vocab_size,
            "no_repeat_ngram_size": self.max_no_repeat_ngram_size,
        }

    def to_json_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["warmup_prompt_lengths"] = list(self.warmup_prompt_lengths)
        return {"format": METADATA_FORMAT, "signatures": list(SIGNATURES), **data}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Limits:
        if data.get("format") != METADATA_FORMAT:
            raise ContractError(f"{METADATA_FILE} has format {data.get('format')!r}; expected {METADATA_FORMAT}")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING
        )
        if missing:
            raise ContractError(f"{METADATA_FILE} is missing {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in fields}
        if "warmup_prompt_lengths" in values:
            values["warmup_prompt_lengths"] = tuple(values["warmup_prompt_lengths"])
        return cls(**values)
