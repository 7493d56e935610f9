"""Logits processors: small pure functions of next-token logits [B, V], with HF's semantics.

Each takes the scores and, where it needs them, the token history, and returns new scores;
none holds state, so the decode loop composes them in HF's order and the tests feed them
hand-made logits. Every control (temperature, top_k, top_p, penalty, min_new_tokens) may be a
Python number, a scalar tensor, or a [B] tensor with one value per row (what the served
signatures take, so requests with different settings share a run): inside a compiled graph
they are runtime inputs, so one graph serves every setting. Only stock TF ops; all run with
and without XLA.

HF order, as in `transformers.GenerationMixin._get_logits_processor`: repetition penalty,
no-repeat-ngram, min-new-tokens (these shape the scores for greedy and beam search too), then,
only when sampling, temperature, top-k, top-p.

One deliberate difference: the history these see is the *real* tokens only (the attention
mask says which). HF also counts left-padding ids as history, so in HF a padded row can be
penalised or banned differently from the same row decoded alone; here it never is.
"""

from __future__ import annotations

import tensorflow as tf

NEG_INF = float("-inf")


def per_row(value, dtype) -> tf.Tensor:
    """A control as a column that broadcasts over [B, V] scores: [1, 1] for a scalar, [B, 1]
    for one value per row."""
    return tf.reshape(tf.cast(value, dtype), [-1, 1])


def _presence(token_ids: tf.Tensor, token_mask: tf.Tensor, vocab_size: int) -> tf.Tensor:
    """[B, V] bool: which vocabulary ids occur among the real (mask 1) tokens of each row."""
    token_ids = tf.cast(token_ids, tf.int32)
    mask = tf.cast(token_mask, tf.int32)
    B, S = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
    # Masked-out positions point at id 0 with an update of 0: a no-op under `max`.
    ids = tf.where(mask > 0, token_ids, 0)
    rows = tf.broadcast_to(tf.range(B)[:, None], [B, S])
    indices = tf.reshape(tf.stack([rows, ids], axis=-1), [-1, 2])
    counts = tf.tensor_scatter_nd_max(tf.zeros([B, vocab_size], tf.int32), indices, tf.reshape(mask, [-1]))
    return counts > 0


def repetition_penalty(scores, token_ids, token_mask, penalty):
    """CTRL's repetition penalty (HF `RepetitionPenaltyLogitsProcessor`).

    A token already in the row's history has its score divided by `penalty` when positive and
    multiplied by it when negative; `penalty` 1.0 leaves the scores exactly unchanged.

    Args:
        scores: [B, V] float32 logits (or log-probabilities, in beam search).
        token_ids: [B, S] int history (prompt and tokens generated so far).
        token_mask: [B, S] 1 where `token_ids` holds a real token.
        penalty: float > 0, a scalar or one per row [B].
    Returns:
        [B, V] scores.
    """
    penalty = per_row(penalty, scores.dtype)
    seen = _presence(token_ids, token_mask, scores.shape[-1] or tf.shape(scores)[-1])
    penalized = tf.where(scores < 0, scores * penalty, scores / penalty)
    return tf.where(seen, penalized, scores)


def no_repeat_ngram_mask(token_ids, token_mask, ngram_size: int, vocab_size: int) -> tf.Tensor:
    """[B, V] bool: tokens that would complete an n-gram already in the history.

    HF's `NoRepeatNGramLogitsProcessor`: with the last `ngram_size - 1` tokens as a prefix,
    every token that followed that prefix earlier in the row is banned. The real tokens of a
    row must be contiguous (left padding, then generated tokens), as the decode loop keeps them.

    Args:
        token_ids: [B, S] int history; token_mask: [B, S], 1 for real tokens, which end at the
            same column in every row (the current decode position).
        ngram_size: a Python int >= 1 (it shapes the graph).
    """
    n = int(ngram_size)
    token_ids = tf.cast(token_ids, tf.int32)
    real = tf.cast(token_mask, tf.bool)
    S = tf.shape(token_ids)[1]
    # The current position is one past the last real column (the same for every row).
    positions = tf.range(S)[None, :]
    end = tf.reduce_max(tf.where(real, positions + 1, 0))
    # The prefix to look up: the last n - 1 tokens, which must all be real.
    prefix_cols = end - (n - 1) + tf.range(n - 1)
    prefix = tf.gather(token_ids, tf.maximum(prefix_cols, 0), axis=1)  # [B, n-1]
    prefix_real = tf.reduce_all(
        tf.logical_and(tf.gather(real, tf.maximum(prefix_cols, 0), axis=1), prefix_cols[None, :] >= 0),
        axis=1,
        keepdims=True,
    )
    # Window j covers columns j .. j + n - 1; it matches when its first n - 1 tokens equal the
    # prefix and all n are real. Its last token is then banned.
    W = S - n + 1
    match = prefix_real
    for i in range(n):
        match = tf.logical_and(match, real[:, i : i + W])
    for i in range(n - 1):
        match = tf.logical_and(match, tf.equal(token_ids[:, i : i + W], prefix[:, i : i + 1]))
    banned_ids = token_ids[:, n - 1 : n - 1 + W]
    return _presence(banned_ids, tf.cast(match, tf.int32), vocab_size)


