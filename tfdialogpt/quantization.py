"""int8 weights for fast CPU inference: per-channel int8 weights, per-row int8 activations.

`DialoGPT.quantize("int8")` stores every projection (`c_attn`, `c_proj`, `c_fc`) and the tied
token embedding / LM head as int8 with one float scale per output channel, and drops the
float32 copies (a quarter of the memory). Each matmul then quantizes its input rows on the fly
(symmetric abs-max, one scale per row) and runs an int8 x int8 -> int32 matmul, which XLA on
CPU hands to YNNPACK: on the 2-core benchmark machine generation runs 1.6 to 1.7x faster than
float32 at batch 1 and 8 (see benchmarks/RESULTS.md, with the accuracy cost measured against
float32 by `benchmarks/quantization.py`). Inference only: a quantized model cannot be
trained or saved as an HF checkpoint.

The scale convention is Keras's (`keras.quantizers.abs_max_quantize`): `q = round(w * scale)`,
so `w ~= q / scale`. Everything is stock TF ops, so a quantized model exports to a SavedModel
that TF Serving runs with or without XLA.
"""

from __future__ import annotations

import numpy as np

MODES = ("int8",)
# Symmetric int8 range: -128 is left unused so that negation never overflows.
QMAX = 127.0
EPSILON = 1e-7  # keras.backend.epsilon(): guards an all-zero row


def check_mode(mode) -> str:
    """Returns `mode` if it is a supported quantization mode, else raises ValueError."""
    if mode not in MODES:
        raise ValueError(f"unsupported quantization mode {mode!r}; supported: {', '.join(MODES)}")
    return mode


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 quantization of a 2-D float array [N, K].

    Returns `(q int8 [N, K], scale float32 [N])` with `weight[n] ~= q[n] / scale[n]`.
    """
    weight = np.asarray(weight, np.float32)
    scale = QMAX / (np.abs(weight).max(axis=1) + EPSILON)
    q = np.clip(np.round(weight * scale[:, None]), -QMAX, QMAX).astype(np.int8)
    return q, scale.astype(np.float32)


def int8_matmul(x, weight, weight_scale):
    """`x @ dequantized(weight).T` with both operands in int8.

    Args:
        x: float [M, K] activations; each row is quantized with its own abs-max scale.
        weight: int8 [N, K] (output channels first: the faster layout for YNNPACK).
        weight_scale: float32 [N], as returned by `quantize_rows`.
    Returns:
        float32 [M, N].
    """
    import tensorflow as tf  # here, so that `check_mode` and `quantize_rows` need no TF

    x = tf.cast(x, tf.float32)
    M = x.shape[0]
    if M == 1:
        # XLA's CPU backend sends a one-row int8 matmul to its own slow loop, a two-row one
        # to YNNPACK; the zero row costs nothing (measured: 0.12 vs 0.20 ms for 768 x 3072).
        x = tf.concat([x, tf.zeros_like(x)], axis=0)
    x_scale = QMAX / (tf.reduce_max(tf.abs(x), axis=1, keepdims=True) + EPSILON)  # [M, 1]
    xq = tf.cast(tf.clip_by_value(tf.round(x * x_scale), -QMAX, QMAX), tf.int8)
    acc = tf.matmul(xq, weight, transpose_b=True, output_type=tf.int32)  # [M, N]
    y = tf.cast(acc, tf.float32) / (x_scale * weight_scale)
    return y[:1] if M == 1 else y
