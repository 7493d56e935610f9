"""Beam search with length penalty, step for step as HF transformers (`num_beams > 1`,
`do_sample=False`, `early_stopping=False`), over the same next-token callback as `sampling`.

Per step, for each batch row: log-softmax the logits of its K running beams, apply the logits
processors, add each beam's running score, keep the top 2K continuations of all K * V; those
ending in EOS (or reaching the length limit) compete, after dividing by
`new_length ** length_penalty`, for the K finished slots; the best K of the others keep
running. A row stops improving once its best running beam, scored at the current length,
cannot beat its worst finished one; the loop ends when no row can improve. The arithmetic
(the -1e9 sentinels, the order of operations) follows HF's `_beam_search` so the same weights
give the same tokens.
"""

from __future__ import annotations

import tensorflow as tf

from tfdialogpt.generation.sampling import SamplingParams, process_scores

_SENTINEL = -1.0e9


def _gather_beams(tensor: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """tensor [B, K, ...], indices [B, K'] -> [B, K', ...]."""
    return tf.gather(tensor, indices, axis=1, batch_dims=1)


def beam_search(
    next_fn,
    reorder_cache,
    first_logits,
    cache,
    prompt_ids,
    prompt_mask,
    params: SamplingParams,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    length_penalty=1.0,
    no_repeat_ngram_size: int = 0,
):
    """Beam search as one `tf.while_loop`.

    Args:
        next_fn: `(tokens [B*K], cache, index) -> (logits [B*K, V], cache)`.
        reorder_cache: `(cache, indices [B*K]) -> cache` whose row i is the old row indices[i].
        first_logits: [B*K, V] after the prompt; rows b*K .. b*K+K-1 belong to batch row b
            (the prompt repeated K times), and `cache` matches.
        prompt_ids / prompt_mask: [B, T] left padded (not repeated).
        params: `max_new_tokens`, `repetition_penalty`, `min_new_tokens` are used.
        num_beams: K, static. max_new_tokens: N, the static output width.
        length_penalty: exponent on the new length when scoring finished beams (run time).
    Returns:
        (sequences [B, N] int32, lengths [B] int32): each row's best beam, EOS included,
        padded with `pad_token_id`.
    """
    K, N = int(num_beams), int(max_new_tokens)
    prompt_ids = tf.cast(prompt_ids, tf.int32)
    B, T = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    V = tf.shape(first_logits)[-1]
    limit = tf.minimum(tf.cast(params.max_new_tokens, tf.int32), N)
    length_penalty = tf.cast(length_penalty, tf.float64)

    def tile(x):  # [B, T] -> [B, K, T]
        return tf.repeat(x[:, None, :], K, axis=1)

    # Running and finished hypotheses hold the whole history (prompt + N slots), as in HF.
    running = tile(tf.concat([prompt_ids, tf.fill([B, N], pad_token_id)], axis=1))  # [B, K, T+N]
    history_mask = tf.concat([tf.cast(prompt_mask, tf.int32), tf.zeros([B, N], tf.int32)], axis=1)
    finished_seqs = running
    running_scores = tf.concat([tf.zeros([B, 1]), tf.fill([B, K - 1], _SENTINEL)], axis=1)
    finished_scores = tf.fill([B, K], _SENTINEL)
    is_finished = tf.zeros([B, K], tf.bool)
    improvable = tf.ones([B, 1], tf.bool)
    top_k_mask = tf.range(2 * K) < K  # [2K]: only the top K candidates may finish
    columns = tf.range(T + N)
    batch_offset = tf.range(B)[:, None] * K

    def penalised(scores, new_length):
        denominator = tf.cast(tf.cast(new_length, tf.float64) ** length_penalty, tf.float32)
        return scores / denominator

    def select(logits, step, running, running_scores, finished_seqs, finished_scores, is_finished, improvable):
        """One HF beam step on the running beams' logits; returns the new state, the source
        rows for the cache and whether the loop may continue."""
        flat_history = tf.reshape(running, [B * K, T + N])
        generated = tf.logical_and(columns >= T, columns < T + step)[None, :]
        flat_mask = tf.reshape(tile(tf.where(generated, 1, history_mask)), [B * K, T + N])
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        log_probs = process_scores(
            log_probs,
            flat_history,
            flat_mask,
            step,
            params,
            eos_token_id=eos_token_id,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        log_probs = tf.reshape(log_probs, [B, K, V]) + running_scores[:, :, None]
        log_probs = tf.reshape(log_probs, [B, K * V])

        # Top 2K continuations over all beams.
        topk_scores, topk_indices = tf.math.top_k(log_probs, k=2 * K)
        topk_beams = topk_indices // V
        topk_tokens = topk_indices % V
        topk_seqs = _gather_beams(running, topk_beams)
        here = tf.equal(columns, T + step)[None, None, :]
        topk_seqs = tf.where(here, topk_tokens[:, :, None], topk_seqs)
        topk_sources = topk_beams + batch_offset  # flat row each candidate continues

        ends = tf.logical_or(tf.equal(topk_tokens, eos_token_id), step + 1 >= limit)  # [B, 2K]

        # The K best candidates that did not end keep running.
        running_candidates = topk_scores + tf.cast(ends, tf.float32) * _SENTINEL
        keep = tf.math.top_k(running_candidates, k=K).indices
        running = _gather_beams(topk_seqs, keep)
        running_scores = _gather_beams(running_candidates, keep)
        sources = tf.reshape(_gather_beams(topk_sources, keep), [B * K])

        # Candidates among the top K that ended compete for the finished slots.
        just_finished = tf.logical_and(ends, top_k_mask[None, :])
        candidate_scores = penalised(topk_scores, step + 1)
        candidate_scores += tf.cast(tf.logical_not(improvable), tf.float32) * _SENTINEL
        candidate_scores += tf.cast(tf.logical_not(just_finished), tf.float32) * _SENTINEL
        merged_seqs = tf.concat([finished_seqs, topk_seqs], axis=1)
        merged_scores = tf.concat([finished_scores, candidate_scores], axis=1)
        merged_finished = tf.concat([is_finished, just_finished], axis=1)
        best = tf.math.top_k(merged_scores, k=K).indices
        finished_seqs = _gather_beams(merged_seqs, best)
        finished_scores = _gather_beams(merged_scores, best)
        is_finished = _gather_beams(merged_finished, best)

        # Can a running beam still beat the worst finished one (HF's early_stopping=False)?
        best_running = penalised(running_scores[:, :1], step + 1)
        worst_finished = tf.where(is_finished, tf.reduce_min(finished_scores, axis=1, keepdims=True), _SENTINEL)
        improvable = tf.logical_and(improvable, tf.reduce_any(best_running > worst_finished, axis=-1, keepdims=True))
        go_on = tf.logical_and(tf.reduce_any(improvable), tf.logical_not(tf.reduce_all(ends)))
        state = (running, running_scores, finished_seqs, finished_scores, is_finished, improvable)
        return state, sources, go_on

    step = tf.constant(0, tf.int32)
    state, sources, go_on = select(
        first_logits, step, running, running_scores, finished_seqs, finished_scores, is_finished, improvable
    )
    cache = reorder_cache(cache, sources)

    def cond(step, go_on, cache, *state):
        return go_on

    def body(step, go_on, cache, *state):
        running = state[0]
        tokens = tf.reshape(tf.gather(running, T + step, axis=2), [B * K])
        logits, cache = next_fn(tokens, cache, T + step)
        step = step + 1
        new_state, sources, go_on = select(logits, step, *state)
        # Batched gathers lose the static batch size; the loop needs it back.
        new_state = tuple(tf.ensure_shape(new, old.shape) for new, old in zip(new_state, state, strict=True))
        cache = reorder_cache(cache, sources)
        return (step, go_on, cache, *new_state)

    loop_vars = (step, go_on, cache, *state)
    out = tf.while_loop(cond, body, loop_vars, maximum_iterations=N - 1)
    finished_seqs = out[5]
    sequences = finished_seqs[:, 0, T:]  # the best beam, new tokens only
    is_eos = tf.equal(sequences, eos_token_id)
    first_eos = tf.argmax(tf.cast(is_eos, tf.int32), axis=1, output_type=tf.int32)
    # The pad id may equal EOS (DialoGPT): a beam cut by the length limit has pad, not EOS,
    # from position `limit` on, hence the minimum.
    lengths = tf.where(tf.reduce_any(is_eos, axis=1), tf.minimum(first_eos + 1, limit), limit)
    return sequences, lengths
