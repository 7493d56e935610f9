"""Generation: token-identical to HF transformers (PyTorch `generate`), the loop on fake models,
sampling validity and reproducibility, buckets that do not retrace, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, hf_config, padded_batch

from tfdialogpt import DialoGPT
from tfdialogpt.generation import COMPILED, SamplingParams, bucket_shapes, decode

EOS = TINY.eos_token_id


def dialogue_batch(seed=0, lengths=(7, 12, 18)):
    """Three left-padded histories of different lengths, turns separated by EOS, ending in EOS."""
    rng = np.random.default_rng(seed)
    ids, mask = padded_batch(rng, TINY.vocab_size - 1, lengths, side="left")
    total = ids.shape[1]
    for row, n in enumerate(lengths):
        start = total - n
        ids[row, start + n // 2] = EOS  # a turn separator inside the history
        ids[row, total - 1] = EOS  # the history ends with EOS: the reply comes next
    return ids, mask


def hf_generate(pt_model, ids, mask, max_new_tokens, eos=EOS, **kwargs):
    """HF PyTorch generate, new tokens only, padded with EOS to `max_new_tokens`."""
    import torch

    out = pt_model.generate(
        torch.tensor(ids, dtype=torch.long),
        attention_mask=torch.tensor(mask, dtype=torch.long),
        max_new_tokens=max_new_tokens,
        min_length=0,
        do_sample=False,
        pad_token_id=eos,
        eos_token_id=eos,
        **kwargs,
    ).numpy()[:, ids.shape[1] :]
    return np.pad(out, ((0, 0), (0, max_new_tokens - out.shape[1])), constant_values=eos)


@pytest.fixture(scope="module")
def tiny_model(tiny_reference):
    return DialoGPT.from_pretrained(tiny_reference.path("pt_safetensors"))


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    """TINY with larger random weights: the reference's small init makes a 2-layer model echo
    its last token; here attention and MLP matter, so continuations vary."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    config = hf_config(TINY)
    config.initializer_range = 0.3
    pt = GPT2LMHeadModel(config).eval()
    directory = tmp_path_factory.mktemp("lively")
    pt.save_pretrained(directory)
    return pt, DialoGPT.from_pretrained(directory)


# ---- parity with HF transformers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"repetition_penalty": 1.3},
        {"no_repeat_ngram_size": 2},
        {"num_beams": 3},
        {"num_beams": 3, "length_penalty": 0.6, "repetition_penalty": 1.2, "no_repeat_ngram_size": 3},
    ],
    ids=["greedy", "repetition_penalty", "no_repeat_ngram", "beam", "beam_processors"],
)
def test_matches_hf_on_tiny_reference(tiny_reference, tiny_model, options):
    ids, mask = dialogue_batch()
    ours = tiny_model.generate(ids, attention_mask=mask, max_new_tokens=10, **options)
    expected = hf_generate(tiny_reference.pt, ids, mask, 10, **options)
    np.testing.assert_array_equal(ours.sequences.numpy(), expected)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"repetition_penalty": 1.4},
        {"no_repeat_ngram_size": 2},
        {"min_new_tokens": 6},
        {"num_beams": 4},
        {"num_beams": 3, "length_penalty": 2.0, "no_repeat_ngram_size": 2},
        {"num_beams": 2, "length_penalty": -1.0},
    ],
    ids=["greedy", "repetition_penalty", "no_repeat_ngram", "min_new_tokens", "beam", "beam_long", "beam_short"],
)
def test_matches_hf_with_rows_ending_at_different_steps(lively, options):
    pt, model = lively
    ids, mask = dialogue_batch(seed=1)
    # An "EOS" that the model emits mid-reply, so rows stop at different steps; the histories
    # still hold the real EOS (210) as turn separator.
    free_run = model.generate(ids, attention_mask=mask, max_new_tokens=16).sequences.numpy()
    eos = int(free_run[0, 3])
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=16, eos_token_id=eos, **options)
    expected = hf_generate(pt, ids, mask, 16, eos=eos, **options)
    np.testing.assert_array_equal(ours.sequences.numpy(), expected)
    produced = ours.lengths.numpy()
    for row, length in enumerate(produced):
        assert (ours.sequences.numpy()[row, length:] == eos).all()
    if not options:
        assert produced[0] == 4 and produced.max() > 4  # rows really did end at different steps