def no_repeat_ngram_mask_per_row(token_ids, token_mask, ngram_sizes, max_size: int, vocab_size: int) -> tf.Tensor:
    """`no_repeat_ngram_mask` with a size per row: [B, V] bool, row b banning the tokens that
    would complete an n-gram of its own size `ngram_sizes[b]` (0: nothing banned).

    Row b's ban equals `no_repeat_ngram_mask(..., ngram_sizes[b], ...)` on that row. The sizes are
    a run-time input (what the served signatures take, so requests with different sizes share a
    run); `max_size` bounds them and shapes the graph: [B, S, max_size - 1] comparisons a step.

    Args:
        token_ids: [B, S] int history; token_mask: [B, S], 1 for real tokens, which end at the
            same column in every row (the current decode position).
        ngram_sizes: int [B] (or a scalar), each in [0, max_size].
        max_size: a Python int >= 1.
    """
    token_ids = tf.cast(token_ids, tf.int32)
    real = tf.cast(token_mask, tf.bool)
    n = tf.reshape(tf.cast(ngram_sizes, tf.int32), [-1, 1, 1])  # [B, 1, 1] or [1, 1, 1]
    S = tf.shape(token_ids)[1]
    end = tf.reduce_max(tf.where(real, tf.range(S)[None, :] + 1, 0))  # one past the last real column
    # The token at column j is banned when, for every k = 1 .. n - 1, the k-th tokens before j
    # and before `end` are real and equal (the last n - 1 tokens occurred just before j).
    ks = tf.range(1, int(max_size))  # [K]
    before = tf.range(S)[:, None] - ks[None, :]  # [S, K]: column j - k
    suffix_cols = end - ks  # [K]: column end - k

    def at(columns):  # ids and realness at `columns` (a column < 0 is not real)
        safe = tf.maximum(columns, 0)
        return tf.gather(token_ids, safe, axis=1), tf.logical_and(tf.gather(real, safe, axis=1), columns >= 0)

    (earlier, earlier_real), (suffix, suffix_real) = at(before), at(suffix_cols)  # [B, S, K], [B, K]
    same = tf.logical_and(tf.logical_and(earlier_real, suffix_real[:, None, :]), tf.equal(earlier, suffix[:, None, :]))
    needed = ks[None, None, :] < n  # k < n: the k-th token before is part of the row's n-gram
    match = tf.logical_and(real, tf.reshape(n, [-1, 1]) >= 1)
    match = tf.logical_and(match, tf.reduce_all(tf.logical_or(same, tf.logical_not(needed)), axis=-1))
    return _presence(token_ids, tf.cast(match, tf.int32), vocab_size)


def no_repeat_ngram(scores, token_ids, token_mask, ngram_size, max_size: int = 0):
    """Sets to -inf every token that would repeat an n-gram.

    `ngram_size`: a Python int, one size for every row, that shapes the graph (0: a no-op; see
    `no_repeat_ngram_mask`); or, with `max_size` > 0, a tensor, one size per row [B] in
    [0, max_size] (see `no_repeat_ngram_mask_per_row`).
    """
    if max_size:
        banned = no_repeat_ngram_mask_per_row(token_ids, token_mask, ngram_size, max_size, scores.shape[-1])
    elif not ngram_size:
        return scores
    else:
        banned = no_repeat_ngram_mask(token_ids, token_mask, ngram_size, scores.shape[-1])
    return tf.where(banned, tf.constant(NEG_INF, scores.dtype), scores)


def min_new_tokens(scores, step, min_new, eos_token_id: int):
    """Forbids EOS (-inf) while fewer than `min_new` tokens have been generated.

    HF's `MinNewTokensLengthLogitsProcessor`; `step` counts the tokens generated so far;
    `min_new` is a scalar or one per row [B].
    """
    vocab = tf.range(tf.shape(scores)[-1])
    early = tf.cast(step, tf.int32) < per_row(min_new, tf.int32)  # [1 or B, 1]
    block = tf.logical_and(tf.equal(vocab, eos_token_id)[None, :], early)
    return tf.where(block, tf.constant(NEG_INF, scores.dtype), scores)


def temperature(scores, value):
    """Divides the logits by `value` (> 0): below 1 sharpens, above 1 flattens."""
    return scores / per_row(value, scores.dtype)


