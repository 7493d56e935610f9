"""Logit parity with HF transformers (the reference implementation), cache and padding."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import FORMATS, TINY, padded_batch

from tfdialogpt import DialoGPT

TOL = 1e-4


def masked_max_diff(a, b, mask):
    return float(np.max(np.abs(a - b) * mask[..., None]))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_tiny_logits_equal_transformers(tiny_reference, fmt, side):
    ids, mask = padded_batch(np.random.default_rng(0), TINY.vocab_size, [9, 4, 7], side=side)
    model = DialoGPT.from_pretrained(tiny_reference.path(fmt))
    ours = model(ids, attention_mask=mask).numpy()
    assert ours.shape == (3, 9, TINY.vocab_size) and ours.dtype == np.float32
    assert masked_max_diff(ours, tiny_reference.pt_logits(ids, mask), mask) < TOL
    assert masked_max_diff(ours, tiny_reference.tf_logits(ids, mask), mask) < TOL


@pytest.mark.slow
def test_small_shape_logits_equal_transformers(small_reference):
    """The full DialoGPT-small shape, from every format transformers writes."""
    ids, mask = padded_batch(np.random.default_rng(1), 50257, [24, 11, 17], side="left")
    pt_logits = small_reference.pt_logits(ids, mask)
    tf_logits = small_reference.tf_logits(ids, mask)
    for fmt in FORMATS:
        model = DialoGPT.from_pretrained(small_reference.path(fmt))
        ours = model(ids, attention_mask=mask).numpy()
        assert masked_max_diff(ours, pt_logits, mask) < TOL, fmt
        assert masked_max_diff(ours, tf_logits, mask) < TOL, fmt
        del model


@pytest.fixture(scope="module")
def tiny_model(tiny_reference):
    return DialoGPT.from_pretrained(tiny_reference.path("pt_safetensors"))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_equal_rows_run_alone(tiny_model, side):
    lengths = [10, 3, 6]
    ids, mask = padded_batch(np.random.default_rng(2), TINY.vocab_size, lengths, side=side)
    batch = tiny_model(ids, attention_mask=mask).numpy()
    for row, n in enumerate(lengths):
        span = slice(10 - n, 10) if side == "left" else slice(0, n)
        alone = tiny_model(ids[row : row + 1, span]).numpy()[0]
        np.testing.assert_allclose(batch[row, span], alone, atol=TOL)


def test_cached_steps_equal_full_pass(tiny_model):
    """Prefill a left-padded prompt, then feed one token at a time into a longer buffer."""
    ids, mask = padded_batch(np.random.default_rng(3), TINY.vocab_size, [12, 5, 8], side="left")
    full = tiny_model(ids, attention_mask=mask).numpy()
    prompt = 6
    buffer = 16  # longer than the sequence: the unused tail must not matter
    cache_mask = np.concatenate([mask, np.ones((3, buffer - 12), np.int32)], axis=1)
    cache = tiny_model.init_cache(3, buffer)
    logits, cache = tiny_model.call_with_cache(ids[:, :prompt], cache, 0, attention_mask=cache_mask)
    steps = [logits.numpy()]
    for t in range(prompt, 12):
        logits, cache = tiny_model.call_with_cache(ids[:, t : t + 1], cache, t, attention_mask=cache_mask)
        steps.append(logits.numpy())
    # The one layout: per layer, (keys, values) buffers of [B * H, S, D].
    assert len(cache) == TINY.num_layers and all(len(layer) == 2 for layer in cache)
    assert {tuple(t.shape) for t in tf.nest.flatten(cache)} == {(3 * TINY.num_heads, buffer, TINY.head_size)}
    assert masked_max_diff(np.concatenate(steps, axis=1), full, mask) < TOL


def test_cache_path_compiles_under_xla_and_matches(tiny_model):
    ids, mask = padded_batch(np.random.default_rng(4), TINY.vocab_size, [7, 4], side="left")
    full = tiny_model(ids, attention_mask=mask).numpy()

    @tf.function(jit_compile=True)
    def prefill(ids, mask):
        cache = tiny_model.init_cache(2, 7)
        return tiny_model.call_with_cache(ids, cache, 0, attention_mask=mask)

    logits, _ = prefill(tf.constant(ids), tf.constant(mask))
    assert masked_max_diff(logits.numpy(), full, mask) < TOL


@pytest.mark.parametrize("shape", [(768, 40), (12, 5), (7, 3)], ids=["split_8", "split_4", "unsplit"])
def test_one_row_matmul_equals_matmul(shape):
    """The batch-1 decode's matmul (row blocks of the kernel, summed) equals the plain product,
    also for widths that 8 does not divide."""
    from tfdialogpt.layers import one_row_matmul

    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, shape[0])).astype(np.float32)
    kernel = rng.standard_normal(shape).astype(np.float32)
    got = tf.function(one_row_matmul, jit_compile=True)(tf.constant(x), tf.constant(kernel))
    np.testing.assert_allclose(got.numpy(), x @ kernel, rtol=1e-5, atol=1e-4)


def test_one_row_decode_step_under_xla_uses_the_split_matmul(tiny_model, monkeypatch):
    """A one-token step at batch 1 under XLA takes `one_row_matmul` for every projection (and
    matches the eager step); more rows, or no XLA, take the plain matmul."""
    from tfdialogpt import layers

    calls = []
    original = layers.one_row_matmul
    monkeypatch.setattr(layers, "one_row_matmul", lambda x, kernel: calls.append(x.shape[0]) or original(x, kernel))

    def step(ids):
        cache = tiny_model.init_cache(ids.shape[0], 4)
        return tiny_model.call_with_cache(ids, cache, 0)[0]

    one = tf.constant([[5]], tf.int32)
    xla = tf.function(step, jit_compile=True)(one)
    assert calls == [1] * 4 * TINY.num_layers  # c_attn, c_proj, c_fc, mlp c_proj per layer
    np.testing.assert_allclose(xla.numpy(), step(one).numpy(), atol=1e-5)
    tf.function(step, jit_compile=True)(tf.constant([[5], [6]], tf.int32))
    assert len(calls) == 4 * TINY.num_layers


def test_hidden_states_and_head(tiny_model):
    ids = np.arange(5, dtype=np.int32)[None]
    hidden, _ = tiny_model.call_with_cache(ids, tiny_model.init_cache(1, 5), 0, return_hidden=True)
    assert hidden.shape == (1, 5, TINY.hidden_size)
    np.testing.assert_allclose(tiny_model.lm_head(hidden).numpy(), tiny_model(ids).numpy(), atol=1e-5)


def test_dict_inputs_as_fit_feeds_them(tiny_model):
    ids, mask = padded_batch(np.random.default_rng(5), TINY.vocab_size, [6, 2], side="right")
    a = tiny_model({"input_ids": ids, "attention_mask": mask}).numpy()
    b = tiny_model(ids, attention_mask=mask).numpy()
    np.testing.assert_array_equal(a, b)


def test_layer_names_follow_the_checkpoint(tiny_model):
    paths = {v.path for v in tiny_model.weights}
    for expected in (
        "wte/embeddings",
        "wpe/embeddings",
        "h_0/ln_1/gamma",
        "h_0/attn/c_attn/weight",
        "h_1/attn/c_proj/bias",
        "h_1/ln_2/beta",
        "h_1/mlp/c_fc/weight",
        "h_0/mlp/c_proj/weight",
        "ln_f/gamma",
    ):
        assert expected in paths
    assert len(tiny_model.weights) == 4 + 12 * TINY.num_layers
    assert sum(int(np.prod(v.shape)) for v in tiny_model.weights) == TINY.num_parameters


def test_mixed_bfloat16_policy(tiny_reference, tiny_model):
    """`dtype="mixed_bfloat16"`: bf16 compute, float32 weights, float32 logits near float32's."""
    mixed = DialoGPT.from_pretrained(tiny_reference.path("tf_h5"), dtype="mixed_bfloat16")
    assert mixed.h[0].attn.c_attn.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in mixed.weights)
    ids, mask = padded_batch(np.random.default_rng(6), TINY.vocab_size, [8, 5], side="left")
    logits = mixed(ids, attention_mask=mask).numpy()
    reference = tiny_model(ids, attention_mask=mask).numpy()
    assert logits.dtype == np.float32
    assert masked_max_diff(logits, reference, mask) < 0.05  # bf16 has 8 bits of mantissa
    assert {t.dtype for t in tf.nest.flatten(mixed.init_cache(2, 4))} == {tf.bfloat16}
