"""Loading a SavedModel so that dropping it gives its memory back.

`tf.saved_model.load` registers each custom gradient of the SavedModel in TensorFlow's
process-wide gradient registry under a new name and never removes it, and that entry keeps the
loaded functions' graphs alive, so every load of a version stays in memory after the version is
dropped. `load_saved_model` records the names a load added and `release_saved_model` removes
them, collects the loaded object graph's reference cycles and, on glibc, returns the freed heap
to the OS (`malloc_trim`). See benchmarks/rollover.py and benchmarks/RESULTS.md.

Example:
    >>> loaded, gradients = load_saved_model("models/dialogpt/1", tags=["serve"])  # doctest: +SKIP
    >>> del loaded
    >>> release_saved_model(gradients)  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading

_LOAD_LOCK = threading.Lock()  # one load at a time, so each sees only its own new gradients


def _gradient_registry() -> dict | None:
    """TensorFlow's process-wide gradient registry (op type -> entry); None if this TensorFlow
    keeps it elsewhere (then nothing is removed, as before)."""
    try:
        from tensorflow.python.framework import ops

        table = ops.gradient_registry._registry
    except (ImportError, AttributeError):
        return None
    return table if isinstance(table, dict) else None


def load_saved_model(path: str, tags=None) -> tuple[object, list[str]]:
    """`tf.saved_model.load(path, tags)`, and the gradient-registry names that load added.

    Pass the names to `release_saved_model` once the loaded object is dropped: TensorFlow never
    removes them itself, and each keeps the loaded functions' graphs alive.
    """
    import tensorflow as tf

    with _LOAD_LOCK:
        registry = _gradient_registry()
        before = set(registry) if registry is not None else set()
        try:
            loaded = tf.saved_model.load(path, tags=tags)
        except BaseException:
            release_saved_model(_added(registry, before), trim=False)
            raise
        return loaded, _added(registry, before)


def _added(registry: dict | None, before: set) -> list[str]:
    return sorted(set(registry) - before) if registry is not None else []


def release_saved_model(gradient_names, trim: bool = True) -> None:
    """Frees what a dropped `load_saved_model` result held: removes its gradient-registry
    entries, runs `gc.collect()` (the loaded object graph has reference cycles) and, if `trim`,
    gives freed heap back to the OS (`malloc_trim`, glibc only)."""
    registry = _gradient_registry()
    if registry is not None:
        for name in gradient_names:
            registry.pop(name, None)
    gc.collect()
    if trim:
        trim_heap()


def _malloc_trim():
    """glibc's `malloc_trim`, or None on another C library (musl, macOS, Windows)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (AttributeError, ValueError, OSError):
        return None


_MALLOC_TRIM = _malloc_trim()


def trim_heap() -> bool:
    """Returns the heap's free pages to the OS (glibc `malloc_trim(0)`); False where a no-op."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
