"""Training examples as serialized `tf.train.Example` protos, built without TensorFlow.

The processes that tokenize a corpus in parallel (`prepare`) do not load TensorFlow, whose
`tf.train.Example` class is the only generated copy of the proto at hand. These few lines
write its wire format directly, for the one layout we need:

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }        # entries: key = 1, value = 2
    Feature  { FloatList float_list = 2; Int64List int64_list = 3; }
    FloatList / Int64List { repeated float / int64 value = 1 [packed = true]; }

with two features: `tokens` (int64 list: the dialogue's tokens; inputs are tokens[:-1],
labels tokens[1:]) and `weights` (float list: one loss weight per label). Any protobuf
parser reads them back (`tf.train.Example.FromString`, `tf.io.parse_single_example`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TOKENS = "tokens"
WEIGHTS = "weights"
# The largest id a 5-byte varint holds; token ids are far below.
_MAX_ID = 2**35 - 1


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    if n < len(_SMALL_VARINTS):
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = ()
_SMALL_VARINTS = tuple(_varint(n) for n in range(1 << 14))  # every length up to 16 KiB: one look-up


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): tag, length, payload."""
    return tag + _varint(len(payload)) + payload


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varints of many non-negative ints at once: (all bytes concatenated, bytes per value)."""
    if not len(values):
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    width = max(1, (int(values.max()).bit_length() + 6) // 7)  # bytes of the largest value
    v = values.astype(np.int64 if width > 4 else np.int32)
    shifts = np.arange(0, 7 * width, 7, dtype=v.dtype)
    groups = ((v[:, None] >> shifts) & 0x7F).astype(np.uint8)  # [N, width], low 7 bits first
    sizes = np.ones(len(v), np.int64)
    for shift in shifts[1:].tolist():
        sizes += v >= (1 << shift)
    column = np.arange(width)
    groups |= (column < (sizes - 1)[:, None]).view(np.uint8) << 7  # continuation bits
    return groups[column < sizes[:, None]], sizes  # row-major: each value's bytes in order


_TOKENS_KEY = _field(b"\x0a", TOKENS.encode())
_WEIGHTS_KEY = _field(b"\x0a", WEIGHTS.encode())


def _example(token_varints: bytes, weight_bytes: bytes) -> bytes:
    tokens = _field(b"\x1a", _field(b"\x0a", token_varints))  # Feature.int64_list > Int64List.value
    weights = _field(b"\x12", _field(b"\x0a", weight_bytes))  # Feature.float_list > FloatList.value
    entries = _field(b"\x0a", _TOKENS_KEY + _field(b"\x12", tokens)) + _field(
        b"\x0a", _WEIGHTS_KEY + _field(b"\x12", weights)
    )
    return _field(b"\x0a", entries)  # Example.features


def serialize_examples(examples: Sequence) -> list[bytes]:
    """Serialized `tf.train.Example`s with `tokens` and `weights` features, one per example.

    Args:
        examples: `tfdialogpt.training.examples.Example`s (tokens int [n + 1], weights float [n]).

    Returns:
        The records' bytes, in order.

    Raises:
        ValueError: a token id is negative or too large for int64 varints here.

    Example:
        >>> from tfdialogpt.training.examples import Example
        >>> record = serialize_examples([Example(np.array([1, 300]), np.array([0.5], np.float32))])[0]
        >>> record.hex()
        '0a280a110a06746f6b656e7312071a050a0301ac020a130a0777656967687473120812060a040000003f'
    """
    if not examples:
        return []
    tokens = np.concatenate([ex.tokens for ex in examples]).astype(np.int64)
    if tokens.size and (tokens.min() < 0 or tokens.max() > _MAX_ID):
        raise ValueError(f"token ids must be in [0, {_MAX_ID}], found {tokens.min()}..{tokens.max()}")
    token_bytes, sizes = _varints(tokens)
    token_ends = np.cumsum([len(ex.tokens) for ex in examples])
    byte_ends = np.concatenate([[0], np.cumsum(sizes)])[token_ends].tolist()
    token_bytes = token_bytes.tobytes()
    weight_bytes = np.concatenate([ex.weights for ex in examples]).astype("<f4").tobytes()
    records, byte_start, weight_start = [], 0, 0
    for ex, byte_end in zip(examples, byte_ends, strict=True):
        weight_end = weight_start + 4 * len(ex.weights)
        records.append(_example(token_bytes[byte_start:byte_end], weight_bytes[weight_start:weight_end]))
        byte_start, weight_start = byte_end, weight_end
    return records
