"""TF Serving's protos without starting TensorFlow, and numpy <-> `TensorProto` by hand.

`tensorflow_serving.apis` imports `tensorflow.core.framework.tensor_pb2` and friends. Those are
plain generated protobuf modules, but importing them the usual way runs `tensorflow/__init__`,
which loads the whole runtime (seconds, hundreds of MB) on a client that only builds requests.
`apis()` imports the generated modules from TensorFlow's installed files with the parent
package's `__init__` skipped, then forgets the stand-in parent, so a later `import tensorflow`
in the same process runs normally and reuses the very same proto modules. If anything about
that fails, it falls back to the plain import.

The conversions follow `tensor.proto`: values in `tensor_content` (raw little-endian bytes) or
in the typed repeated field, where a single value fills the whole tensor. String tensors
(`DT_STRING`, values in `string_val`) are numpy object arrays of `bytes`, as TensorFlow's own
`.numpy()` gives them; a `str` is sent as its UTF-8.

Example:
    >>> proto = to_tensor_proto(np.array([[1, 2]], np.int32))
    >>> to_ndarray(proto).tolist()
    [[1, 2]]
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

import numpy as np

# The TensorFlow proto modules that tensorflow_serving.apis imports.
_TF_PROTO_MODULES = (
    "tensorflow.core.framework.types_pb2",
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.example.example_pb2",
    "tensorflow.core.protobuf.config_pb2",
    "tensorflow.core.protobuf.error_codes_pb2",
    "tensorflow.core.protobuf.meta_graph_pb2",
    "tensorflow.core.protobuf.named_tensor_pb2",
    "tensorflow.core.protobuf.saved_model_pb2",
)
_lock = threading.Lock()
_apis: types.SimpleNamespace | None = None


def _import_tf_protos_without_runtime() -> None:
    if "tensorflow" in sys.modules:  # TensorFlow is already up: nothing to save
        return
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tensorflow's proto files are not installed (pip install tensorflow-serving-api)")
    stand_in = types.ModuleType("tensorflow")
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules["tensorflow"] = stand_in
    try:
        for name in _TF_PROTO_MODULES:
            importlib.import_module(name)
    finally:
        if sys.modules.get("tensorflow") is stand_in:
            del sys.modules["tensorflow"]


def apis() -> types.SimpleNamespace:
    """The generated modules: `predict_pb2`, `prediction_service_pb2_grpc`, `model_pb2`, ...

    Returns a namespace with the TF Serving API modules plus `tensor_pb2`, `types_pb2`,
    `meta_graph_pb2` and `saved_model_pb2`.
    """
    global _apis
    with _lock:
        if _apis is None:
            try:
                _import_tf_protos_without_runtime()
            except Exception:  # any surprise: the plain import below still works, only slower
                pass
            modules = {}
            for name in (
                "get_model_metadata_pb2",
                "get_model_status_pb2",
                "model_pb2",
                "model_service_pb2_grpc",
                "predict_pb2",
                "prediction_log_pb2",
                "prediction_service_pb2_grpc",
            ):
                modules[name] = importlib.import_module(f"tensorflow_serving.apis.{name}")
            for name in _TF_PROTO_MODULES:
                modules[name.rsplit(".", 1)[1]] = importlib.import_module(name)
            _apis = types.SimpleNamespace(**modules)
        return _apis


# ---- numpy <-> TensorProto -------------------------------------------------------------------

# TensorFlow's DataType enum values (tensorflow/core/framework/types.proto) for the dtypes
# served here, the one table of them: enum -> (TensorFlow's name, numpy dtype, TensorProto field
# holding typed values). Strings are numpy object arrays of bytes. `signatures.py` takes its
# dtype enums and names from here.
DATA_TYPES: dict[int, tuple[str, np.dtype, str]] = {
    1: ("DT_FLOAT", np.dtype(np.float32), "float_val"),
    2: ("DT_DOUBLE", np.dtype(np.float64), "double_val"),
    3: ("DT_INT32", np.dtype(np.int32), "int_val"),
    4: ("DT_UINT8", np.dtype(np.uint8), "int_val"),
    5: ("DT_INT16", np.dtype(np.int16), "int_val"),
    6: ("DT_INT8", np.dtype(np.int8), "int_val"),
    9: ("DT_INT64", np.dtype(np.int64), "int64_val"),
    10: ("DT_BOOL", np.dtype(np.bool_), "bool_val"),
    17: ("DT_UINT16", np.dtype(np.uint16), "int_val"),
    19: ("DT_HALF", np.dtype(np.float16), "half_val"),  # values stored as their bit patterns
    22: ("DT_UINT32", np.dtype(np.uint32), "uint32_val"),
    23: ("DT_UINT64", np.dtype(np.uint64), "uint64_val"),
    7: ("DT_STRING", np.dtype(object), "string_val"),
}
STRING_ENUM = 7
DTYPE_ENUMS: dict[str, int] = {dtype.name: enum for enum, (_, dtype, _) in DATA_TYPES.items()}  # "int32" -> 3
DTYPE_NAMES: dict[int, str] = {enum: name for enum, (name, _, _) in DATA_TYPES.items()}  # 3 -> "DT_INT32"
_DTYPES = {enum: (dtype, field) for enum, (_, dtype, field) in DATA_TYPES.items()}
_ENUM_OF = {dtype: enum for enum, (dtype, _) in _DTYPES.items()}


class TensorDecodeError(ValueError):
    """A `TensorProto` this module cannot turn into an array (e.g. an unknown dtype or rank)."""


def dtype_name(enum: int) -> str:
    """`3` -> `"DT_INT32"`."""
    if enum in DTYPE_NAMES:
        return DTYPE_NAMES[enum]
    try:
        return apis().types_pb2.DataType.Name(enum)
    except ValueError:
        return f"DataType({enum})"


def to_tensor_proto(array: np.ndarray, proto=None):
    """A `TensorProto` holding `array`: numbers in `tensor_content`, strings in `string_val`.

    Args:
        array: a numpy array or scalar; strings as `str`/`bytes` (any numpy string dtype, or
            an object array of them).
        proto: an existing `TensorProto` to fill (e.g. `request.inputs["x"]`); a new one if None.

    Raises:
        TypeError: a dtype that cannot be sent, or an object array holding a non-string.
        ValueError: a `str` holding a lone surrogate.
    """
    array = np.asarray(array)
    if array.dtype.kind in "OUS":
        return _string_proto(array, proto)
    if array.dtype not in _ENUM_OF:
        raise TypeError(f"cannot send a {array.dtype} array; use one of {sorted(str(d) for d in _ENUM_OF)}")
    proto = apis().tensor_pb2.TensorProto() if proto is None else proto
    proto.Clear()
    proto.dtype = _ENUM_OF[array.dtype]
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_content = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    return proto


def _string_proto(array: np.ndarray, proto):
    values = []
    for value in array.reshape(-1).tolist():
        if isinstance(value, str):
            try:
                value = value.encode("utf-8")
            except UnicodeEncodeError as err:  # a lone surrogate: no UTF-8 spells it
                raise ValueError(f"a string holds {value[err.start]!r}, which has no UTF-8 form") from None
        if not isinstance(value, bytes):
            raise TypeError(f"a string tensor holds a {type(value).__name__}; expected str or bytes")
        values.append(value)
    proto = apis().tensor_pb2.TensorProto() if proto is None else proto
    proto.Clear()
    proto.dtype = STRING_ENUM
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    proto.string_val.extend(values)
    return proto


def to_ndarray(proto) -> np.ndarray:
    """The numpy array a `TensorProto` holds.

    Raises:
        TensorDecodeError: a dtype other than the numeric ones, an unknown rank, or values that
            do not fit the shape.
    """
    if proto.dtype not in _DTYPES:
        raise TensorDecodeError(f"dtype {dtype_name(proto.dtype)} is not supported here (numeric tensors only)")
    if proto.tensor_shape.unknown_rank:
        raise TensorDecodeError("the tensor has an unknown rank")
    dtype, field = _DTYPES[proto.dtype]
    shape = tuple(int(dim.size) for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise TensorDecodeError(f"the tensor has a negative dimension in shape {list(shape)}")
    count = int(np.prod(shape, dtype=np.int64))
    if proto.dtype == STRING_ENUM:
        return _string_array(proto, shape, count)
    if proto.tensor_content:
        content = proto.tensor_content
        if len(content) != count * dtype.itemsize:
            raise TensorDecodeError(
                f"tensor_content holds {len(content)} bytes; shape {list(shape)} of {dtype} needs "
                f"{count * dtype.itemsize}"
            )
        return np.frombuffer(content, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    values = getattr(proto, field)
    if field == "half_val":
        flat = np.asarray(values, np.uint16).view(np.float16)
    else:
        flat = np.asarray(values, dtype)
    if flat.size > count:
        raise TensorDecodeError(f"{field} holds {flat.size} values; shape {list(shape)} has {count}")
    if flat.size == 0:
        flat = np.zeros(count, dtype)
    elif flat.size < count:  # as TensorFlow does: the last value repeats
        flat = np.concatenate([flat, np.full(count - flat.size, flat[-1], dtype)])
    return flat.astype(dtype).reshape(shape)


def _string_array(proto, shape: tuple[int, ...], count: int) -> np.ndarray:
    if proto.tensor_content:
        raise TensorDecodeError("a DT_STRING tensor must hold its values in string_val, not tensor_content")
    values = proto.string_val
    if len(values) > count:
        raise TensorDecodeError(f"string_val holds {len(values)} values; shape {list(shape)} has {count}")
    flat = np.empty(count, object)
    if values:
        flat[: len(values)] = list(values)
        flat[len(values) :] = values[-1]  # as TensorFlow does: the last value repeats
    else:
        flat[:] = b""
    return flat.reshape(shape)
