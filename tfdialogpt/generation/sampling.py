"""The decode loop for greedy search and sampling, over a next-token callback.

The loop never sees a model. It is handed the logits for the first new token (from the
prompt's forward pass) and a callback

    next_fn(tokens [B] int32, cache, index) -> (logits [B, V] float32, cache)

that feeds one token per row, writes its keys/values into the cache at `index` and returns the
next logits. Everything is a fixed-shape `tf.while_loop`: the token history is a preallocated
[B, T + N] buffer written at a column, the cache is whatever structure the callback carries,
and the loop ends after `max_new_tokens` steps or as soon as every row has emitted EOS. EOS in
the prompt (DialoGPT's turn separator) never ends a row: only a newly generated one does.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfdialogpt.generation import noise, processors
from tfdialogpt.generation_config import SETTINGS


def _default(name: str):
    setting = SETTINGS[name]
    return dataclasses.field(default=setting.wire_default)


@dataclasses.dataclass
class SamplingParams:
    """The run-time controls of one decode, each a scalar (Python number or tensor) or a [B]
    tensor with one value per row; their meanings and defaults are `GenerationConfig`'s
    (`seed` 0 here: the loop needs a value).

    In a compiled graph they are inputs, so changing one never retraces. Per-row controls let
    rows with different settings share one run, each decoded as if alone (its own seed stream,
    its own `max_new_tokens`; greedy and sampled rows side by side).
    """

    max_new_tokens: tf.Tensor | int  # stop after this many steps (<= the buffer's N)
    do_sample: tf.Tensor | bool = _default("do_sample")
    temperature: tf.Tensor | float = _default("temperature")
    top_k: tf.Tensor | int = _default("top_k")
    top_p: tf.Tensor | float = _default("top_p")
    repetition_penalty: tf.Tensor | float = _default("repetition_penalty")
    min_new_tokens: tf.Tensor | int = _default("min_new_tokens")
    seed: tf.Tensor | int = _default("seed")
    # One n-gram size per row, read only by a decode built with `max_no_repeat_ngram_size` > 0;
    # otherwise the decode's static `no_repeat_ngram_size` applies to every row.
    no_repeat_ngram_size: tf.Tensor | int = _default("no_repeat_ngram_size")


def first_argmax(scores: tf.Tensor) -> tf.Tensor:
    """`tf.argmax(scores, -1)` (the first index of the row maximum), as two plain reductions.

    XLA on CPU compiles the (value, index) pair reduction of `argmax` into a slow loop; a max,
    then a min over the indices that reach it, is 1.4x (batch 1) to 3.4x (batch 8) faster over
    a 50,257-wide row (measured). A row without a maximum (NaN) gets the last index.
    """
    V = tf.shape(scores)[-1]
    best = tf.reduce_max(scores, axis=-1, keepdims=True)
    index = tf.reduce_min(tf.where(tf.equal(scores, best), tf.range(V), V), axis=-1)
    return tf.minimum(index, V - 1)


def gumbel_sample(scores: tf.Tensor, seed: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Draws one token per row from softmax(scores) with the Gumbel-max trick.

    argmax(scores + Gumbel noise) is an exact sample; a -inf score is never drawn. The noise
    is counter-based (`noise.uniform`, Threefry keyed by (seed, step)), so a run is
    reproducible. `seed` is a scalar (one stream for the whole [B, V] batch) or one per row
    [B]: then row b draws from its own stream (seed[b], step), so its tokens do not depend on
    the other rows of the batch. Row 0 of a scalar seed and a one-row batch seeded alike draw
    the same noise.
    """
    u = noise.uniform(seed, step, tf.shape(scores))
    gumbel = -tf.math.log(-tf.math.log(tf.cast(u, scores.dtype)))
    return first_argmax(scores + gumbel)


def process_scores(
    scores,
    history,
    history_mask,
    step,
    params: SamplingParams,
    *,
    eos_token_id: int,
    no_repeat_ngram_size: int = 0,
    max_no_repeat_ngram_size: int = 0,
):
    """The processors every search applies (HF order): repetition penalty, no-repeat-ngram,
    min-new-tokens. `history` [B, S] holds the prompt and the tokens so far (mask 1). The
    n-gram size is the static `no_repeat_ngram_size`, or with `max_no_repeat_ngram_size` > 0
    each row's `params.no_repeat_ngram_size` (at most that bound).

    Branch-free on purpose: a `tf.cond` inside the XLA decode loop doubled the step time on
    CPU (measured), while these few [B, V] element-wise ops cost little.
    """
    scores = processors.repetition_penalty(scores, history, history_mask, params.repetition_penalty)
    if max_no_repeat_ngram_size:
        scores = processors.no_repeat_ngram(
            scores, history, history_mask, params.no_repeat_ngram_size, max_size=max_no_repeat_ngram_size
        )
    else:
        scores = processors.no_repeat_ngram(scores, history, history_mask, no_repeat_ngram_size)
    return processors.min_new_tokens(scores, step, params.min_new_tokens, eos_token_id)


def sample_scores(scores, params: SamplingParams):
    """The sampling warpers (HF order): temperature, top-k, top-p (each a no-op when off)."""
    scores = processors.temperature(scores, params.temperature)
    scores = processors.top_k(scores, params.top_k)
    return processors.top_p(scores, params.top_p)


def choose_tokens(scores, step, params: SamplingParams, do_sample) -> tf.Tensor:
    """argmax (greedy) or a seeded sample from the warped scores. `do_sample` is a Python bool
    (the greedy graph holds no sampling code at all) or, in the sampling loop, True to follow
    `params.do_sample` per row: a row with it false takes the argmax of the same scores."""
    if not do_sample:
        return first_argmax(scores)
    sampled = gumbel_sample(sample_scores(scores, params), params.seed, step)
    per_row_choice = tf.cast(params.do_sample, tf.bool)
    if isinstance(params.do_sample, bool) or per_row_choice.shape.rank == 0:
        return sampled
    return tf.where(per_row_choice, sampled, first_argmax(scores))


