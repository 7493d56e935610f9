"""The `tf.data` pipeline over encoded examples: length buckets, fixed batch shapes, a seeded
order per epoch, resumable mid-epoch.

Batches are bucketed by length (few distinct shapes, little padding), padded to a fixed batch
size with zero-weight rows, and come in an order that is a pure function of (seed, epoch):
`train_dataset(..., start_epoch=e, skip_batches=k)` continues a run exactly where a killed
one stopped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfdialogpt.training.examples import Example
from tfdialogpt.training.readers import DataError


def bucket_lengths_for(max_seq_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Padded lengths: powers of two from `smallest` up to, and always including, max_seq_len."""
    lengths, n = [], smallest
    while n < max_seq_len:
        lengths.append(n)
        n *= 2
    return tuple(lengths) + (max_seq_len,)


def batches_for_lengths(lengths, counts, batch_size: int, bucket_lengths: Sequence[int]) -> int:
    """Batches of an epoch with `counts[i]` examples of length `lengths[i]`: every bucket ends
    with one partial batch, so the order of the examples does not matter."""
    buckets = np.searchsorted(np.asarray(bucket_lengths), np.asarray(lengths, np.int64))
    per_bucket = np.bincount(buckets, weights=np.asarray(counts, np.float64), minlength=len(bucket_lengths) + 1)
    return int(sum(math.ceil(n / batch_size) for n in per_bucket.astype(np.int64).tolist()))


def num_batches(examples: Sequence[Example], batch_size: int, bucket_lengths: Sequence[int]) -> int:
    """Batches per epoch of `examples` (see `batches_for_lengths`)."""
    return batches_for_lengths([ex.length for ex in examples], [1] * len(examples), batch_size, bucket_lengths)


def batch_examples(ds, batch_size: int, bucket_lengths: Sequence[int], pad_token_id: int):
    """Examples `(tokens [n + 1], weights [n])` -> `(inputs, labels, weights)` batches: bucketed
    by length (a length n goes to the smallest bucket >= n), padded to the bucket's length and
    to `batch_size` rows (rows of weight 0), so every batch has one of a few static shapes."""

    def example(tokens, weights):
        return {
            "input_ids": tokens[:-1],
            "attention_mask": tf.ones_like(weights, tf.int32),
            "labels": tokens[1:],
            "weights": weights,
        }

    ds = ds.map(example)
    ds = ds.bucket_by_sequence_length(
        element_length_func=lambda e: tf.shape(e["weights"])[0],
        bucket_boundaries=[length + 1 for length in bucket_lengths],
        bucket_batch_sizes=[batch_size] * (len(bucket_lengths) + 1),
        padding_values={"input_ids": pad_token_id, "attention_mask": 0, "labels": pad_token_id, "weights": 0.0},
        pad_to_bucket_boundary=True,
    )

    def fill(batch):
        missing = batch_size - tf.shape(batch["weights"])[0]
        batch = {k: tf.pad(v, [[0, missing], [0, 0]], constant_values=0) for k, v in batch.items()}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return inputs, batch["labels"], batch["weights"]

    return ds.map(fill)


def finish(ds, cardinality: int, shard_policy=None):
    """Deterministic order, a known length, prefetch; `shard_policy` for `tf.distribute`
    (default DATA: each replica takes its part of every global batch)."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA if shard_policy is None else shard_policy
    )
    ds = ds.apply(tf.data.experimental.assert_cardinality(cardinality))
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


class DialogueBatches:
    """Builds the `tf.data` pipelines over encoded examples.

    Each element is `(inputs, labels, weights)`: inputs `{"input_ids", "attention_mask"}`
    int32 [B, L], labels int32 [B, L], weights float32 [B, L], with L one of
    `bucket_lengths` and B always `batch_size` (a bucket's last batch is filled with rows
    of weight 0, so XLA and `tf.distribute` see fixed shapes).

    Args:
        examples: from `encode_dialogues`.
        batch_size: global batch size (split across replicas under `tf.distribute`).
        pad_token_id: filler for padded inputs (masked out, weight 0).
        seed: the shuffle order of epoch e is a pure function of (seed, e).
        bucket_lengths: padded lengths; default powers of two up to the longest example.
        shuffle: False keeps the examples' order in every epoch.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        pad_token_id: int,
        seed: int = 0,
        bucket_lengths: Sequence[int] | None = None,
        shuffle: bool = True,
    ):
        if not examples:
            raise DataError("no training examples: every dialogue was malformed, too long or had no loss")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.shuffle = shuffle
        longest = max(ex.length for ex in self.examples)
        self.bucket_lengths = tuple(sorted(bucket_lengths or bucket_lengths_for(longest)))
        if self.bucket_lengths[-1] < longest:
            raise ValueError(
                f"the longest example has {longest} tokens, more than the largest bucket {self.bucket_lengths[-1]}"
            )
        self.batches_per_epoch = num_batches(self.examples, batch_size, self.bucket_lengths)

    def _tensors(self):
        tokens = tf.RaggedTensor.from_row_lengths(
            np.concatenate([ex.tokens for ex in self.examples]), [len(ex.tokens) for ex in self.examples]
        )
        weights = tf.RaggedTensor.from_row_lengths(
            np.concatenate([ex.weights for ex in self.examples]), [ex.length for ex in self.examples]
        )
        return tokens, weights

    def _epoch(self, tokens, weights, epoch, skip_batches, shuffle: bool):
        """The batches of one epoch (epoch may be a tensor); `skip_batches` drops its first ones."""
        n = len(self.examples)
        if shuffle:
            seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
            order = tf.argsort(tf.random.stateless_uniform([n], seed=seed))
        else:
            order = tf.range(n)
        ds = tf.data.Dataset.from_tensor_slices(order).map(lambda i: (tokens[i], weights[i]))
        ds = batch_examples(ds, self.batch_size, self.bucket_lengths, self.pad_token_id)
        return ds.skip(tf.cast(skip_batches, tf.int64))

    def train_dataset(
        self, start_epoch: int = 0, end_epoch: int | None = None, skip_batches: int = 0, limit: int | None = None
    ):
        """Epochs `start_epoch .. end_epoch - 1` back to back, shuffled, the first one without
        its first `skip_batches` batches (for resuming a killed run); at most `limit` batches."""
        end_epoch = start_epoch + 1 if end_epoch is None else end_epoch
        if not 0 <= skip_batches < self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}), got {skip_batches}")
        tokens, weights = self._tensors()
        epochs = tf.data.Dataset.range(start_epoch, end_epoch)
        ds = epochs.flat_map(
            lambda e: self._epoch(tokens, weights, e, tf.where(e == start_epoch, skip_batches, 0), self.shuffle)
        )
        count = (end_epoch - start_epoch) * self.batches_per_epoch - skip_batches
        if limit is not None:
            ds, count = ds.take(limit), min(limit, count)
        return finish(ds, count)

    def eval_dataset(self):
        """One pass in file order (bucketed), for `evaluate` and validation."""
        tokens, weights = self._tensors()
        return finish(self._epoch(tokens, weights, 0, 0, shuffle=False), self.batches_per_epoch)
