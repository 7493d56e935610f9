"""Private workarounds for Keras / TensorFlow bugs that `fit` meets under
`MultiWorkerMirroredStrategy`; the only place in tfdialogpt that touches Keras internals.

Each shim relies on private Keras code (`Model._symbolic_build`, `Model._distribute_strategy`,
`keras.src.backend.tensorflow.trainer.reduce_per_replica`) as it is in the versions of
`WRITTEN_FOR`. Importing this module warns (`CompatWarning`) when the installed TensorFlow or
Keras has another major.minor version: the shims may then be unneeded, or break.
"""

from __future__ import annotations

import contextlib
import warnings

import keras
import tensorflow as tf

# The versions (major.minor) these shims were written for and tested against.
WRITTEN_FOR = {"tensorflow": "2.21", "keras": "3.15"}


class CompatWarning(UserWarning):
    """The installed TensorFlow or Keras is not the version the private shims were written for."""


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def check_versions() -> None:
    """Warns (`CompatWarning`) naming both versions when the installed TensorFlow or Keras
    differs, in major.minor, from `WRITTEN_FOR`. Runs when this module is imported."""
    installed = {"tensorflow": tf.__version__, "keras": keras.__version__}
    for package, version in installed.items():
        if _major_minor(version) != WRITTEN_FOR[package]:
            warnings.warn(
                f"tfdialogpt.training._compat patches private {package} code written for "
                f"{package} {WRITTEN_FOR[package]}, but {package} {version} is installed; "
                "multi-worker fine-tuning (MultiWorkerMirroredStrategy) may fail or misbehave",
                CompatWarning,
                stacklevel=2,
            )


check_versions()


def build_before_fit(model, strategy, batches) -> None:
    """Works around Keras 3.15 under `MultiWorkerMirroredStrategy`.

    Under a strategy, `fit` first builds the model's state from one batch it reduces across
    replicas; that reduce fails for nested batches (our dict inputs) with the multi-worker
    strategy's collectives. Build from a local batch instead, and let `fit` skip its own build
    (it does when the model holds no strategy; `fit` then takes it from the enclosing scope).
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    with strategy.scope():
        model._symbolic_build(data_batch=next(iter(batches.eval_dataset())))
    model._distribute_strategy = None


@contextlib.contextmanager
def multi_worker_logs(strategy):
    """Works around Keras 3.15 reducing `fit`'s scalar logs with `axis=0` under
    `MultiWorkerMirroredStrategy` (an error for rank-0 tensors): averages them over all
    replicas with `axis=None`, as Keras means to. Patched only while our `fit` runs."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        yield
        return
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    original = keras_tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)
        return tf.nest.map_structure(
            lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0), values
        )

    keras_tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        keras_tf_trainer.reduce_per_replica = original
