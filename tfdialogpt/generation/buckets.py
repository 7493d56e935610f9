"""Shape buckets and the per-bucket cache of compiled generate functions.

XLA compiles one program per input shape. Prompt lengths and `max_new_tokens` are therefore
rounded up to a few bucket sizes (prompts are left padded to the bucket; the requested number
of new tokens is a run-time input that stops the loop early), so a new length inside a bucket
reuses the compiled program instead of paying seconds for a new one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable

# Powers of two: few buckets, and at most 2x padding.
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024)
NEW_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024)


def round_up(length: int, buckets=PROMPT_BUCKETS) -> int:
    """The smallest bucket >= `length` (or `length` itself beyond the largest bucket)."""
    for size in buckets:
        if size >= length:
            return size
    return length


def bucket_shapes(prompt_length: int, max_new_tokens: int, max_positions: int) -> tuple[int, int]:
    """(padded prompt length T, output width N) for a request, with T + N <= max_positions.

    The caller has checked `prompt_length + max_new_tokens <= max_positions`; a bucket that
    would overflow the position table is clipped back (to a size that still fits the request).

    Example:
        >>> bucket_shapes(40, 50, 1024)
        (64, 64)
        >>> bucket_shapes(1000, 20, 1024)
        (1000, 24)
    """
    new = min(round_up(max_new_tokens, NEW_TOKEN_BUCKETS), max_positions - prompt_length)
    prompt = min(round_up(prompt_length, PROMPT_BUCKETS), max_positions - new)
    return prompt, new


class CompiledFunctionCache:
    """Compiled generate functions, kept per model and per key (bucket shapes + options).

    Models are held weakly: a model that is dropped takes its compiled functions with it.
    """

    def __init__(self):
        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model, key: Hashable, build: Callable[[], Callable]) -> Callable:
        """Returns the function stored for (model, key), building it on first use."""
        functions = self._by_model.setdefault(model, {})
        if key not in functions:
            functions[key] = build()
        return functions[key]

    def keys(self, model) -> list:
        """The keys compiled so far for `model` (for tests and benchmarks)."""
        return list(self._by_model.get(model, {}))

    def clear(self, model=None) -> None:
        if model is None:
            self._by_model.clear()
        else:
            self._by_model.pop(model, None)


COMPILED = CompiledFunctionCache()