@pytest.mark.parametrize(
    "options", [{}, {"repetition_penalty": 1.4, "no_repeat_ngram_size": 2}], ids=["greedy", "processors"]
)
def test_matches_hf_at_batch_one(lively, options):
    """Batch 1 decodes through its own matmul form under XLA (`layers.one_row_matmul`)."""
    pt, model = lively
    ids, mask = dialogue_batch(seed=5)
    for row in range(len(ids)):
        real = mask[row].astype(bool)
        one = ids[row : row + 1, real]
        ours = model.generate(one, max_new_tokens=12, **options)
        expected = hf_generate(pt, one, np.ones_like(one), 12, **options)
        np.testing.assert_array_equal(ours.sequences.numpy(), expected)


def test_prompt_eos_does_not_stop_a_row(lively):
    pt, model = lively
    ids, mask = dialogue_batch(seed=2)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=12)
    np.testing.assert_array_equal(out.sequences.numpy(), hf_generate(pt, ids, mask, 12))
    assert (out.lengths.numpy() == 12).all()  # every history holds EOS twice, none stopped


@pytest.mark.slow
def test_matches_hf_on_small_shape(small_reference):
    model = DialoGPT.from_pretrained(small_reference.path("pt_safetensors"))
    rng = np.random.default_rng(3)
    ids, mask = padded_batch(rng, 50000, [9, 23, 40], side="left")
    ids[:, -1] = 50256
    ids[1, -10] = 50256
    for options in ({}, {"num_beams": 3}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}):
        ours = model.generate(ids, attention_mask=mask, max_new_tokens=12, **options)
        np.testing.assert_array_equal(
            ours.sequences.numpy(), hf_generate(small_reference.pt, ids, mask, 12, eos=50256, **options)
        )
    # Batch 1 (the longest history alone) decodes through `layers.one_row_matmul`.
    one = ids[2:3]
    ours = model.generate(one, max_new_tokens=12)
    np.testing.assert_array_equal(
        ours.sequences.numpy(), hf_generate(small_reference.pt, one, mask[2:3], 12, eos=50256)
    )


# ---- the compiled loop against the plain model ----------------------------------------------------


def test_cached_xla_greedy_equals_uncached_argmax_loop(lively):
    _, model = lively
    ids, mask = dialogue_batch(seed=4)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=9, min_new_tokens=9).sequences.numpy()
    seq, seq_mask = ids, mask
    for _ in range(9):  # the whole sequence through the full forward every step, no cache
        logits = model(seq, attention_mask=seq_mask).numpy()[:, -1]
        logits[:, EOS] = -np.inf  # min_new_tokens
        token = logits.argmax(-1).astype(np.int32)
        seq = np.concatenate([seq, token[:, None]], axis=1)
        seq_mask = np.concatenate([seq_mask, np.ones_like(token)[:, None]], axis=1)
    np.testing.assert_array_equal(ours, seq[:, ids.shape[1] :])


def test_without_xla_gives_the_same_tokens(lively):
    _, model = lively
    ids, mask = dialogue_batch(seed=5)
    for options in ({}, {"num_beams": 2, "no_repeat_ngram_size": 2}):
        xla = model.generate(ids, attention_mask=mask, max_new_tokens=8, **options)
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=8, jit_compile=False, **options)
        np.testing.assert_array_equal(xla.sequences.numpy(), plain.sequences.numpy())
        np.testing.assert_array_equal(xla.lengths.numpy(), plain.lengths.numpy())


def test_right_padding_is_repadded_left(lively):
    _, model = lively
    rng = np.random.default_rng(6)
    right_ids, right_mask = padded_batch(rng, 200, [4, 11], side="right")
    left_ids, left_mask = np.zeros_like(right_ids), np.zeros_like(right_mask)
    for row, n in enumerate([4, 11]):
        left_ids[row, -n:], left_mask[row, -n:] = right_ids[row, :n], 1
    right = model.generate(right_ids, attention_mask=right_mask, max_new_tokens=6).sequences.numpy()
    left = model.generate(left_ids, attention_mask=left_mask, max_new_tokens=6).sequences.numpy()
    alone = model.generate(left_ids[:1, -4:], max_new_tokens=6).sequences.numpy()
    np.testing.assert_array_equal(right, left)
    np.testing.assert_array_equal(left[:1], alone)


