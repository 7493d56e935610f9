"""Checkpoint-and-resume for runs that may be killed at any moment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np

STATE_FILE = "training_state.json"


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that resumes a killed run mid-epoch, exactly.

    Keras's callback restores the weights, the optimizer and the epoch, but restarts that epoch
    from its first batch, so a run killed mid-epoch trains on those batches twice. This
    subclass also records how many batches of the epoch are done (`state()`), which
    `finetune` reads to skip exactly those batches of the same seeded order; and the random
    states of dropout, so the continued run draws the same masks.

    A backup is written so that a kill at any instant leaves a consistent one: the weights go
    to a new file, then `training_state.json` is atomically replaced to name it, then older
    files are removed. It is also written at the end of every epoch.

    Args:
        backup_dir: directory for the backup files; used by this run only.
        save_freq: back up every this many batches, or `"epoch"`.
        delete_checkpoint: remove the backup when `fit` ends normally.
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint: bool = True):
        super().__init__(str(backup_dir), save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self.batch_offset = 0  # batches of the current epoch done before this `fit` began
        self._epoch = 0
        self._batches_done = 0
        self._serial = 0

    # ---- reading -------------------------------------------------------------------------------
    def state(self) -> dict | None:
        """`{"epoch": e, "batch": b, ...}` of the last backup (b batches of epoch e done), or None."""
        return read_state(self.backup_dir)

    def restore(self, model) -> dict | None:
        """Loads the last backup into `model` (compiled) now; returns its state, or None."""
        self.set_model(model)
        self._load_model()
        return self.state()

    def _load_model(self):
        state = self.state()
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, state["weights"]))
        for variable, value in zip(_random_states(self.model), state["random_states"], strict=True):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        self._serial = state.get("serial", 0)

    # ---- writing -------------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batches_done = self.batch_offset

    def on_train_batch_end(self, batch, logs=None):
        self._batches_done = self.batch_offset + batch + 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch, self._batches_done, self.batch_offset = epoch + 1, 0, 0
        super().on_epoch_end(epoch, logs)  # saves when save_freq == "epoch"
        if self.save_freq != "epoch":
            self._save_model()

    def _save_model(self):
        directory = Path(self.backup_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self._serial += 1
        weights_name = f"backup-{self._serial:07d}.weights.h5"
        self.model.save_weights(str(directory / weights_name), overwrite=True)
        state = {
            "epoch": self._epoch,
            "batch": self._batches_done,
            "weights": weights_name,
            "serial": self._serial,
            "random_states": [np.asarray(v.numpy()).tolist() for v in _random_states(self.model)],
        }
        tmp = directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, directory / STATE_FILE)
        for old in directory.glob("backup-*.weights.h5"):
            if old.name != weights_name:
                old.unlink(missing_ok=True)


def read_state(backup_dir) -> dict | None:
    """The state of the last backup in `backup_dir` (see `ResumableBackup.state`), or None
    when it holds none (or its weights file is gone)."""
    path = Path(backup_dir) / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    if not (Path(backup_dir) / state["weights"]).is_file():
        return None
    return state


def _random_states(model) -> list:
    """Variables of `model` that are not weights: the seed-generator states of dropout."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]
