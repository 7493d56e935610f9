"""TensorFlow imported without its native start-up lines on the terminal.

`import tensorflow` prints absl log lines (oneDNN, cudart, "All log messages before
absl::InitializeLog()") from C++ before TensorFlow reads `TF_CPP_MIN_LOG_LEVEL`, so that
setting cannot keep them off. Here the process's stderr (file descriptor 2) goes to a
temporary file for the import only; if the import fails, what it printed is written out
before the error. `TFDIALOGPT_TF_LOGS=1` leaves stderr alone.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def native_stderr_collected():
    """Sends fd 2 to a temporary file inside the block; yields a list that holds, once the
    block ends, what was written there (the caller prints it or drops it). On an exception
    the text is written out before it propagates."""
    collected: list[str] = []
    if os.environ.get("TFDIALOGPT_TF_LOGS") == "1":
        yield collected
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield collected
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        collected.append(captured.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def native_stderr_captured():
    """Sends fd 2 to a temporary file inside the block; replays it if the block raises."""
    with native_stderr_collected():
        yield


def import_tensorflow():
    """`import tensorflow`, quietly (see the module docstring); returns the module."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with native_stderr_captured():
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]
