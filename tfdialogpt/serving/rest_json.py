"""TF Serving's REST JSON for tensors, both ways, as its `util/json_tensor.cc` reads and writes it.

- Requests (`parse_predict_request`): a JSON object with an optional `signature_name` and
  either `instances` (row format: a list, one entry per batch row, each an object naming every
  input, or a bare value when the signature has one input; the rows are stacked along a new
  first dimension) or `inputs` (columnar: an object naming every input, or a bare value for a
  one-input signature), never both. Every input the signature declares must be given, as TF
  Serving's REST API requires (SignatureDef defaults are not filled over REST). Values are
  converted to the input's dtype from the SignatureDef: numbers to numeric dtypes without loss,
  JSON strings (their UTF-8 bytes, passed on byte for byte) or `{"b64": "..."}` to `DT_STRING`.
- Responses (`format_predict_response`): `{"predictions": [...]}` for row requests (each row an
  object of outputs, or a bare value when there is one output) or `{"outputs": ...}` for
  columnar ones; `DT_STRING` outputs whose name ends in `_bytes` as `{"b64": "..."}`.

Every problem is a `RestFormatError` with TF Serving's wording where it has one. Needs only
numpy (no TensorFlow).

Example:
    >>> dtypes = {"turns": 7}  # input name -> DataType enum, from the SignatureDef
    >>> request = parse_predict_request(b'{"instances": [["Hi"]]}', lambda name: dtypes)
    >>> request.format, request.inputs["turns"].tolist()
    ('row', [[b'Hi']])
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from collections.abc import Callable, Mapping

import numpy as np

from tfdialogpt.serving.protos import DATA_TYPES, STRING_ENUM, dtype_name

ROW, COLUMNAR = "row", "columnar"
_BOOL_ENUM = 10
_FLOAT_ENUMS = {1: np.float32, 2: np.float64, 19: np.float16}
_INT_RANGES = {  # enum -> the JSON integers TF Serving accepts for it (rapidjson IsInt / IsInt64 / ...)
    3: (-(2**31), 2**31 - 1),
    4: (-(2**31), 2**31 - 1),
    5: (-(2**31), 2**31 - 1),
    6: (-(2**31), 2**31 - 1),
    17: (-(2**31), 2**31 - 1),
    9: (-(2**63), 2**63 - 1),
    22: (0, 2**32 - 1),
    23: (0, 2**64 - 1),
}


class RestFormatError(ValueError):
    """The JSON body is not a request (or the outputs cannot be written): INVALID_ARGUMENT."""


@dataclasses.dataclass
class PredictRequest:
    signature_name: str  # "" when the body names none
    inputs: dict[str, np.ndarray]
    format: str  # ROW or COLUMNAR: how the answer is written


def _short(value, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return "Number"
    return {str: "String", list: "Array", dict: "Object"}.get(type(value), type(value).__name__)


def _type_error(value, enum: int) -> RestFormatError:
    return RestFormatError(
        f"JSON Value: {_short(value)} Type: {_json_type(value)} is not of expected type: {dtype_name(enum)}"
    )


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _string(value) -> bytes:
    """A JSON string's bytes as sent: the body is read with `surrogateescape`, so bytes that are
    not UTF-8 come back unchanged, as TF Serving passes them on."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as err:
        raise RestFormatError(
            f"a string holds {value[err.start]!r} (a lone surrogate escape); no UTF-8 spells it"
        ) from None


def _scalar(value, enum: int):
    """One JSON leaf converted to a value of dtype `enum`, or the error TF Serving gives."""
    if enum == STRING_ENUM:
        if isinstance(value, str):
            return _string(value)
        if isinstance(value, dict):
            if not _is_b64(value):
                raise RestFormatError(f"JSON Value: {_short(value)} not formatted correctly for base64 data")
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise RestFormatError("Unable to base64 decode") from None
        raise _type_error(value, enum)
    if isinstance(value, dict):
        raise _type_error(value, enum)
    if enum == _BOOL_ENUM:
        if not isinstance(value, bool):
            raise _type_error(value, enum)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, enum)
    if enum in _FLOAT_ENUMS:
        dtype = _FLOAT_ENUMS[enum]
        if math.isfinite(value):
            info = np.finfo(dtype)
            largest = float(info.max)
            if isinstance(value, int):
                lossy = abs(value) > 2 ** (info.nmant + 1) - 1
            else:
                lossy = not -largest <= value <= largest
            if lossy:
                raise RestFormatError(
                    f"Cannot convert JSON value: {_short(value)} to {dtype_name(enum)[3:].lower()} "
                    "without loss of precision."
                )
        return value
    if enum in _INT_RANGES:
        low, high = _INT_RANGES[enum]
        if not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, enum)
        return value
    raise RestFormatError(f"Conversion of JSON Value: {_short(value)} to type: {dtype_name(enum)} is not supported")


