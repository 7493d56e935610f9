"""`finetune`: the library call behind `tfdialogpt finetune`.

Run settings (`TrainingSettings`) are kept apart from the model's hyperparameters
(`DialoGPTConfig`). The model is trained by plain `compile` / `fit`, with the pieces of this
package: `DialogueBatches` / `PreparedBatches` (data, in memory or streamed from shards;
`sources.py` picks), `LanguageModelLoss` + `Perplexity`, `make_optimizer`
(AdamW, warmup and decay, clipping, accumulation), `ResumableBackup` (resume after a kill).
`check_output_dir` keeps a run from writing over the model it starts from, or over a
directory it did not make.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from tfdialogpt.training import _compat, distribute
from tfdialogpt.training.callbacks import ResumableBackup, read_state
from tfdialogpt.training.losses import LanguageModelLoss, Perplexity
from tfdialogpt.training.optimization import make_optimizer
from tfdialogpt.training.settings import DEFAULT_MAX_SEQ_LEN, TrainingSettings
from tfdialogpt.training.sources import (
    STREAMED_DIR,
    check_max_seq_len,
    make_batches,
    open_source,
    prepare_files,
    streamed_files_dir,
)

logger = logging.getLogger("tfdialogpt.training")

REPORT_NAME = "training_report.json"


@dataclasses.dataclass
class FinetuneResult:
    """What `finetune` returns."""

    model: Any  # the trained DialoGPT
    tokenizer: Any
    history: dict[str, list[float]]  # per-epoch logs: loss, perplexity, val_loss, ...
    train_issues: list  # malformed training lines (DataIssue), reported and skipped
    valid_issues: list
    skipped: list[tuple[str, str]]  # (source, reason): dialogues that yield no example
    resumed_from: dict | None  # the backup state the run continued from, if any
    output_dir: str | None


class OutputDirError(ValueError):
    """An `output_dir` that `finetune` will not write to; raised before any data, model or
    file is read or written.

    It is a file (or lies under one); or, unless `overwrite=True`: it is the directory of the
    model being fine-tuned, or a non-empty directory that holds no unfinished run to resume.
    """


# ---- pieces ----------------------------------------------------------------------------------------


def _model_directory(model) -> Path | None:
    """The local directory `model` is loaded from (`"default"`: the embedded one), else None."""
    from tfdialogpt.config import DEFAULT_MODEL_DIR

    if not isinstance(model, (str, Path)):
        return None
    if str(model) == "default":
        return DEFAULT_MODEL_DIR
    path = Path(os.path.expanduser(str(model)))
    return path if path.is_dir() else None


def _has_backup(backup_dir: Path) -> bool:
    try:
        return read_state(backup_dir) is not None
    except (OSError, ValueError, KeyError, TypeError):  # an unreadable state resumes nothing
        return False


def check_output_dir(output_dir, model=None, backup_dir=None, overwrite: bool = False) -> None:
    """Checks that `finetune` may write its model, tokenizer and report to `output_dir`.

    Allowed: a directory that does not exist yet (it is made), an empty one, or the output
    of an unfinished run (killed before it ended) whose backup (`backup_dir`, default
    `<output_dir>/backup`) holds a training state: `finetune` resumes it. `overwrite=True`
    also allows the directory of `model` itself and any other directory; files of the names
    `finetune` writes are then replaced and the others left.

    Raises:
        OutputDirError: `output_dir` is a file or lies under one; or, without `overwrite`,
            it is `model`'s directory (same real path) or a non-empty directory holding no
            training state to resume.
    """
    if output_dir is None:
        return
    output = Path(output_dir)  # as `finetune` writes it (the model path is expanded as it is loaded)
    existing = output
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == output else f"lies under {existing}, which is a file"
        raise OutputDirError(f"output directory {output} {where}; choose a directory")
    if not output.is_dir() or overwrite:
        return
    model_dir = _model_directory(model)
    if model_dir is not None and os.path.realpath(model_dir) == os.path.realpath(output):
        raise OutputDirError(
            f"output directory {output} is the directory of the model being fine-tuned; the trained "
            "model would replace it: choose another output directory, or pass overwrite=True (--overwrite)"
        )
    if not any(output.iterdir()):
        return
    if _has_backup(Path(backup_dir) if backup_dir else output / "backup"):
        return
    if all(entry.name.startswith(STREAMED_DIR) and entry.is_dir() for entry in output.iterdir()):
        return  # killed while its files were prepared for streaming (`stream_files`): prepare resumes
    raise OutputDirError(
        f"output directory {output} is not empty and holds no unfinished run of finetune to resume "
        "(no backup/training_state.json); choose a new or empty directory, or pass overwrite=True "
        "(--overwrite) to write into it"
    )


def _backup_dir(settings: TrainingSettings, output_dir) -> str | None:
    """Where this process backs up: `settings.backup_dir` or `<output>/backup`, per worker."""
    backup_dir = settings.backup_dir or (str(Path(output_dir) / "backup") if output_dir else None)
    if backup_dir and not distribute.is_chief():  # every worker backs up and restores its own (identical) state
        backup_dir = f"{backup_dir}-{distribute.task_id()}"
    return backup_dir


def resolve_precision(precision: str) -> str:
    """`auto` -> `mixed_float16` with a GPU, else `mixed_bfloat16`; others unchanged."""
    if precision == "auto":
        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    return precision


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Builds models created inside under `precision` (Keras layers read the policy when made)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def load_model_and_tokenizer(model, tokenizer=None, precision: str = "float32"):
    """(DialoGPT, Tokenizer) from a name (`default`, a directory, a hub id) or instances."""
    from tfdialogpt.config import DEFAULT_MODEL_DIR
    from tfdialogpt.model import DialoGPT
    from tfdialogpt.tokenizer import Tokenizer

    if isinstance(model, (str, Path)):
        name = DEFAULT_MODEL_DIR if str(model) == "default" else model
        if tokenizer is None:
            tokenizer = Tokenizer.from_pretrained(name)
        with dtype_policy(precision):
            model = DialoGPT.from_pretrained(model)
    else:
        wanted = resolve_precision(precision)
        if model.dtype_policy.name != wanted:
            raise ValueError(
                f"the model was built with dtype policy {model.dtype_policy.name!r} but precision "
                f"{precision!r} asks for {wanted!r}; build it under `dtype_policy({precision!r})` "
                f"or pass its name instead"
            )
    if tokenizer is None:
        raise ValueError("pass `tokenizer=` along with a model instance")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size}")
    return model, tokenizer


def resolve_max_seq_len(requested: int | None, model) -> int:
    """The longest input: `requested`, checked against the model's positions; None = min(128, positions)."""
    positions = model.config.max_positions
    if requested is None:
        return min(DEFAULT_MAX_SEQ_LEN, positions)
    if requested > positions:
        raise ValueError(f"max_seq_len={requested} exceeds the model's {positions} positions")
    return requested


