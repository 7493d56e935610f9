"""The prompt's forward pass (the prefill), as a loop over fixed-size chunks of the prompt.

One pass over a whole [B, T] prompt holds every layer's attention scores [B, H, T, S] and MLP
activations [B, T, 4C] at once, and is one stretch of work that a cancelled run cannot leave
(TensorFlow checks for cancellation between loop steps, not inside a matmul). The chunked
prefill runs the same model `chunk_size` positions at a time in a `tf.while_loop`, each chunk
writing its keys and values into the preallocated cache at its offset and attending to the
chunks before it through the cache. Peak activations are then bounded by the chunk, and a
stopped run ends after the chunk under way.

Every chunk has the static shape [B, chunk_size] (XLA compiles the body once): when T is not a
multiple of the chunk, the last chunk starts at T - chunk_size and recomputes a few positions of
the one before, writing the same keys and values again. A prompt of at most one chunk takes the
single pass, as before. So does an XLA-compiled function traced for any prompt length (the
exported `generate_xla`): the chunked loop needs the length at trace time there.

Example:
    >>> cache = model.init_cache(B, T + N)  # doctest: +SKIP
    >>> last_hidden, cache = prefill(model, input_ids, full_mask, cache)  # doctest: +SKIP
    >>> first_logits = model.lm_head(last_hidden)  # [B, vocab]  # doctest: +SKIP
"""

from __future__ import annotations

import tensorflow as tf

from tfdialogpt.layers import in_xla_context, positions_from_mask

# Prompt positions one prefill step runs. Prompts up to this length (the buckets 16 .. 128)
# take the single pass.
CHUNK_SIZE = 128


def prefill(model, input_ids, attention_mask, cache, chunk_size: int | None = CHUNK_SIZE):
    """Runs the prompt `input_ids` [B, T] into `cache` from position 0.

    Args:
        model: has `call_with_cache` (see `DialoGPT`) and `config.hidden_size`.
        attention_mask: [B, S], over the whole cache buffer (prompt, then new tokens).
        cache: from `model.init_cache(B, S)`.
        chunk_size: positions per loop step; None runs the prompt in one pass.
    Returns:
        (final hidden state of the prompt's last position [B, hidden], the written cache).
    """
    static_length = input_ids.shape[1]

    def whole():
        hidden, written = model.call_with_cache(input_ids, cache, 0, attention_mask=attention_mask, return_hidden=True)
        return hidden[:, -1], written

    if chunk_size is None or (static_length is not None and static_length <= chunk_size):
        return whole()
    C = int(chunk_size)
    if static_length is None:  # a dynamic prompt length (the exported signatures)
        if in_xla_context():
            # XLA compiles both branches of a cond for the call's shapes, and a chunk wider than
            # a short prompt's cache does not compile: one pass, as a compiled run cannot be
            # stopped midway anyway.
            return whole()
        return tf.cond(tf.shape(input_ids)[1] <= C, whole, lambda: _chunked(model, input_ids, attention_mask, cache, C))
    return _chunked(model, input_ids, attention_mask, cache, C)


def _chunked(model, input_ids, attention_mask, cache, C: int):
    B, T = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
    positions = positions_from_mask(attention_mask)  # [B, S], counted once for every chunk
    num_chunks = (T + C - 1) // C

    def body(i, _, cache):
        # The last chunk ends at T - 1 exactly (it overlaps its predecessor when C does not divide T).
        start = tf.minimum(i * C, T - C)
        offsets = start + tf.range(C)  # gathers, not slices: `start` varies over the loop under XLA
        hidden, cache = model.call_with_cache(
            tf.gather(input_ids, offsets, axis=1),  # [B, C]
            cache,
            start,
            attention_mask=attention_mask,
            position_ids=tf.gather(positions, offsets, axis=1),
            return_hidden=True,
        )
        return i + 1, hidden[:, -1], cache

    dtype = cache[0][0].dtype
    last = tf.zeros(tf.stack([B, model.config.hidden_size]), dtype)
    # One iteration at a time: a stopped run starts no new iteration, but lets those already
    # started finish, and with the default 10 the loop counter runs ahead of the chunks (a
    # stopped 16-chunk prefill then ran about 7 more chunks).
    loop_vars = (tf.constant(0), last, cache)
    _, last, cache = tf.while_loop(lambda i, *_: i < num_chunks, body, loop_vars, parallel_iterations=1)
    return last, cache
