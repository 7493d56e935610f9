"""Counter-based random numbers for sampling: Threefry-2x32 in plain integer ops.

The sampler needs uniform noise for a [B, V] batch of scores, each row from its own seed when
the rows are separate requests, so that a row's tokens never depend on its batch mates.
`tf.random.stateless_uniform` takes one seed for the whole tensor; one call per row
(`tf.map_fn`) works but runs the rows one after the other. Threefry (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", SC 2011; the Random123 library; JAX's default PRNG) is a
keyed bijection of a counter: noise[b, j] = threefry(key = (seed[b], step), counter = (j, 0))
is one vectorised computation over the whole batch, element by element, with any key per row.
Only uint32 add, xor and shifts: the same bits with and without XLA, on any TF build.
"""

from __future__ import annotations

import tensorflow as tf

# Threefry-2x32's rotation constants and key-schedule parity (Random123's threefry.h).
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
ROUNDS = 20


def _u32(value) -> tf.Tensor:
    return tf.constant(value, tf.uint32)


def threefry2x32(key0, key1, count0, count1) -> tuple[tf.Tensor, tf.Tensor]:
    """Threefry-2x32 with 20 rounds: two uint32 words from a two-word key and a two-word
    counter (uint32 tensors that broadcast together). Equal to Random123's known-answer
    vectors (`tests/test_noise.py`).
    """
    key2 = tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(key0, key1), _u32(_PARITY))
    keys = (key0, key1, key2)
    x0, x1 = count0 + key0, count1 + key1
    for group in range(ROUNDS // 4):
        for rotation in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = tf.bitwise.bitwise_or(
                tf.bitwise.left_shift(x1, _u32(rotation)), tf.bitwise.right_shift(x1, _u32(32 - rotation))
            )
            x1 = tf.bitwise.bitwise_xor(x1, x0)
        injection = group + 1  # the key schedule, after every 4 rounds
        x0 = x0 + keys[injection % 3]
        x1 = x1 + keys[(injection + 1) % 3] + _u32(injection)
    return x0, x1


def uniform(seed, step, shape) -> tf.Tensor:
    """Uniform float32 noise of `shape` [B, V], strictly inside (0, 1), keyed by (seed, step).

    `seed` is a scalar (one stream over the batch: row b uses counters (j, b)) or one per row
    [B] (row b draws from key (seed[b], step), counters (j, 0), whatever the other rows). So
    row b of a per-row batch, a one-row batch and row 0 of a scalar seed, seeded alike, draw
    the same noise. Each counter gives two words: columns [0, H) take the first, [H, 2H) the
    second (H = ceil(V / 2)). A word's top 23 bits k give (k + 0.5) / 2**23.
    """
    B, V = shape[0], shape[1]
    H = (V + 1) // 2
    seed = tf.cast(seed, tf.int32)
    if seed.shape.rank:
        seed = tf.broadcast_to(seed, [B])
    key0 = tf.bitcast(tf.reshape(seed, [-1, 1]), tf.uint32)  # [1 or B, 1]
    key1 = tf.bitcast(tf.reshape(tf.cast(step, tf.int32), [1, 1]), tf.uint32)
    columns = tf.cast(tf.range(H), tf.uint32)[None, :]  # [1, H]
    rows = tf.cast(tf.range(B), tf.uint32)[:, None] if seed.shape.rank == 0 else tf.zeros([1, 1], tf.uint32)
    first, second = threefry2x32(key0, key1, columns, rows)  # each [B, H]
    words = tf.concat([first, second], axis=1)[:, :V]
    top_bits = tf.cast(tf.bitwise.right_shift(words, _u32(9)), tf.float32)  # exact: < 2**23
    return (top_bits + 0.5) * (2.0**-23)
