"""`TrainingSettings`: how `finetune` trains, each setting's name, default and range written
once here (the CLI's flags take their defaults from it). No TensorFlow."""

from __future__ import annotations

import dataclasses
from typing import Any

PRECISIONS = ("float32", "auto", "mixed_bfloat16", "mixed_float16")
DEFAULT_MAX_SEQ_LEN = 128  # DialoGPT's prepro.py default


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How to train (not what the model is: that is `DialoGPTConfig`)."""

    epochs: int = 3  # passes over the training data
    batch_size: int = 8  # dialogues per batch (global: split across replicas)
    learning_rate: float = 5e-5  # peak AdamW learning rate
    warmup_steps: int | None = None  # optimizer updates of linear warmup; None = 10% of the run
    decay: str = "linear"  # after warmup: linear | cosine | noam | constant
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on LayerNorm and biases)
    clip_norm: float | None = 1.0  # clip the global gradient norm; None = no clipping
    accumulation_steps: int = 1  # batches whose gradients are averaged per update
    max_seq_len: int | None = None  # longest input, older turns dropped to fit; None = min(128, positions)
    max_steps: int | None = None  # stop after this many optimizer updates (the schedule ends there); None = all epochs
    # Examples a prepared (streamed) epoch is shuffled over; 0 = no shuffling (file order).
    # In-memory data is permuted whole whenever it is > 0.
    shuffle_buffer: int = 10_000
    # Plain .tsv/.jsonl/.yml files are prepared (chunk by chunk, one process, resumable) under
    # `<output>/prepared` and streamed, not read whole; the copy is removed at the end.
    stream_files: bool = False
    precision: str = "float32"  # float32 | auto | mixed_bfloat16 | mixed_float16
    seed: int = 0  # data order and dropout; same seed, same run
    checkpoint_every: int | None = None  # back up every N batches (and every epoch); None = epochs only
    backup_dir: str | None = None  # where backups go; default `<output>/backup`
    tensorboard: bool = False  # write TensorBoard logs to `<output>/logs`
    early_stopping_patience: int | None = None  # epochs without a better val_loss before stopping
    strict: bool = False  # raise on malformed data lines instead of reporting and skipping them
    jit_compile: bool | str = "auto"  # XLA for the train step; auto = on for one device
    strategy: str = "auto"  # auto | default | mirrored | multi_worker (see distribute.make_strategy)
    bucket_lengths: tuple[int, ...] | None = None  # padded lengths; None = powers of two
    verbose: int | str = "auto"  # Keras progress bar (0 = silent)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "accumulation_steps", "max_seq_len", "max_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        if isinstance(self.shuffle_buffer, bool) or not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 0:
            raise ValueError(f"`shuffle_buffer` must be an integer >= 0, got {self.shuffle_buffer!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"`precision` must be one of {PRECISIONS}, got {self.precision!r}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"`checkpoint_every` must be >= 1, got {self.checkpoint_every}")

    def replace(self, **changes: Any) -> TrainingSettings:
        return dataclasses.replace(self, **changes)
