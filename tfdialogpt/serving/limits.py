"""The model server's per-request limits, checked on a request's declared shapes before any
array is built from it (a request declaring a 20000 x 10000 tensor with no values is refused
in microseconds, not after the server allocates gigabytes). Needs neither TensorFlow nor numpy.

Example:
    >>> RequestLimits(max_rows=4).check_shape("turns", (8, 2))
    Traceback (most recent call last):
        ...
    tfdialogpt.serving.errors.InvalidRequestError: input 'turns' has 8 rows; this server takes at most 4 ...
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

from tfdialogpt.serving.errors import InvalidRequestError


class ModelLimits(Protocol):
    """What `check_cache` needs of a served model (`signatures.Limits`, the export's metadata)."""

    max_positions: int
    cache_bytes_per_position: int


MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server.

    Attributes:
        max_rows: rows (the first dimension) of any input; TF Serving's batching refuses
            larger requests the same way ("larger than maximum input batch size").
        max_values: values in any one input tensor (rows x tokens, rows x turns).
        max_cache_mb: MiB of KV cache one request may make a run preallocate: rows x the
            positions each row's decode can fill (padded prompt plus `max_new_tokens`) x the
            model's bytes per position (2 x layers x hidden x 4 in float32: 72 KiB on
            DialoGPT-small, 192 KiB medium, 360 KiB large). One full-length row is always
            allowed, so a model whose one row needs more (medium 192 MiB, large 360 MiB) still
            serves it.
    """

    max_rows: int = 64
    max_values: int = 1 << 20
    max_cache_mb: float = 128.0

    def __post_init__(self):
        if self.max_rows < 1 or self.max_values < 1 or not 0 < self.max_cache_mb < math.inf:  # NaN fails too
            raise ValueError(f"request limits must be positive and finite, got {self}")

    def check_shape(self, name: str, shape: Sequence[int]) -> None:
        """Raises `InvalidRequestError` if a tensor of `shape` is more than one request may send."""
        if shape and shape[0] > self.max_rows:
            raise InvalidRequestError(
                f"input {name!r} has {shape[0]} rows; this server takes at most {self.max_rows} per request "
                "(--max-rows-per-request)"
            )
        values = math.prod(int(size) for size in shape)
        if values > self.max_values:
            raise InvalidRequestError(
                f"input {name!r} declares shape {list(shape)} ({values} values); this server takes at most "
                f"{self.max_values} values per input (--max-values-per-input)"
            )

    def max_tokens(self, model: ModelLimits) -> int:
        """Rows x positions one request may ask of `model`: `max_cache_mb` of its cache, at
        least one full-length row."""
        return max(model.max_positions, int(self.max_cache_mb * MIB) // model.cache_bytes_per_position)

    def check_cache(self, rows: int, positions: int, model: ModelLimits) -> None:
        """Raises `InvalidRequestError` if `rows` rows of `positions` cache positions each are
        more than one request may ask of `model` (checked before the request is queued)."""
        tokens, allowed = rows * positions, self.max_tokens(model)
        if tokens > allowed:
            need = tokens * model.cache_bytes_per_position / MIB
            raise InvalidRequestError(
                f"the request needs {rows} rows x {positions} positions = {tokens} tokens of cache, "
                f"{need:.1f} MiB on this model; this server takes at most {self.max_cache_mb:g} MiB per request "
                f"({allowed} tokens; --max-cache-mb-per-request): send fewer rows or shorter histories"
            )