def test_sampling_is_reproducible_under_a_seed(lively):
    _, model = lively
    ids, mask = dialogue_batch(seed=7)
    kwargs = dict(attention_mask=mask, max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9, temperature=0.8)
    first = model.generate(ids, seed=11, **kwargs).sequences.numpy()
    again = model.generate(ids, seed=11, **kwargs).sequences.numpy()
    other = model.generate(ids, seed=12, **kwargs).sequences.numpy()
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()


def test_run_time_search_choice_matches_the_static_graphs(lively):
    """`make_generate_fn(do_sample=None)` (what the exporter wraps) follows its `do_sample`
    input and gives the tokens of the greedy-only and sampling-only graphs."""
    from tfdialogpt.generation import make_generate_fn

    _, model = lively
    ids, mask = dialogue_batch(seed=10, lengths=(5, 9, 14))
    fn = make_generate_fn(model, max_new_tokens=16, do_sample=None)
    padded_ids = np.concatenate([np.full((3, 2), EOS, np.int32), ids], axis=1)  # T = 16, a bucket
    padded_mask = np.concatenate([np.zeros((3, 2), np.int32), mask], axis=1)

    def run(do_sample):
        return fn(padded_ids, padded_mask, 10, 0.9, 8, 0.95, 1.1, 5, 0, do_sample, 1.0)["sequences"].numpy()[:, :10]

    kwargs = dict(attention_mask=mask, max_new_tokens=10, repetition_penalty=1.1)
    greedy = model.generate(ids, **kwargs).sequences.numpy()
    sampled = model.generate(ids, do_sample=True, temperature=0.9, top_k=8, top_p=0.95, seed=5, **kwargs)
    np.testing.assert_array_equal(run(False), greedy)
    np.testing.assert_array_equal(run(True), sampled.sequences.numpy())


# ---- the decode loop on a fake model ---------------------------------------------------------------


def fixed_logits_fn(table):
    """A fake model whose next-token logits depend only on the step: table [steps, B, V]."""
    table = tf.constant(table, tf.float32)

    def next_fn(tokens, cache, index):
        step = cache + 1
        return tf.gather(table, step), step

    return table[0], tf.constant(0), next_fn