def _resolve_jit(setting, strategy) -> bool:
    if setting != "auto":
        return bool(setting)
    # XLA fuses the train step well on one device; with several replicas Keras does not use it.
    return strategy.num_replicas_in_sync == 1


def compile_for_training(model, settings: TrainingSettings, total_updates: int, jit_compile: bool) -> None:
    """`model.compile` with this package's optimizer, loss and perplexity metric."""
    if getattr(model, "weight_quantization", None) is not None:
        raise ValueError(
            f"model {model.name!r} holds {model.weight_quantization} weights and cannot be trained; "
            "fine-tune the float model and quantize the result"
        )
    warmup = settings.warmup_steps
    if warmup is None:
        warmup = int(0.1 * total_updates)
    optimizer = make_optimizer(
        settings.learning_rate,
        total_updates,
        warmup_steps=warmup,
        decay=settings.decay,
        weight_decay=settings.weight_decay,
        clip_norm=settings.clip_norm,
        accumulation_steps=settings.accumulation_steps,
    )
    # `weighted_metrics`: Keras passes the token weights only to these.
    model.compile(
        optimizer=optimizer, loss=LanguageModelLoss(), weighted_metrics=[Perplexity()], jit_compile=jit_compile
    )


# ---- finetune ------------------------------------------------------------------------------------


