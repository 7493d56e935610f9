"""The sampler's counter-based noise: Threefry-2x32 against Random123's known answers, its
uniforms' distribution, per-row streams, and Gumbel-max draws against the softmax."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfdialogpt.generation import noise
from tfdialogpt.generation.sampling import gumbel_sample

# Random123 tests/kat_vectors, "threefry2x32 20": counter (2 words), key (2 words), answer.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_threefry_gives_random123s_known_answers(jit_compile):
    counters = tf.constant([c for c, _, _ in KNOWN_ANSWERS], tf.uint32)
    keys = tf.constant([k for _, k, _ in KNOWN_ANSWERS], tf.uint32)
    run = tf.function(lambda c, k: noise.threefry2x32(k[:, 0], k[:, 1], c[:, 0], c[:, 1]), jit_compile=jit_compile)
    first, second = run(counters, keys)
    got = list(zip(first.numpy().tolist(), second.numpy().tolist(), strict=True))
    assert got == [answer for _, _, answer in KNOWN_ANSWERS]


def _uniform(seed, step, shape, jit_compile=True):
    run = tf.function(lambda s, t: noise.uniform(s, t, shape), jit_compile=jit_compile)
    return run(tf.constant(seed, tf.int32), tf.constant(step, tf.int32)).numpy()


def test_uniform_noise_is_uniform_and_independent_across_rows_columns_and_steps():
    u = _uniform(np.arange(8) * 7919, 3, (8, 50257))
    assert u.dtype == np.float32 and (u > 0).all() and (u < 1).all()
    # Kolmogorov-Smirnov against U(0, 1): 402,056 values, 1% critical value 1.63 / sqrt(n).
    flat = np.sort(u.ravel().astype(np.float64))
    n = flat.size
    ks = max(np.max(np.arange(1, n + 1) / n - flat), np.max(flat - np.arange(n) / n))
    assert ks < 1.63 / np.sqrt(n), ks
    # 100 equal bins: chi-square with 99 degrees of freedom, 0.1% critical value 148.
    counts = np.histogram(flat, bins=100, range=(0, 1))[0]
    assert ((counts - n / 100) ** 2 / (n / 100)).sum() < 148
    # No correlation between neighbouring columns, rows, steps or neighbouring seeds.
    later = _uniform(np.arange(8) * 7919, 4, (8, 50257))
    neighbour_seeds = _uniform(np.arange(8) * 7919 + 1, 3, (8, 50257))
    bound = 4 / np.sqrt(n)  # 4 standard errors of a correlation of independent values
    for a, b in [(u[:, :-1], u[:, 1:]), (u[:-1], u[1:]), (u, later), (u, neighbour_seeds)]:
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < bound


def test_each_row_of_a_per_row_seed_draws_as_a_one_row_batch():
    seeds, V = [5, 11, 5, 2**31 - 1], 1001
    together = _uniform(seeds, 9, (4, V))
    for row, seed in enumerate(seeds):
        np.testing.assert_array_equal(together[row], _uniform([seed], 9, (1, V))[0])
    np.testing.assert_array_equal(together[0], together[2])  # equal seeds, equal noise
    assert (together[0] != together[1]).mean() > 0.99
    # A scalar seed: its row 0 equals the one-row batch; its rows differ from each other.
    shared = _uniform(5, 9, (4, V))
    np.testing.assert_array_equal(shared[0], together[0])
    np.testing.assert_array_equal(shared[0], _uniform(5, 9, (1, V))[0])
    assert (shared[1] != shared[0]).mean() > 0.99 and (shared[2] != shared[1]).mean() > 0.99
    # The same bits without XLA, and a new step draws anew.
    np.testing.assert_array_equal(_uniform(seeds, 9, (4, V), jit_compile=False), together)
    assert (_uniform(seeds, 10, (4, V)) != together).mean() > 0.99


def test_gumbel_draws_follow_the_softmax():
    """Gumbel-max over the noise samples softmax(scores): 20,000 draws (rows x steps, each row
    its own seed) land in each token as often as its probability says, -inf never."""
    probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04, 0.0])
    with np.errstate(divide="ignore"):
        scores = np.tile(np.log(probs).astype(np.float32), (200, 1))
    seeds = tf.constant(np.arange(200) * 3 + 1, tf.int32)
    draw = tf.function(lambda s, t: gumbel_sample(tf.constant(scores), s, t), jit_compile=True)
    tokens = np.concatenate([draw(seeds, tf.constant(step)).numpy() for step in range(100)])
    counts = np.bincount(tokens, minlength=len(probs))
    assert counts[-1] == 0
    expected = probs[:-1] * tokens.size
    chi_square = ((counts[:-1] - expected) ** 2 / expected).sum()
    assert chi_square < 20.5, (counts, chi_square)  # 5 degrees of freedom, 0.1% critical value
