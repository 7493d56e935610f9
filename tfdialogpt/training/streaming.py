"""Prepared shards streamed through `tf.data`, with memory that does not grow with the corpus.

Per epoch: the shards (this worker's, under `multi_worker`) in a seeded order, read
interleaved, parsed in parallel, shuffled in a bounded buffer, bucketed by length into the
same fixed shapes as `DialogueBatches` (`pipeline.batch_examples`), prefetched. Nothing per
example is held in Python: the number of batches an epoch has comes from the manifest's
per-shard `length_counts`, so it is known before any record is read.

The order of epoch e is a pure function of (seed, e) and TensorFlow's global seed (which
`finetune` sets from the same seed): a killed run resumes by skipping the batches of that
epoch it had done.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfdialogpt.training.pipeline import batch_examples, batches_for_lengths, bucket_lengths_for, finish
from tfdialogpt.training.settings import TrainingSettings
from tfdialogpt.training.shards import (
    PreparedDataError,
    check_tokenizer,
    length_counts,
    load_manifest,
    parse_record,
    shard_paths,
)

DEFAULT_SHUFFLE_BUFFER = TrainingSettings.shuffle_buffer
CYCLE_LENGTH = 4  # shards read at once when shuffling


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 31-bit seed for one random stream (0: shard order, 1: shuffle buffer) of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0] >> 1)


class PreparedBatches:
    """`DialogueBatches`' interface over a prepared directory, streamed.

    Elements are `(inputs, labels, weights)` as `DialogueBatches` makes them: shapes
    [B, L] with L one of `bucket_lengths` and B always the batch size.

    Args:
        directory: the `--output` of `tfdialogpt prepare`.
        tokenizer: the training `Tokenizer`; its fingerprint must equal the manifest's
            (None skips the check).
        batch_size: global batch size.
        pad_token_id: filler for padded inputs (weight 0).
        seed: with the epoch, fixes the order of the shards and of the shuffle buffer.
        bucket_lengths: padded lengths; default powers of two up to the longest example.
        shuffle_buffer: examples shuffled over; 0 reads the shards in order, one at a time
            (the order `DialogueBatches(..., shuffle=False)` has for the same examples).
        num_pipelines: input pipelines (one per worker): pipeline p reads shards p,
            p + num_pipelines, ... with batches of batch_size / num_pipelines rows. Every
            pipeline gives `batches_per_epoch` batches an epoch: one whose shards hold fewer
            ends its epoch with batches of weight 0.

    Raises:
        TokenizerMismatchError: the data was made with another tokenizer.
        PreparedDataError: no finished prepare run, a shard missing or changed, or fewer
            shards than pipelines.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        tokenizer,
        batch_size: int,
        pad_token_id: int,
        seed: int = 0,
        bucket_lengths: Sequence[int] | None = None,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        num_pipelines: int = 1,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.directory = str(directory)
        self.manifest = load_manifest(directory)
        if tokenizer is not None:
            check_tokenizer(self.manifest, tokenizer, directory)
        self.paths = shard_paths(directory, self.manifest)
        if num_pipelines > len(self.paths):
            raise PreparedDataError(
                f"{directory} has {len(self.paths)} shard(s), fewer than the {num_pipelines} workers that read "
                "disjoint shards: prepare it again with a smaller --shard-size"
            )
        if batch_size % num_pipelines:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {num_pipelines} workers")
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.num_pipelines = num_pipelines
        lengths, _ = length_counts(self.manifest)
        longest = lengths[-1]
        self.bucket_lengths = tuple(sorted(bucket_lengths or bucket_lengths_for(longest)))
        if self.bucket_lengths[-1] < longest:
            raise ValueError(
                f"the longest example has {longest} tokens, more than the largest bucket {self.bucket_lengths[-1]}"
            )
        local = batch_size // num_pipelines
        self.pipeline_batches = [
            batches_for_lengths(*length_counts(self.manifest, self._shards(p)), local, self.bucket_lengths)
            for p in range(num_pipelines)
        ]
        self.batches_per_epoch = max(self.pipeline_batches)
        self.eval_batches = batches_for_lengths(*length_counts(self.manifest), batch_size, self.bucket_lengths)
        totals = self.manifest["totals"]
        self.num_examples, self.num_tokens = totals["examples"], totals["loss_tokens"]

    def _shards(self, pipeline: int) -> list[int]:
        return list(range(pipeline, len(self.paths), self.num_pipelines))

    def _examples(self, paths: list[str], epoch: int, shuffle: bool):
        files = tf.data.Dataset.from_tensor_slices(paths)
        if not shuffle:
            records = files.flat_map(tf.data.TFRecordDataset)  # in order, one shard after another
        else:
            files = files.shuffle(len(paths), seed=epoch_seed(self.seed, epoch, 0))
            records = files.interleave(
                tf.data.TFRecordDataset,
                cycle_length=min(CYCLE_LENGTH, len(paths)),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        ds = records.map(parse_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if shuffle:
            ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed(self.seed, epoch, 1))
        return ds

    def _epoch(self, pipeline: int, epoch: int, skip_batches: int):
        """Pipeline `pipeline`'s `batches_per_epoch` batches of `epoch`, without the first `skip_batches`."""
        local = self.batch_size // self.num_pipelines
        paths = [self.paths[i] for i in self._shards(pipeline)]
        ds = batch_examples(
            self._examples(paths, epoch, self.shuffle_buffer > 0), local, self.bucket_lengths, self.pad_token_id
        )
        missing = self.batches_per_epoch - self.pipeline_batches[pipeline]
        if missing:
            ds = ds.concatenate(self._empty_batches(local, missing))
        return ds.skip(skip_batches)

    def _empty_batches(self, rows: int, count: int):
        """`count` batches of weight 0 (no loss, no gradient), of the smallest bucket's shape."""
        shape = [rows, self.bucket_lengths[0]]
        ids = tf.fill(shape, tf.constant(self.pad_token_id, tf.int32))
        batch = ({"input_ids": ids, "attention_mask": tf.zeros(shape, tf.int32)}, ids, tf.zeros(shape, tf.float32))
        return tf.data.Dataset.from_tensors(batch).repeat(count)

    def _pipeline(self, pipeline, start_epoch, end_epoch, skip_batches, limit, shard_policy=None):
        end_epoch = start_epoch + 1 if end_epoch is None else end_epoch
        if not 0 <= skip_batches < self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}), got {skip_batches}")
        ds = self._epoch(pipeline, start_epoch, skip_batches)
        for epoch in range(start_epoch + 1, end_epoch):
            ds = ds.concatenate(self._epoch(pipeline, epoch, 0))
        count = (end_epoch - start_epoch) * self.batches_per_epoch - skip_batches
        if limit is not None:
            ds, count = ds.take(limit), min(limit, count)
        return finish(ds, count, shard_policy)

    def train_dataset(
        self, start_epoch: int = 0, end_epoch: int | None = None, skip_batches: int = 0, limit: int | None = None
    ):
        """Epochs `start_epoch .. end_epoch - 1` back to back, the first one without its first
        `skip_batches` batches, at most `limit` batches: a `tf.data.Dataset`, or with several
        pipelines a function of a `tf.distribute.InputContext` for
        `strategy.distribute_datasets_from_function` (see `distribute`)."""
        if self.num_pipelines == 1:
            return self._pipeline(0, start_epoch, end_epoch, skip_batches, limit)
        self._pipeline(0, start_epoch, end_epoch, skip_batches, limit)  # checks the arguments here

        def dataset_fn(context: tf.distribute.InputContext):
            if context.num_input_pipelines != self.num_pipelines:
                raise ValueError(
                    f"{context.num_input_pipelines} input pipelines, but the shards were split for {self.num_pipelines}"
                )
            policy = tf.data.experimental.AutoShardPolicy.OFF  # each pipeline already reads its own shards
            return self._pipeline(context.input_pipeline_id, start_epoch, end_epoch, skip_batches, limit, policy)

        return dataset_fn

    def eval_dataset(self):
        """Every shard once, in order, with the global batch size (validation, building)."""
        ds = batch_examples(
            self._examples(self.paths, 0, False), self.batch_size, self.bucket_lengths, self.pad_token_id
        )
        return finish(ds, self.eval_batches)
