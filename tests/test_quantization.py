"""int8 weights (`DialoGPT.quantize("int8")`): the int8 matmul against a numpy reference of the
same scheme, closeness to float32, generation that agrees with itself (XLA, no XLA, no cache),
memory, and the refusals (save, train, second quantize, unknown mode)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY, padded_batch

from tfdialogpt import DialoGPT
from tfdialogpt.layers import Conv1D
from tfdialogpt.quantization import int8_matmul, quantize_rows


def numpy_int8_matmul(x, w):
    """The scheme written out independently: per-row abs-max int8 for x and for w (rows of w
    are output channels), an exact int32 product, then the two scales divided out."""
    x = x.astype(np.float32)
    w = w.astype(np.float32)
    sx = np.float32(127) / (np.abs(x).max(axis=1, keepdims=True) + np.float32(1e-7))
    sw = np.float32(127) / (np.abs(w).max(axis=1) + np.float32(1e-7))
    xq = np.clip(np.round(x * sx), -127, 127).astype(np.int32)
    wq = np.clip(np.round(w * sw[:, None]), -127, 127).astype(np.int32)
    return (xq @ wq.T).astype(np.float32) / (sx * sw[None, :])


@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_int8_matmul_equals_numpy_reference(rows, jit_compile):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 48)).astype(np.float32) * 3
    w = rng.standard_normal((40, 48)).astype(np.float32) * 0.02
    w[7] = 0.0  # an all-zero channel must not divide by zero
    q, scale = quantize_rows(w)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    fn = tf.function(lambda a: int8_matmul(a, tf.constant(q), tf.constant(scale)), jit_compile=jit_compile)
    ours = fn(tf.constant(x)).numpy()
    np.testing.assert_allclose(ours, numpy_int8_matmul(x, w), rtol=1e-5, atol=1e-6)
    assert np.all(ours[:, 7] == 0)
    # and close to the float product: the quantization error is small but not zero
    error = np.linalg.norm(ours - x @ w.T) / np.linalg.norm(x @ w.T)
    assert 1e-4 < error < 0.03


def test_quantize_rows_rounds_to_nearest_step():
    w = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    q, scale = quantize_rows(w)
    assert (np.abs(q / scale[:, None] - w) <= 0.5 / scale[:, None] + 1e-7).all()
    np.testing.assert_array_equal(np.abs(q).max(axis=1), 127)


@pytest.fixture(scope="module")
def float_and_int8(tiny_reference):
    path = tiny_reference.path("pt_safetensors")
    return DialoGPT.from_pretrained(path), DialoGPT.from_pretrained(path, quantize="int8")


def test_quantized_logits_are_close_to_float(float_and_int8):
    model, quantized = float_and_int8
    ids, mask = padded_batch(np.random.default_rng(0), TINY.vocab_size, [9, 20], side="right")
    expected = model(ids, attention_mask=mask).numpy()[mask.astype(bool)]
    got = quantized(ids, attention_mask=mask).numpy()[mask.astype(bool)]
    error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert 1e-5 < error < 0.05, error  # changed (really int8), but little
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.9


def test_quantized_model_holds_int8_and_no_float_kernels(float_and_int8):
    model, quantized = float_and_int8
    assert model.weight_quantization is None and quantized.weight_quantization == "int8"
    convs = [layer for layer in quantized._flatten_layers() if isinstance(layer, Conv1D)]
    assert len(convs) == 4 * TINY.num_layers
    for layer in convs:
        assert not hasattr(layer, "weight") and layer.weight_int8.dtype == "int8"
    assert quantized.wte.embeddings.dtype == "int8"
    assert not any(v.trainable and v.dtype == "int8" for v in quantized.weights)

    def nbytes(m):
        return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in m.weights)

    # Only the position table, layer norms, biases and scales stay float.
    float_rest = TINY.max_positions * TINY.hidden_size * 4
    assert nbytes(quantized) - float_rest < 0.3 * (nbytes(model) - float_rest)


def test_quantized_generation_agrees_with_itself(float_and_int8):
    _, quantized = float_and_int8
    ids, mask = padded_batch(np.random.default_rng(1), TINY.vocab_size - 1, [5, 11, 8], side="left")
    xla = quantized.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8).sequences.numpy()
    plain = quantized.generate(
        ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, jit_compile=False
    ).sequences.numpy()
    np.testing.assert_array_equal(xla, plain)
    # The cached loop equals argmax over full uncached passes of the quantized model.
    seq, seq_mask = ids, mask
    for step in range(8):
        logits = quantized(seq, attention_mask=seq_mask).numpy()[:, -1]
        np.testing.assert_array_equal(logits.argmax(-1), xla[:, step])
        seq = np.concatenate([seq, xla[:, step : step + 1]], axis=1)
        seq_mask = np.concatenate([seq_mask, np.ones_like(seq_mask[:, :1])], axis=1)


def test_quantized_model_refuses_what_it_cannot_do(float_and_int8, tiny_reference, tmp_path):
    from tfdialogpt.training import TrainingSettings
    from tfdialogpt.training.fit import compile_for_training

    _, quantized = float_and_int8
    with pytest.raises(ValueError, match="int8 weights, which HF checkpoints cannot store"):
        quantized.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="cannot be trained"):
        compile_for_training(quantized, TrainingSettings(), total_updates=10, jit_compile=False)
    with pytest.raises(ValueError, match="already quantized"):
        quantized.quantize("int8")
    with pytest.raises(ValueError, match="unsupported quantization mode 'int4'"):
        DialoGPT.from_pretrained(tiny_reference.path("pt_safetensors"), quantize="int4")
