"""Log-probability of replies after contexts: the `score` used by MMI reranking and serving.

A row is `context + reply`, right-padded; `target_mask` marks the reply tokens whose
log-probabilities are summed. The graph part (`score_tensors`) is stock TF ops only, so the
serving export wraps it as its `score` signature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfdialogpt import padding


def build_batch(contexts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]], pad_id: int = 0):
    """Right-padded (input_ids, attention_mask, target_mask), each int32 [B, T]
    (`tfdialogpt.padding.score_batch`, which the serving client shares)."""
    return padding.score_batch(contexts, replies, pad_id)


def score_tensors(model, input_ids, attention_mask, target_mask) -> tf.Tensor:
    """Sum over target tokens of log P(token | everything before it): float32 [B]."""
    logits = model(input_ids, attention_mask=attention_mask)[:, :-1]  # predicts tokens 1..T-1
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    next_ids = tf.cast(input_ids[:, 1:], tf.int32)
    picked = tf.gather(log_probs, next_ids, axis=-1, batch_dims=2)  # [B, T-1]
    return tf.reduce_sum(picked * tf.cast(target_mask[:, 1:], tf.float32), axis=-1)


def score(model, contexts, replies, pad_id: int = 0) -> np.ndarray:
    """log P(reply | context) for each pair, float32 [B].

    Example:
        >>> score(model, [[50256]], [tokenizer.encode("Hi") + [50256]])  # doctest: +SKIP
    """
    ids, mask, target = build_batch(contexts, replies, pad_id)
    return score_tensors(model, tf.constant(ids), tf.constant(mask), tf.constant(target)).numpy()