def test_loop_stops_rows_at_their_eos_and_pads_after():
    V, eos, pad = 6, 5, 0
    steps = np.zeros((4, 2, V), np.float32)
    steps[:, :, 2] = 1.0  # prefer token 2 ...
    steps[1, 0, eos] = 2.0  # ... row 0 ends at step 1
    steps[3, 1, eos] = 2.0  # ... row 1 at step 3
    first, cache, next_fn = fixed_logits_fn(steps)
    prompt = tf.constant([[eos, 1], [1, eos]])  # EOS in the prompt does not count
    seqs, lengths = decode(
        next_fn,
        first,
        cache,
        prompt,
        tf.ones_like(prompt),
        SamplingParams(max_new_tokens=4),
        max_new_tokens=8,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    assert seqs.numpy().tolist() == [[2, eos, 0, 0, 0, 0, 0, 0], [2, 2, 2, eos, 0, 0, 0, 0]]
    assert lengths.numpy().tolist() == [2, 4]


def test_loop_ends_early_once_every_row_has_ended():
    """The loop stops calling the model once every row has emitted EOS (finished rows would
    emit pad anyway, so only a count of the model calls shows the early exit)."""
    V, eos = 4, 3

    def model_calls(eos_step: int | None) -> tuple[int, list]:
        steps = np.zeros((8, 1, V), np.float32)
        if eos_step is not None:
            steps[eos_step, 0, eos] = 1.0
        first, cache, fake = fixed_logits_fn(steps)
        counter = tf.Variable(0)

        def next_fn(tokens, cache, index):
            with tf.control_dependencies([counter.assign_add(1)]):
                return fake(tokens, cache, index)

        @tf.function(jit_compile=True)
        def run():
            return decode(
                next_fn,
                first,
                cache,
                tf.constant([[1]]),
                tf.constant([[1]]),
                SamplingParams(max_new_tokens=8),
                max_new_tokens=8,
                eos_token_id=eos,
                pad_token_id=0,
            )

        seqs, lengths = run()
        return int(counter.numpy()), [seqs.numpy().tolist(), lengths.numpy().tolist()]

    calls, (seqs, lengths) = model_calls(eos_step=2)
    assert lengths == [3]
    assert seqs == [[0, 0, eos, 0, 0, 0, 0, 0]]
    full_calls, (_, full_lengths) = model_calls(eos_step=None)
    assert full_lengths == [8]
    assert full_calls >= 7, "without EOS every step runs"
    assert calls <= 3 < full_calls, f"{calls} model calls after EOS at step 2: the loop did not stop"


def test_sampling_only_draws_tokens_allowed_by_top_k_and_top_p():
    V, B, T = 12, 4, 30
    logits = np.linspace(3.0, -3.0, V, dtype=np.float32)  # token 0 most likely
    table = np.broadcast_to(logits, (T, B, V)).copy()
    first, cache, next_fn = fixed_logits_fn(table)
    prompt = tf.ones([B, 2], tf.int32)

    def sample(**controls):
        params = SamplingParams(max_new_tokens=T, do_sample=True, **controls)
        seqs, _ = tf.function(
            lambda: decode(
                next_fn,
                first,
                cache,
                prompt,
                tf.ones_like(prompt),
                params,
                max_new_tokens=T,
                eos_token_id=V - 1,
                pad_token_id=0,
            ),
            jit_compile=True,
        )()
        return seqs.numpy()

    top_k = sample(top_k=3, seed=1)
    assert set(np.unique(top_k)) <= {0, 1, 2} and len(np.unique(top_k)) == 3
    probs = np.exp(logits) / np.exp(logits).sum()
    nucleus = int(np.searchsorted(np.cumsum(probs), 0.8) + 1)  # smallest prefix with mass >= 0.8
    top_p = sample(top_p=0.8, seed=2)
    assert set(np.unique(top_p)) <= set(range(nucleus)) and len(np.unique(top_p)) > 1
    both = sample(top_k=2, top_p=0.99, temperature=3.0, seed=3)
    assert set(np.unique(both)) == {0, 1}
    np.testing.assert_array_equal(sample(top_k=5, seed=4), sample(top_k=5, seed=4))
    assert (sample(top_k=5, seed=4) != sample(top_k=5, seed=5)).any()


# ---- buckets and the compiled-function cache ---------------------------------------------------------


def test_bucket_shapes_round_up_and_fit_the_positions():
    assert bucket_shapes(5, 10, 1024) == (16, 16)
    assert bucket_shapes(17, 64, 1024) == (32, 64)
    assert bucket_shapes(1000, 20, 1024) == (1000, 24)
    assert bucket_shapes(60, 30, 96) == (64, 32)


def test_new_prompt_length_in_the_same_bucket_does_not_retrace(lively):
    _, model = lively
    COMPILED.clear(model)
    ids, mask = dialogue_batch(seed=8, lengths=(5, 9, 11))
    model.generate(ids, attention_mask=mask, max_new_tokens=5)
    (key,) = COMPILED.keys(model)
    fn = COMPILED.get(model, key, None)
    assert fn.experimental_get_tracing_count() == 1
    ids2, mask2 = dialogue_batch(seed=9, lengths=(3, 14, 6))  # new prompt length, same bucket
    model.generate(ids2, attention_mask=mask2, max_new_tokens=7, repetition_penalty=1.2, top_k=3)
    assert COMPILED.keys(model) == [key]
    assert fn.experimental_get_tracing_count() == 1
    model.generate(ids2, attention_mask=mask2, max_new_tokens=20)  # a new bucket: a new function
    assert len(COMPILED.keys(model)) == 2


# ---- the chunked prefill -----------------------------------------------------------------------------

LOGITS_TOL = 1e-4  # as tests/test_model.py


def _prefill(model, ids, mask, chunk_size, new_tokens=4):
    """(first-token logits [B, V], cache) of the prompt run into a cache with room for `new_tokens`."""
    from tfdialogpt.generation.prefill import prefill

    full_mask = np.concatenate([mask, np.ones((len(ids), new_tokens), np.int32)], axis=1)
    cache = model.init_cache(len(ids), ids.shape[1] + new_tokens)
    last, cache = prefill(model, tf.constant(ids), tf.constant(full_mask), cache, chunk_size)
    return model.lm_head(last).numpy(), cache


@pytest.mark.parametrize("chunk_size", [4, 5, 7, 17])
def test_chunked_prefill_equals_the_one_pass_prefill(lively, chunk_size):
    """Three left-padded rows of 18 positions: chunks that divide it and chunks that do not
    (the last chunk then overlaps the one before)."""
    _, model = lively
    ids, mask = dialogue_batch(seed=10)
    B, T = ids.shape
    H, D = TINY.num_heads, TINY.head_size
    one_logits, one_cache = _prefill(model, ids, mask, None)
    logits, cache = _prefill(model, ids, mask, chunk_size)
    np.testing.assert_allclose(logits, one_logits, atol=LOGITS_TOL)
    np.testing.assert_allclose(logits, model(ids, attention_mask=mask).numpy()[:, -1], atol=LOGITS_TOL)
    # Every real token's keys and values (a left pad's are never attended to).
    real = mask.astype(bool)
    for buffer, one_buffer in zip(tf.nest.flatten(cache), tf.nest.flatten(one_cache), strict=True):
        rows, one_rows = (np.asarray(b).reshape(B, H, -1, D).transpose(0, 2, 1, 3)[:, :T] for b in (buffer, one_buffer))
        np.testing.assert_allclose(rows[real], one_rows[real], atol=LOGITS_TOL)


@pytest.mark.parametrize(
    "jit_compile, static_length, options",
    [(False, False, {}), (False, True, {}), (True, True, {}), (False, False, {"num_beams": 3})],
    ids=["plain_any_length", "plain", "xla", "plain_beam"],
)
def test_chunked_prefill_generates_what_hf_does(lively, jit_compile, static_length, options):
    """The generate function with chunks of 8 over left-padded prompts of 30 positions, in the
    forms the exported `generate` signature (any length, no XLA) and `model.generate` take."""
    from tfdialogpt.generation.engine import make_generate_fn, runtime_inputs
    from tfdialogpt.generation_config import GenerationConfig

    pt, model = lively
    ids, mask = dialogue_batch(seed=11, lengths=(9, 23, 30))
    fn = make_generate_fn(
        model,
        max_new_tokens=12,
        jit_compile=jit_compile,
        prompt_length=ids.shape[1] if static_length else None,
        prefill_chunk_size=8,
        **options,
    )
    config = GenerationConfig(max_new_tokens=12, seed=0, **options).validate(vocab_size=TINY.vocab_size)
    config = config.replace(eos_token_id=EOS, pad_token_id=EOS)
    ours = fn(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **runtime_inputs(config))
    np.testing.assert_array_equal(ours["sequences"].numpy(), hf_generate(pt, ids, mask, 12, **options))


# ---- argument checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -3}, "max_new_tokens"),
        ({"min_new_tokens": -1}, "min_new_tokens"),
        ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"temperature": 0.0}, "temperature"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 2, "do_sample": True}, "beam sampling"),
        ({"max_new_tokens": 90}, "positions"),
        ({"eos_token_id": 500}, "eos_token_id"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_before_compiling(lively, kwargs, message):
    _, model = lively
    COMPILED.clear(model)
    ids, mask = dialogue_batch()
    with pytest.raises(ValueError, match=message):
        model.generate(ids, attention_mask=mask, **kwargs)
    assert COMPILED.keys(model) == []


def test_bad_prompts_raise(lively):
    _, model = lively
    ids, mask = dialogue_batch()
    empty = mask.copy()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] are empty"):
        model.generate(ids, attention_mask=empty)
    with pytest.raises(ValueError, match="non-empty"):
        model.generate(np.zeros((2, 0), np.int32))
    with pytest.raises(ValueError, match="outside"):
        model.generate(np.array([[1, TINY.vocab_size]]))
    with pytest.raises(ValueError, match="shape"):
        model.generate(ids, attention_mask=mask[:, 1:])
