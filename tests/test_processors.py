"""Logits processors on hand-made logits whose answers are known (HF semantics)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfdialogpt.generation import processors

NEG_INF = -np.inf


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    scores = tf.constant([[2.0, -2.0, 1.0, -1.0]])
    history = tf.constant([[0, 1, 3, 2]])
    mask = tf.constant([[1, 1, 1, 0]])  # token 2 sits under padding: not history
    out = processors.repetition_penalty(scores, history, mask, 2.0).numpy()
    np.testing.assert_allclose(out, [[1.0, -4.0, 1.0, -2.0]])


def test_repetition_penalty_of_one_is_exact_identity():
    scores = tf.random.normal([2, 7], seed=1)
    out = processors.repetition_penalty(scores, tf.constant([[1, 2], [3, 4]]), tf.ones([2, 2], tf.int32), 1.0)
    np.testing.assert_array_equal(out.numpy(), scores.numpy())


def test_no_repeat_ngram_bans_the_token_that_completes_a_seen_bigram():
    # history: 5 1 2 5 1 | current prefix (last token) is 1; bigrams seen starting with 1: (1, 2)
    history = tf.constant([[5, 1, 2, 5, 1, 0, 0]])
    mask = tf.constant([[1, 1, 1, 1, 1, 0, 0]])
    banned = processors.no_repeat_ngram_mask(history, mask, 2, 8).numpy()
    assert np.flatnonzero(banned[0]).tolist() == [2]
    # trigram (5, 1, ?) was followed by 2
    banned3 = processors.no_repeat_ngram_mask(history, mask, 3, 8).numpy()
    assert np.flatnonzero(banned3[0]).tolist() == [2]


def test_no_repeat_ngram_ignores_left_padding():
    # The pad id 1 under mask 0 must not make a bigram (1, 7) with the first real token.
    history = tf.constant([[1, 7, 3, 1], [4, 7, 3, 1]])
    mask = tf.constant([[0, 1, 1, 1], [1, 1, 1, 1]])
    banned = processors.no_repeat_ngram_mask(history, mask, 2, 9).numpy()
    assert np.flatnonzero(banned[0]).tolist() == []
    # Row 1 has the same real tail but no earlier "1": nothing banned either.
    assert np.flatnonzero(banned[1]).tolist() == []


def test_no_repeat_ngram_of_one_bans_every_seen_token():
    history = tf.constant([[3, 3, 0, 5]])
    mask = tf.constant([[0, 1, 1, 1]])
    banned = processors.no_repeat_ngram_mask(history, mask, 1, 6).numpy()
    assert np.flatnonzero(banned[0]).tolist() == [0, 3, 5]


def _banned_by_hf_rule(tokens: list[int], n: int) -> set[int]:
    """HF's `NoRepeatNGramLogitsProcessor` on one row's real tokens, written out: every n-gram of
    the row, keyed by its first n - 1 tokens; the row's last n - 1 tokens look up the banned."""
    if n == 0 or len(tokens) + 1 < n:
        return set()
    seen: dict[tuple, set] = {}
    for i in range(len(tokens) - n + 1):
        seen.setdefault(tuple(tokens[i : i + n - 1]), set()).add(tokens[i + n - 1])
    return seen.get(tuple(tokens[len(tokens) - n + 1 :]), set())


def test_no_repeat_ngram_per_row_gives_each_row_its_own_size():
    # The same history in four rows, sizes 0 (off), 1 (every seen token), 2 and 3.
    history = tf.constant([[5, 1, 2, 5, 1, 0, 0]] * 4)
    mask = tf.constant([[1, 1, 1, 1, 1, 0, 0]] * 4)
    banned = processors.no_repeat_ngram_mask_per_row(history, mask, tf.constant([0, 1, 2, 3]), 4, 8).numpy()
    assert [np.flatnonzero(row).tolist() for row in banned] == [[], [1, 2, 5], [2], [2]]
    scores = processors.no_repeat_ngram(tf.zeros([4, 8]), history, mask, tf.constant([0, 1, 2, 3]), max_size=4)
    assert np.isneginf(scores.numpy()).sum(axis=1).tolist() == [0, 3, 1, 1]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_no_repeat_ngram_per_row_follows_hf_rule_on_random_histories(jit_compile):
    rng = np.random.default_rng(0)
    B, S, V, max_size = 24, 14, 4, 5  # a small vocabulary, so n-grams repeat often
    ids = rng.integers(0, V, size=(B, S))
    real = np.zeros((B, S), np.int32)
    for b in range(B):  # left padding of 0 to S - 1 columns; real tokens end at the last column
        real[b, rng.integers(0, S) :] = 1
    sizes = rng.integers(0, max_size + 1, size=B)
    mask_fn = tf.function(
        lambda i, m, n: processors.no_repeat_ngram_mask_per_row(i, m, n, max_size, V), jit_compile=jit_compile
    )
    banned = mask_fn(tf.constant(ids, tf.int32), tf.constant(real), tf.constant(sizes, tf.int32)).numpy()
    for b in range(B):
        tokens = ids[b][real[b] == 1].tolist()
        assert set(np.flatnonzero(banned[b]).tolist()) == _banned_by_hf_rule(tokens, int(sizes[b])), (tokens, sizes[b])
        if sizes[b]:  # and the one-size mask agrees row by row
            alone = processors.no_repeat_ngram_mask(ids[b : b + 1], real[b : b + 1], int(sizes[b]), V).numpy()
            np.testing.assert_array_equal(alone[0], banned[b])