def _order_keys(scores: tf.Tensor) -> tf.Tensor:
    """int64 keys that order as the float32 scores do (equal scores, -0.0 and 0.0 included,
    get equal keys), so a threshold can be found by bisection over integers."""
    bits = tf.cast(tf.bitcast(tf.cast(scores, tf.float32), tf.int32), tf.int64)
    magnitude = tf.bitwise.bitwise_and(bits, 0x7FFFFFFF)
    return tf.where(bits < 0, -magnitude, bits)


def _largest_key(keys: tf.Tensor, holds, needed=True) -> tf.Tensor:
    """[B, 1]: per row, the largest int32-range key t with `holds(t)` true, for a `holds` that
    is true at the smallest key and, once false, stays false for larger t (32 halvings).

    Replaces a sort of the vocabulary: on CPU under XLA a [8, 50257] `tf.sort` takes 80 ms,
    these 32 masked reductions a few ms (benchmarks/RESULTS.md, "Serving under load").
    `needed` (a scalar bool) false skips the halvings and gives the smallest key: for callers
    whose every row then ignores the answer (a filter that is off in every row), so a run
    with the filter off pays nothing for it. A loop with 0 or 32 trips, not a branch.
    """
    rows = tf.shape(keys)[:1]
    low = tf.fill(tf.concat([rows, [1]], 0), tf.constant(-(2**31), tf.int64))
    high = tf.fill(tf.concat([rows, [1]], 0), tf.constant(2**31 - 1, tf.int64))

    def halve(i, low, high):
        middle = (low + high + 1) // 2
        ok = holds(middle)
        return i + 1, tf.where(ok, middle, low), tf.where(ok, high, middle - 1)

    trips = tf.where(tf.cast(needed, tf.bool), 32, 0)
    _, low, _ = tf.while_loop(lambda i, low, high: i < trips, halve, (tf.constant(0), low, high), maximum_iterations=32)
    return low


def top_k(scores, k, min_tokens_to_keep: int = 1):
    """Keeps the `k` highest scores (and ties with the k-th), sets the rest to -inf.

    HF's `TopKLogitsWarper`; `k` 0 disables it. `k` may be a runtime value (one per row), so
    `tf.math.top_k` (a constant k) does not apply; the k-th value is found exactly by bisection
    on the scores' order keys: the largest key that at least k scores reach.
    """
    k = per_row(k, tf.int32)  # [1 or B, 1]
    V = tf.shape(scores)[-1]
    kept = tf.clip_by_value(tf.maximum(k, min_tokens_to_keep), 1, V)
    keys = _order_keys(scores)
    filters = tf.reduce_any(tf.logical_and(k > 0, kept < V))  # else no row loses a score
    kth = _largest_key(
        keys, lambda t: tf.reduce_sum(tf.cast(keys >= t, tf.int32), -1, keepdims=True) >= kept, needed=filters
    )
    filtered = tf.where(keys < kth, tf.constant(NEG_INF, scores.dtype), scores)
    return tf.where(k > 0, filtered, scores)


def top_p(scores, p, min_tokens_to_keep: int = 1):
    """Nucleus filtering (HF's `TopPLogitsWarper`): keeps the smallest set of top tokens whose
    probability mass exceeds `p`, sets the rest to -inf; `p` 1.0 disables it.

    HF sorts ascending and drops a token when the cumulative mass up to and including it is
    <= 1 - p; the top `min_tokens_to_keep` always stay. The kept set is then every score at or
    above the smallest kept one, which is the largest score s with mass(scores < s) <= 1 - p:
    found here by bisection on the scores' order keys, without a sort (a token tied with that
    score is kept too, as before).
    """
    p = per_row(p, scores.dtype)  # [1 or B, 1]
    probs = tf.nn.softmax(scores, axis=-1)
    keys = _order_keys(scores)
    zero = tf.zeros_like(probs)

    def little_mass_below(t):
        return tf.reduce_sum(tf.where(keys < t, probs, zero), -1, keepdims=True) <= 1.0 - p

    threshold = _largest_key(keys, little_mass_below, needed=tf.reduce_any(p < 1.0))
    if min_tokens_to_keep > 1:  # never above the min_tokens_to_keep-th best score
        V = tf.shape(scores)[-1]
        need = tf.minimum(min_tokens_to_keep, V)
        floor = _largest_key(keys, lambda t: tf.reduce_sum(tf.cast(keys >= t, tf.int32), -1, keepdims=True) >= need)
        threshold = tf.minimum(threshold, floor)
    filtered = tf.where(keys < threshold, tf.constant(NEG_INF, scores.dtype), scores)
    return tf.where(p < 1.0, filtered, scores)
