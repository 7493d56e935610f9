"""The per-model cache of compiled generate functions, keyed by bucket shapes and options.

The bucket sizes themselves live in `tfdialogpt.padding` (TF-free, shared with the client).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable

from tfdialogpt.padding import NEW_TOKEN_BUCKETS, PROMPT_BUCKETS, bucket_shapes, round_up

__all__ = ["COMPILED", "NEW_TOKEN_BUCKETS", "PROMPT_BUCKETS", "CompiledFunctionCache", "bucket_shapes", "round_up"]


class CompiledFunctionCache:
    """Compiled generate functions, kept per model and per key (bucket shapes + options).

    Models are held weakly, and `build` receives only a weak proxy of the model: the stored
    functions never keep their model alive, so a model that is dropped is freed and takes
    its compiled functions with it.
    """

    def __init__(self):
        self._by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model, key: Hashable, build: Callable[[object], Callable]) -> Callable:
        """Returns the function stored for (model, key), built by `build(proxy)` on first use."""
        functions = self._by_model.setdefault(model, {})
        if key not in functions:
            functions[key] = build(weakref.proxy(model))
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
