"""Stopping a running signature call once every client it serves has gone.

TensorFlow's eager runtime stops a running function at its next loop step (`CancelledError`)
when the `CancellationManager` it was called with is cancelled. That manager is not public API
(`tensorflow.python.eager.cancellation`) and TensorFlow keeps the caller's in one process-wide
variable, which two threads calling functions at once would overwrite; `install()` makes the
lookup per thread. Without those internals (another TensorFlow), `Run` still works and
cancelling it only marks it: the call finishes as before.

An XLA-compiled signature runs its whole decode as one XLA op, which does not check for
cancellation: such a run finishes (its work is bounded by the request limits) and its answers
are dropped.

Example:
    >>> run = Run()
    >>> with run.active():  # doctest: +SKIP
    ...     outputs = signature(**inputs)  # CancelledError once `run.cancel()` is called
"""

from __future__ import annotations

import contextlib
import threading

_local = threading.local()
_installed: bool | None = None
_install_lock = threading.Lock()
_tf_cancellation = None  # TensorFlow's module, once installed


def _current():
    """This thread's manager inside `Run.active()`; elsewhere TensorFlow's own (process-wide)
    one, so TensorFlow's `CancellationManager.get_cancelable_function` keeps working."""
    manager = getattr(_local, "manager", None)
    if manager is None and _tf_cancellation is not None:
        return _tf_cancellation._active_context
    return manager


def install() -> bool:
    """Makes TensorFlow look up the cancellation manager per thread; False if this TensorFlow
    has no such hook (then runs cannot be stopped mid-call)."""
    global _installed, _tf_cancellation
    with _install_lock:
        if _installed is None:
            try:
                from tensorflow.python.eager import cancellation, context

                _installed = callable(getattr(cancellation, "context", None)) and hasattr(
                    context.Context, "call_function"
                )
                if _installed:
                    _tf_cancellation = cancellation
                    cancellation.context = _current
            except ImportError:
                _installed = False
        return _installed


class Run:
    """One signature call that can be stopped from another thread."""

    def __init__(self):
        self._manager = None
        if install():
            from tensorflow.python.eager import cancellation

            self._manager = cancellation.CancellationManager()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stops the call at its next loop step (a call under XLA runs to its end)."""
        self._cancelled.set()
        if self._manager is not None:
            self._manager.start_cancel()

    @contextlib.contextmanager
    def active(self):
        """Functions this thread calls inside stop when `cancel()` is called."""
        previous = _current()
        _local.manager = self._manager
        try:
            yield self
        finally:
            _local.manager = previous