def finetune(
    model="default",
    train=None,
    valid=None,
    output_dir=None,
    *,
    tokenizer=None,
    settings: TrainingSettings | None = None,
    callbacks: Sequence = (),
    distribution=None,
    overwrite: bool = False,
    **overrides,
) -> FinetuneResult:
    """Fine-tunes (or trains from scratch) a DialoGPT on dialogues and saves it in HF layout.

    Args:
        model: `"default"`, a checkpoint directory, a hub id, or a `DialoGPT` instance (then
            also pass `tokenizer`).
        train: a directory written by `prepare` (streamed from its shards), a .tsv / .jsonl /
            .yml file (or a directory of them), or a list of `Dialogue`s or turn lists (these
            are read whole and encoded in memory).
        valid: the same, for validation loss / perplexity after every epoch.
        output_dir: where the trained model, its tokenizer, `training_report.json`,
            backups and logs go. None: keep the model in memory only.
        settings: a `TrainingSettings`; `**overrides` replace some of its fields
            (`finetune(..., epochs=5, batch_size=16)`).
        callbacks: more Keras callbacks.
        distribution: a `tf.distribute.Strategy`; default: made from `settings.strategy`.
        overwrite: write into `output_dir` even if it is `model`'s own directory or a
            non-empty directory that is not an unfinished run (see `check_output_dir`).
    Returns:
        A `FinetuneResult` (model, tokenizer, history, data reports).
    Raises:
        OutputDirError: `output_dir` refused (checked first: nothing is read or written).
        DataError: no usable example, or malformed lines with `strict=True`.
        TokenizerMismatchError: prepared data made with another tokenizer than the model's.

    A run whose `output_dir` (or `backup_dir`) holds a backup from a killed run continues
    from it, batch for batch, and ends with the weights an uninterrupted run would have.
    `settings.seed` seeds Python, NumPy and TensorFlow (`keras.utils.set_random_seed`).

    Under `tf.distribute`, Keras averages the replicas' weighted-mean losses and clips each
    replica's gradient by its own norm; with one replica the loss is exactly the batch's
    token-weighted mean.

    Example:
        >>> result = finetune("default", "chats.tsv", output_dir="out", epochs=2)  # doctest: +SKIP
        >>> result.history["loss"]
    """
    settings = (settings or TrainingSettings()).replace(**overrides)
    if train is None:
        raise ValueError("finetune needs `train` data")
    backup_dir = _backup_dir(settings, output_dir)
    check_output_dir(output_dir, model, backup_dir, overwrite=overwrite)
    strategy = distribution or distribute.make_strategy(settings.strategy)
    keras.utils.set_random_seed(settings.seed)

    if settings.stream_files and not output_dir:
        raise ValueError("stream_files=True prepares the files under output_dir: pass one")
    train_source = open_source(train, settings.strict, "train", settings.stream_files)
    valid_source = open_source(valid, settings.strict, "valid", settings.stream_files) if valid is not None else None
    with strategy.scope():
        model, tokenizer = load_model_and_tokenizer(model, tokenizer, settings.precision)
    wanted_seq_len = resolve_max_seq_len(settings.max_seq_len, model)
    streamed_dir = streamed_files_dir(output_dir)
    train_source = prepare_files(train_source, streamed_dir, tokenizer, wanted_seq_len, settings.strict)
    valid_source = prepare_files(valid_source, streamed_dir, tokenizer, wanted_seq_len, settings.strict)
    for source in (train_source, valid_source):
        if source is not None:
            check_max_seq_len(source, settings.max_seq_len, model.config.max_positions)
    max_seq_len = train_source.max_seq_len or wanted_seq_len
    batches = make_batches(train_source, tokenizer, max_seq_len, settings, _input_pipelines(train_source, strategy))
    valid_data = None
    if valid_source is not None and (valid_source.dialogues or valid_source.manifest):
        valid_data = make_batches(valid_source, tokenizer, max_seq_len, settings).eval_dataset()

    total_batches = batches.batches_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total_batches = min(total_batches, settings.max_steps * settings.accumulation_steps)
    total_updates = max(1, math.ceil(total_batches / settings.accumulation_steps))
    with strategy.scope():
        compile_for_training(model, settings, total_updates, _resolve_jit(settings.jit_compile, strategy))

    chief = distribute.is_chief()
    all_callbacks = list(callbacks)
    backup = None
    if backup_dir:
        backup = ResumableBackup(backup_dir, save_freq=settings.checkpoint_every or "epoch", delete_checkpoint=False)
        all_callbacks.append(backup)
    if settings.tensorboard and output_dir and chief:
        if importlib.util.find_spec("tensorboard") is None:
            raise ImportError("TensorBoard logs need the `tensorboard` package: pip install tensorboard")
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(Path(output_dir) / "logs")))
    if settings.early_stopping_patience is not None and valid_data is not None:
        all_callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=settings.early_stopping_patience, restore_best_weights=True
            )
        )

    resumed = backup.state() if backup else None
    start_epoch, skip = (resumed["epoch"], resumed["batch"]) if resumed else (0, 0)
    if resumed:
        logger.warning(
            "resuming from %s: epoch %d, %d of %d batches done",
            backup_dir,
            start_epoch + 1,
            skip,
            batches.batches_per_epoch,
        )
    history: dict[str, list[float]] = {}
    fit_args = dict(validation_data=valid_data, callbacks=all_callbacks, verbose=settings.verbose, shuffle=False)
    _compat.build_before_fit(model, strategy, batches)
    runs = fit_runs(batches.batches_per_epoch, settings.epochs, start_epoch, skip, total_batches)
    with strategy.scope(), _compat.multi_worker_logs(strategy):
        _fit(model, batches, strategy, runs, backup, history, fit_args)
    if resumed and not runs:
        backup.restore(model)  # killed after its last batch, before saving: nothing left to train

    if output_dir and chief:
        model.save_pretrained(output_dir, tokenizer=tokenizer)
        report = {
            "settings": dataclasses.asdict(settings),
            "history": history,
            "train_data": train_source.prepared or "in memory",
            "input_pipelines": getattr(batches, "num_pipelines", 1),  # one per worker: each reads its own shards
            "train_examples": train_source.num_examples,
            "train_tokens_with_loss": train_source.num_tokens,
            "malformed_lines": {
                "train": [str(i) for i in train_source.issues],
                "valid": [str(i) for i in valid_source.issues] if valid_source else [],
            },
            "skipped_dialogues": [f"{src}: {why}" for src, why in train_source.skipped],
            "resumed_from": resumed and {k: resumed[k] for k in ("epoch", "batch")},
        }
        (Path(output_dir) / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if backup and backup_dir and Path(backup_dir).exists():
        shutil.rmtree(backup_dir, ignore_errors=True)
    if settings.stream_files and streamed_dir.exists():
        shutil.rmtree(streamed_dir, ignore_errors=True)
    return FinetuneResult(
        model,
        tokenizer,
        history,
        train_source.issues,
        valid_source.issues if valid_source else [],
        train_source.skipped,
        resumed,
        str(output_dir) if output_dir else None,
    )


def _input_pipelines(source, strategy) -> int:
    """Input pipelines for `source`: one per worker for prepared data under
    `MultiWorkerMirroredStrategy` (each reads its own shards), else one (tf.data's DATA
    sharding then gives each replica its part of every global batch)."""
    if source.manifest is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    workers = max(1, distribute.num_workers())
    if strategy.num_replicas_in_sync != workers:
        raise ValueError(
            f"prepared data under multi_worker needs one device per worker; found {strategy.num_replicas_in_sync} "
            f"replicas on {workers} workers"
        )
    return workers


def fit_runs(batches_per_epoch: int, epochs: int, start_epoch: int, skip: int, total_batches: int) -> list:
    """The `fit` calls that train batches `start_epoch * batches_per_epoch + skip` up to
    `total_batches` of the run: `(first epoch, end epoch, batches skipped, batches per epoch)`.

    Keras epochs have one length per `fit`, so an epoch entered mid-way (resumed) or left
    mid-way (`max_steps`) is a `fit` of its own.

    Example:
        >>> fit_runs(10, 3, 0, 4, 25)  # resumed at batch 4, stopped after batch 25
        [(0, 1, 4, 6), (1, 2, 0, 10), (2, 3, 0, 5)]
    """
    runs, epoch, done = [], start_epoch, start_epoch * batches_per_epoch + skip
    while done < total_batches and epoch < epochs:
        first = done - epoch * batches_per_epoch  # batches of `epoch` already done
        if first == 0 and total_batches - done >= batches_per_epoch:
            full = min(epochs - epoch, (total_batches - done) // batches_per_epoch)
            runs.append((epoch, epoch + full, 0, batches_per_epoch))
            epoch, done = epoch + full, done + full * batches_per_epoch
            continue
        steps = min(batches_per_epoch, total_batches - epoch * batches_per_epoch) - first
        runs.append((epoch, epoch + 1, first, steps))
        epoch, done = epoch + 1, (epoch + 1) * batches_per_epoch
    return runs


def _fit(model, batches, strategy, runs, backup, history, fit_args) -> None:
    for first, end, skip, steps in runs:
        if backup is not None:
            backup.batch_offset = skip  # batches of the first epoch done before this fit
        partial = skip or steps < batches.batches_per_epoch
        data = batches.train_dataset(first, end, skip, steps if partial else None)
        if callable(data):  # one input pipeline per worker
            data = strategy.distribute_datasets_from_function(data)
        _merge(history, model.fit(data, steps_per_epoch=steps, initial_epoch=first, epochs=end, **fit_args))
        if model.stop_training:  # early stopping
            return


def _merge(history: dict, fit_history) -> None:
    for key, values in fit_history.history.items():
        history.setdefault(key, []).extend(float(v) for v in values)
