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

from tfdialogpt.serving.errors import InvalidRequestError


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server.

    Attributes:
        max_rows: rows (the first dimension) of any input; TF Serving's batching refuses
            larger requests the same way ("larger than maximum input batch size").
        max_values: values in any one input tensor (rows x tokens, rows x turns).
        max_tokens: rows x the positions each row's decode can fill (padded prompt plus
            `max_new_tokens`): what the run's preallocated KV cache holds, 2 x layers x hidden
            x 4 bytes a position (73 KB for DialoGPT-small, 8,192 of them 600 MB).
    """

    max_rows: int = 64
    max_values: int = 1 << 20
    max_tokens: int = 8192

    def __post_init__(self):
        if self.max_rows < 1 or self.max_values < 1 or self.max_tokens < 1:
            raise ValueError(f"request limits must be positive, got {self}")

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

    def check_tokens(self, rows: int, positions: int) -> None:
        """Raises `InvalidRequestError` if `rows` rows of `positions` cache positions each are
        more than one request may ask for (checked before the request is queued)."""
        if rows * positions > self.max_tokens:
            raise InvalidRequestError(
                f"the request needs {rows} rows x {positions} positions = {rows * positions} tokens of "
                f"cache; this server takes at most {self.max_tokens} per request (--max-tokens-per-request): "
                "send fewer rows or shorter histories"
            )