def test_min_new_tokens_blocks_eos_only_before_the_minimum():
    scores = tf.zeros([2, 4])
    blocked = processors.min_new_tokens(scores, 1, 2, eos_token_id=3).numpy()
    assert blocked[:, 3].tolist() == [NEG_INF, NEG_INF]
    assert (blocked[:, :3] == 0).all()
    assert (processors.min_new_tokens(scores, 2, 2, eos_token_id=3).numpy() == 0).all()


def test_temperature_scales_logits():
    np.testing.assert_allclose(processors.temperature(tf.constant([[1.0, -2.0]]), 0.5).numpy(), [[2.0, -4.0]])


def test_top_k_keeps_the_k_best_and_their_ties():
    scores = tf.constant([[1.0, 5.0, 3.0, 3.0, 0.0], [4.0, 3.0, 2.0, 1.0, 0.0]])
    out = processors.top_k(scores, 2).numpy()
    assert np.isfinite(out).tolist() == [[False, True, True, True, False], [True, True, False, False, False]]
    np.testing.assert_array_equal(processors.top_k(scores, 0).numpy(), scores.numpy())
    assert np.isfinite(processors.top_k(scores, 99).numpy()).all()


def test_top_p_keeps_the_smallest_nucleus_above_p():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    scores = tf.constant(np.log(probs), tf.float32)
    # 0.5 < 0.6 so the nucleus needs the second token too; 0.8 >= 0.6 stops there.
    assert np.isfinite(processors.top_p(scores, 0.6).numpy()).tolist() == [[True, True, False, False]]
    assert np.isfinite(processors.top_p(scores, 0.5).numpy()).tolist() == [[True, False, False, False]]
    assert np.isfinite(processors.top_p(scores, 0.81).numpy()).tolist() == [[True, True, True, False]]
    assert np.isfinite(processors.top_p(scores, 1.0).numpy()).all()
    # min_tokens_to_keep wins over a tiny p
    assert np.isfinite(processors.top_p(scores, 0.01).numpy()).sum() == 1


@pytest.mark.parametrize("p", [0.3, 0.7, 0.9])
def test_top_p_matches_hf(p):
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 50)).astype(np.float32) * 3
    ours = processors.top_p(processors.top_k(tf.constant(scores), 20), p).numpy()
    hf = TopPLogitsWarper(p)(None, TopKLogitsWarper(20)(None, torch.tensor(scores))).numpy()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(hf))


def test_processors_run_under_xla_with_runtime_controls():
    @tf.function(jit_compile=True)
    def run(scores, k, p, penalty):
        scores = processors.repetition_penalty(scores, tf.constant([[0, 1]]), tf.constant([[1, 1]]), penalty)
        return processors.top_p(processors.top_k(scores, k), p)

    scores = tf.constant([[4.0, 3.0, 2.0, 1.0]])
    out = run(scores, tf.constant(3), tf.constant(1.0), tf.constant(2.0)).numpy()
    np.testing.assert_allclose(out, [[2.0, 1.5, 2.0, NEG_INF]])
    out = run(scores, tf.constant(0), tf.constant(1.0), tf.constant(1.0)).numpy()
    np.testing.assert_allclose(out, scores.numpy())


def test_top_k_and_top_p_per_row_match_a_sorting_reference():
    """The bisection thresholds equal HF's sort-based rule, row by row, with ties, -0.0 and
    -inf in the scores, eagerly and under XLA."""
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(1)
    scores = (rng.normal(size=(6, 2000)) * 4).astype(np.float32)
    scores[:, :50] = np.round(scores[:, :50])  # ties
    scores[0, 60:70], scores[1, 70:80], scores[2, 5] = -np.inf, -0.0, 0.0
    ks, ps = [0, 1, 7, 40, 1999, 2000], [1.0, 0.05, 0.5, 0.9, 0.99, 0.3]
    xla = tf.function(lambda s, k, p: processors.top_p(processors.top_k(s, k), p), jit_compile=True)
    for run in (lambda s, k, p: processors.top_p(processors.top_k(s, k), p), xla):
        ours = run(tf.constant(scores), tf.constant(ks), tf.constant(ps)).numpy()
        for row, (k, p) in enumerate(zip(ks, ps, strict=True)):
            ref = torch.tensor(scores[row : row + 1])
            if k:
                ref = TopKLogitsWarper(k)(None, ref)
            if p < 1:
                ref = TopPLogitsWarper(p)(None, ref)
            np.testing.assert_array_equal(np.isfinite(ours[row]), np.isfinite(ref.numpy()[0]), err_msg=f"row {row}")
