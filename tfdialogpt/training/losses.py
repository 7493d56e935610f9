"""The masked LM loss with per-token weights, and a perplexity metric over the same weights.

Labels are already shifted by the data pipeline (label t is token t + 1), so both work on
logits [B, T, V] and labels [B, T] position by position. A weight of 0 (padding, context
turns, zero-weight turns) removes a token; the loss of a batch is the weighted mean
sum(w * ce) / sum(w), which for 0/1 weights is exactly the mean over trained tokens that HF
transformers computes with labels of -100.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def token_cross_entropy(labels, logits) -> tf.Tensor:
    """Cross-entropy per position [B, T] (float32) of integer labels under float logits."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


@keras.saving.register_keras_serializable(package="tfdialogpt")
class LanguageModelLoss(keras.losses.Loss):
    """Token cross-entropy averaged with the per-token weights given as `sample_weight`.

    Example:
        >>> model.compile(optimizer="adamw", loss=LanguageModelLoss(), weighted_metrics=[Perplexity()])
        >>> model.fit(dataset)  # elements: (inputs, labels [B, T], weights [B, T])
    """

    def __init__(self, name: str = "lm_loss", reduction: str = "mean_with_sample_weight", **kwargs):
        # float32 whatever the global policy: the loss of a mixed-precision model is float32.
        super().__init__(name=name, reduction=reduction, dtype="float32", **kwargs)

    def call(self, y_true, y_pred):
        return token_cross_entropy(y_true, y_pred)


@keras.saving.register_keras_serializable(package="tfdialogpt")
class Perplexity(keras.metrics.Metric):
    """exp(sum(w * ce) / sum(w)) over every token seen since the last reset.

    Unlike the mean of per-batch losses, this is exact across batches of different sizes and
    weights, and across replicas (both sums are summed). Pass it to `compile` as a
    *weighted* metric: Keras gives `sample_weight` only to `weighted_metrics`.
    """

    def __init__(self, name: str = "perplexity", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        self.weighted_loss = self.add_variable(shape=(), initializer="zeros", name="weighted_loss", dtype="float32")
        self.weight = self.add_variable(shape=(), initializer="zeros", name="weight", dtype="float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        ce = token_cross_entropy(y_true, y_pred)
        weights = tf.ones_like(ce) if sample_weight is None else tf.cast(sample_weight, tf.float32)
        self.weighted_loss.assign_add(tf.reduce_sum(ce * weights))
        self.weight.assign_add(tf.reduce_sum(weights))

    def result(self):
        return tf.exp(tf.math.divide_no_nan(self.weighted_loss, self.weight))

    def mean_loss(self):
        """The token-weighted mean loss behind the perplexity."""
        return tf.math.divide_no_nan(self.weighted_loss, self.weight)