def decode(
    next_fn,
    first_logits,
    cache,
    prompt_ids,
    prompt_mask,
    params: SamplingParams,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    no_repeat_ngram_size: int = 0,
    max_no_repeat_ngram_size: int = 0,
    do_sample: bool | None = None,
):
    """Greedy or sampled decoding as one `tf.while_loop`.

    Args:
        next_fn: `(tokens [B], cache, index) -> (logits [B, V], cache)`.
        first_logits: [B, V] float32, the logits after the last prompt token.
        cache: the callback's cache after the prompt (any nest of tensors).
        prompt_ids / prompt_mask: [B, T], left padded; the new tokens' cache positions are
            T, T + 1, ...
        params: run-time controls; `params.max_new_tokens` <= `max_new_tokens`.
        max_new_tokens: N, the static width of the output buffer.
        eos_token_id / pad_token_id: a row ends when it emits EOS; later positions hold pad.
        no_repeat_ngram_size: static (it shapes the graph); 0 = off.
        max_no_repeat_ngram_size: > 0: each row bans n-grams of its own size
            `params.no_repeat_ngram_size` [B], at most this (static) bound, instead.
        do_sample: True / False fixes the search when the graph is built; None (default)
            follows `params.do_sample` at run time (both loops are compiled, one runs: the
            sampling loop when any row samples, and it decodes its greedy rows by argmax).
    Returns:
        (sequences [B, N] int32, lengths [B] int32): the new tokens, EOS included, and how many
        each row produced.

    Example:
        >>> def next_fn(tokens, cache, index):  # a fake model: always prefers token 3
        ...     return tf.one_hot(tf.fill(tf.shape(tokens), 3), 5), cache
        >>> seqs, lengths = decode(next_fn, tf.one_hot([3], 5), (), tf.constant([[1]]),
        ...     tf.constant([[1]]), SamplingParams(max_new_tokens=2), max_new_tokens=2,
        ...     eos_token_id=3, pad_token_id=0)
        >>> seqs.numpy().tolist(), lengths.numpy().tolist()
        ([[3, 0]], [1])
    """
    if do_sample is None:
        # Run-time choice: one loop per search under a cond. The cond sits outside the loops,
        # so each loop body stays branch-free (the fast form under XLA).
        def run(sample):
            return lambda: decode(
                next_fn,
                first_logits,
                cache,
                prompt_ids,
                prompt_mask,
                params,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_id,
                pad_token_id=pad_token_id,
                no_repeat_ngram_size=no_repeat_ngram_size,
                max_no_repeat_ngram_size=max_no_repeat_ngram_size,
                do_sample=sample,
            )

        return tf.cond(tf.reduce_any(tf.cast(params.do_sample, tf.bool)), run(True), run(False))
    prompt_ids = tf.cast(prompt_ids, tf.int32)
    B, T = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    N = int(max_new_tokens)
    # Steps per row (a scalar, or one per row [B]); the loop runs for the longest.
    row_limit = tf.minimum(tf.cast(params.max_new_tokens, tf.int32), N)
    limit = tf.reduce_max(row_limit)
    # The history buffer: prompt, then N slots for new tokens (pad until written).
    history = tf.concat([prompt_ids, tf.fill([B, N], pad_token_id)], axis=1)
    history_mask = tf.concat([tf.cast(prompt_mask, tf.int32), tf.zeros([B, N], tf.int32)], axis=1)
    columns = tf.range(T + N)[None, :]

    def select(logits, step, history, history_mask, finished, lengths):
        scores = process_scores(
            logits,
            history,
            history_mask,
            step,
            params,
            eos_token_id=eos_token_id,
            no_repeat_ngram_size=no_repeat_ngram_size,
            max_no_repeat_ngram_size=max_no_repeat_ngram_size,
        )
        tokens = choose_tokens(scores, step, params, do_sample)
        finished = tf.logical_or(finished, step >= row_limit)  # a row at its own max_new_tokens
        tokens = tf.where(finished, pad_token_id, tokens)
        here = tf.equal(columns, T + step)  # [1, T + N]: this step's column
        history = tf.where(here, tokens[:, None], history)
        history_mask = tf.where(here, 1, history_mask)
        lengths = lengths + tf.cast(tf.logical_not(finished), tf.int32)
        finished = tf.logical_or(finished, tf.equal(tokens, eos_token_id))
        return tokens, history, history_mask, finished, lengths

    finished = tf.zeros([B], tf.bool)
    lengths = tf.zeros([B], tf.int32)
    step = tf.constant(0, tf.int32)
    tokens, history, history_mask, finished, lengths = select(
        first_logits, step, history, history_mask, finished, lengths
    )

    def cond(step, tokens, cache, history, history_mask, finished, lengths):
        return tf.logical_and(step + 1 < limit, tf.logical_not(tf.reduce_all(finished)))

    def body(step, tokens, cache, history, history_mask, finished, lengths):
        logits, cache = next_fn(tokens, cache, T + step)
        step = step + 1
        tokens, history, history_mask, finished, lengths = select(
            logits, step, history, history_mask, finished, lengths
        )
        return step, tokens, cache, history, history_mask, finished, lengths

    loop_vars = (step, tokens, cache, history, history_mask, finished, lengths)
    _, _, _, history, _, _, lengths = tf.while_loop(cond, body, loop_vars, maximum_iterations=N)
    return history[:, T:], lengths