def _leaf(value) -> bool:
    return not isinstance(value, list)


def _shape(value) -> tuple[int, ...]:
    """The dense shape a nested list implies, read down its first elements (as TF Serving does)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _to_array(value, enum: int) -> np.ndarray:
    """A JSON value (a leaf or nested lists of them) as an array of dtype `enum`."""
    if enum not in DATA_TYPES:
        raise RestFormatError(f"Conversion of JSON to type: {dtype_name(enum)} is not supported")
    shape = _shape(value)
    flat: list = []

    def fill(item, level: int) -> None:
        if _leaf(item):
            if level != len(shape):
                raise RestFormatError(
                    f"JSON Value: {_short(item)} found at incorrect level: {level + 1} in the JSON DOM. "
                    f"Expected at level: {len(shape)}"
                )
            flat.append(_scalar(item, enum))
            return
        if level >= len(shape):
            raise RestFormatError(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
        if len(item) != shape[level]:
            raise RestFormatError(
                f"Encountered list at unexpected size: {len(item)} at level: {level} expected size: {shape[level]}"
            )
        for element in item:
            fill(element, level + 1)

    fill(value, 0)
    dtype = DATA_TYPES[enum][1]
    if enum == STRING_ENUM:
        array = np.empty(len(flat), object)
        array[:] = flat
        return array.reshape(shape)
    try:
        return np.asarray(flat, dtype).reshape(shape)
    except OverflowError:
        raise RestFormatError(f"a value does not fit {dtype_name(enum)}") from None


def loads(body: bytes):
    """The JSON document of a request body (NaN and Infinity allowed, as TF Serving's parser)."""
    if not body:
        raise RestFormatError("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError as err:
        raise RestFormatError(f"JSON Parse error: {err.msg} at offset: {err.pos}") from None
    except RecursionError:
        raise RestFormatError("JSON Parse error: the document is nested too deeply") from None
    if not isinstance(doc, dict):
        raise RestFormatError(f"JSON Value: {_short(doc)} Is not object")
    return doc


def signature_name_of(doc: Mapping) -> str:
    """The body's `signature_name` ("" when absent)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise RestFormatError(
            f"JSON Value: {_short(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def parse_predict_request(
    body: bytes, input_dtypes: Callable[[str], Mapping[str, int]], check_shape: Callable | None = None
) -> PredictRequest:
    """A predict request's signature name, input arrays and format.

    Args:
        body: the HTTP body.
        input_dtypes: signature name ("" = the default) -> {input name: DataType enum}; raises
            for an unknown signature.
        check_shape: called with (input name, shape) on each input's shape, read down its first
            elements, before any array is built (the server's request limits).

    Raises:
        RestFormatError: malformed JSON, both or neither of `instances` and `inputs`, missing
            or unknown inputs, values of the wrong type or shape.
    """
    doc = loads(body)
    name = signature_name_of(doc)
    dtypes = dict(input_dtypes(name))
    if not dtypes:
        raise RestFormatError(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    if "instances" in doc and "inputs" in doc:
        raise RestFormatError(
            f"JSON Value: {_short(doc)} Not formatted correctly expecting only one of 'inputs' or 'instances' keys "
            "to exist "
        )
    if check_shape is not None:
        if isinstance(doc.get("instances"), list) and doc["instances"]:
            first = doc["instances"][0]
            row = first if isinstance(first, dict) and not _is_b64(first) else {next(iter(dtypes)): first}
            for key, value in row.items():
                check_shape(key, (len(doc["instances"]),) + _shape(value))
        elif isinstance(doc.get("inputs"), dict) and not _is_b64(doc["inputs"]):
            for key, value in doc["inputs"].items():
                check_shape(key, _shape(value))
        elif "inputs" in doc:
            check_shape(next(iter(dtypes)), _shape(doc["inputs"]))
    if "instances" in doc:
        return PredictRequest(name, _from_instances(doc["instances"], dtypes, doc), ROW)
    if "inputs" in doc:
        return PredictRequest(name, _from_inputs(doc["inputs"], dtypes), COLUMNAR)
    raise RestFormatError("Missing 'inputs' or 'instances' key")


def _from_instances(instances, dtypes: Mapping[str, int], doc) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise RestFormatError(f"JSON Value: {_short(doc)} Expecting 'instances' to be an list/array")
    if not instances:
        raise RestFormatError(f"JSON Value: {_short(doc)} No values in 'instances' array")

    def is_object(value) -> bool:
        return isinstance(value, dict) and not _is_b64(value)

    objects = is_object(instances[0])
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise RestFormatError(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            f"tensorinfo_map (inputs: {', '.join(sorted(dtypes))})"
        )
    columns: dict[str, list] = {key: [] for key in dtypes} if objects else {next(iter(dtypes)): []}
    shapes: dict[str, tuple] = {}
    for row, instance in enumerate(instances):
        if objects != is_object(instance):
            kind = "object but got list" if objects else "value/list but got object"
            raise RestFormatError(f"Expecting {kind} at item {row} of input list")
        items = instance.items() if objects else [(next(iter(dtypes)), instance)]
        for key, value in items:
            if key not in dtypes:
                raise RestFormatError(
                    f"Failed to process element: {row} key: {key} of 'instances' list. Error: JSON object: does not "
                    f"have named input: {key}"
                )
            try:
                array = _to_array(value, dtypes[key])
            except RestFormatError as err:
                where = f" key: {key}" if objects else ""
                raise RestFormatError(
                    f"Failed to process element: {row}{where} of 'instances' list. Error: {err}"
                ) from None
            if key in shapes and array.shape != shapes[key]:
                raise RestFormatError(
                    f"Failed to process element: {row} key: {key} of 'instances' list. Error: Expecting shape "
                    f"{list(shapes[key])} but got: {list(array.shape)}"
                )
            shapes[key] = array.shape
            columns[key].append(array)
        if objects and set(instance) != set(dtypes):
            raise RestFormatError(
                f"Failed to process element: {row} of 'instances' list. JSON object: {_short(instance)} keys must be "
                f"equal to: {','.join(sorted(dtypes))}"
            )
    return {key: _stack(values, dtypes[key]) for key, values in columns.items()}


def _stack(values: list[np.ndarray], enum: int) -> np.ndarray:
    if enum != STRING_ENUM:
        return np.stack(values)
    out = np.empty((len(values),) + values[0].shape, object)
    for row, value in enumerate(values):
        out[row] = value
    return out


def _from_inputs(inputs, dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(dtypes) > 1:
            raise RestFormatError(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                f"tensorinfo_map (inputs: {', '.join(sorted(dtypes))})"
            )
        key = next(iter(dtypes))
        return {key: _to_array(inputs, dtypes[key])}
    unknown = sorted(set(inputs) - set(dtypes))
    if unknown:  # TF Serving ignores them; naming them saves a user's typo from going unnoticed
        raise RestFormatError(f"'inputs' names {unknown[0]!r}, which is not an input; expected {', '.join(dtypes)}")
    out = {}
    for key, enum in dtypes.items():
        if key not in inputs:
            raise RestFormatError(f"Missing named input: {key} in 'inputs' object.")
        out[key] = _to_array(inputs[key], enum)
    return out


# ---- responses ---------------------------------------------------------------------------------


def _json_values(array: np.ndarray, as_bytes: bool):
    if array.dtype == object:
        flat = [
            {"b64": base64.b64encode(v).decode("ascii")} if as_bytes else v.decode("utf-8", "replace")
            for v in array.reshape(-1).tolist()
        ]
        return np.array(flat, object).reshape(array.shape).tolist() if array.ndim else flat[0]
    if array.dtype.kind == "f":
        # Each value as the shortest decimal that reads back to the same float32/float64, as TF
        # Serving writes them (so 0.2f is 0.2, not 0.20000000298023224).
        flat = [float(str(v)) if np.isfinite(v) else float(v) for v in array.reshape(-1)]
        return np.array(flat, object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


def format_predict_response(outputs: Mapping[str, np.ndarray], request_format: str) -> dict:
    """The JSON object of a predict answer, in the request's format."""
    if not outputs:
        raise RestFormatError("Cannot convert empty tensor map to JSON")
    values = {key: _json_values(value, key.endswith("_bytes")) for key, value in sorted(outputs.items())}
    if request_format == COLUMNAR:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    sizes = set()
    for key, value in outputs.items():
        if value.ndim == 0:
            raise RestFormatError(f"Tensor name: {key} has no shape information ")
        sizes.add(value.shape[0])
    if len(sizes) > 1:
        raise RestFormatError(f"outputs have inconsistent batch sizes {sorted(sizes)}")
    rows = sizes.pop()
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{key: value[row] for key, value in values.items()} for row in range(rows)]}
