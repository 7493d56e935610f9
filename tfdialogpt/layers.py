"""GPT-2 building blocks: fused-projection attention with a preallocated KV cache, MLP, block.

Sublayer and weight names follow the checkpoints (`attn/c_attn/weight`, `ln_1/gamma`, ...), so
the name table in `checkpoint.py` is a plain string mapping. Everything here is stock TF ops:
the same code runs eagerly, in a plain graph (TF Serving without XLA) and under XLA.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla as tfxla
from tensorflow.python.ops import control_flow_util

from tfdialogpt import quantization
from tfdialogpt.config import DialoGPTConfig

# Additive attention bias for masked keys; large but finite, so a fully masked row (a left-pad
# query) gives a uniform softmax rather than NaN.
MASKED_BIAS = -1e9


def positions_from_mask(attention_mask: tf.Tensor) -> tf.Tensor:
    """Position ids [B, S] that count only real tokens: left padding shifts no position."""
    mask = tf.cast(attention_mask, tf.int32)
    return tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)


def in_xla_context() -> bool:
    """True while tracing a function that XLA will compile (`tf.function(jit_compile=True)`)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


@tf.custom_gradient
def _barrier(x):
    """XLA optimization barrier with an identity gradient (TF registers none for it, and XLA
    training steps differentiate through Conv1D)."""
    return tfxla.optimization_barrier(x)[0], lambda grad: grad


# How many row blocks of the kernel a one-row matmul under XLA is split into (see
# `one_row_matmul`).
ONE_ROW_SPLIT = 8


def one_row_matmul(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """`x @ kernel` for one row `x` [1, K] and `kernel` [K, N], as a sum of partial products
    over `ONE_ROW_SPLIT` contiguous row blocks of the kernel (one batched matmul, then a sum).

    The batch-1 decode step is a chain of such matrix-vector products, bound by reading the
    kernels. CPU XLA runs a plain [1, K] x [K, N] product as one multi-threaded Eigen call that
    reads DialoGPT's kernels at 27 to 40 GB/s on the 2-core benchmark machine; as a batch of
    [1, K/8] x [K/8, N] products (reshapes of the same buffers, no copy) it reads them at 36 to
    57 GB/s, and a whole greedy decode at batch 1 runs 3 to 27% faster: 85 to 87% of the
    memory-bandwidth bound at the host's usual 46 GB/s, less during its bursts to 63 GB/s (see
    benchmarks/RESULTS.md). Only the summation order changes. At batch 8 the blocked form is
    slower, so only one-row products take it.
    """
    K, N = kernel.shape
    parts = math.gcd(K, ONE_ROW_SPLIT)
    partial = tf.matmul(tf.reshape(x, [parts, 1, K // parts]), tf.reshape(kernel, [parts, K // parts, N]))
    # The barrier keeps the sum (and the bias add after it) out of the matmul's fusion.
    return tf.reduce_sum(_barrier(partial), axis=0)


class Conv1D(keras.layers.Layer):
    """GPT-2's "Conv1D": a dense projection whose kernel is stored (in, out), named `weight`."""

    def __init__(self, units: int, initializer_range: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.initializer_range = initializer_range

    def build(self, input_shape):
        self.weight = self.add_weight(
            name="weight",
            shape=(input_shape[-1], self.units),
            initializer=keras.initializers.RandomNormal(stddev=self.initializer_range),
        )
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")

    def call(self, x):
        # A 2-D matmul: the one-token decode step is a [B, C] x [C, N] GEMM, which CPU XLA
        # handles far better than a 3-D einsum.
        leading = tf.shape(x)[:-1]
        x2d = tf.reshape(x, [-1, tf.shape(x)[-1]])
        kernel = tf.cast(self.weight, x.dtype)
        if not in_xla_context():
            y = tf.matmul(x2d, kernel)
        elif x2d.shape[0] == 1:
            y = one_row_matmul(x2d, kernel)
        else:
            # Keeps the bias add out of the matmul: CPU XLA emits a fused matmul + add as its
            # own single-threaded loop, a bare matmul as a multi-threaded Eigen call (whole
            # greedy decode at batch 1: 1.75 s instead of 2.10 s, profiled side by side).
            y = _barrier(tf.matmul(x2d, kernel))
        y = y + tf.cast(self.bias, x.dtype)
        return tf.reshape(y, tf.concat([leading, [self.units]], axis=0))

    def quantize(self, mode=None, type_check=True, config=None):
        """Replaces the float kernel by int8 [units, in] with a scale per output channel
        (see `tfdialogpt.quantization`); Keras then routes calls to `_int8_call`."""
        from keras import dtype_policies

        quantization.check_mode(mode)
        q, scale = quantization.quantize_rows(self.weight.numpy().T)
        del self.weight  # untracked and freed: the int8 copy is all that stays
        self.weight_int8 = self.add_weight(
            name="weight_int8", shape=q.shape, initializer="zeros", dtype="int8", trainable=False
        )
        self.weight_scale = self.add_weight(name="weight_scale", shape=scale.shape, initializer="ones", trainable=False)
        self.weight_int8.assign(q)
        self.weight_scale.assign(scale)
        self._is_quantized = True  # Keras's flag: the policy change below must not quantize again
        self.dtype_policy = dtype_policies.get(f"{mode}_from_{self.dtype_policy.name}")

    def _int8_call(self, x):
        leading = tf.shape(x)[:-1]
        x2d = tf.reshape(x, [-1, x.shape[-1]])
        y = quantization.int8_matmul(x2d, self.weight_int8, self.weight_scale)
        y = tf.cast(y, x.dtype) + tf.cast(self.bias, x.dtype)
        return tf.reshape(y, tf.concat([leading, [self.units]], axis=0))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "initializer_range": self.initializer_range}


def update_cache(cache: tf.Tensor, new: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Writes `new` into `cache` at sequence position `index` (the second-to-last axis).

    `cache` is [2, B, H, S, D] (keys and values together) or [B * H, S, D] (keys or values
    alone), `new` the same with T positions. Under XLA this is one `dynamic-update-slice`,
    done in place inside the decode loop (no concat, no growth, and a loop-variant index does
    not force a recompile). Without XLA (eager, TF Serving without its XLA flags) the stock
    `TensorStridedSliceUpdate` does the same write; XLA cannot take that op with a loop-variant
    index, hence the two spellings.
    """
    index = tf.cast(index, tf.int32)
    rank = cache.shape.rank
    zero = tf.constant(0, tf.int32)
    if in_xla_context():
        start = [zero] * (rank - 2) + [index, zero]
        return tfxla.dynamic_update_slice(cache, new, tf.stack(start))
    shape = tf.shape(cache)
    begin = tf.stack([zero] * (rank - 2) + [index, zero])
    end = tf.concat([shape[: rank - 2], [index + tf.shape(new)[rank - 2], shape[rank - 1]]], axis=0)
    return tf.raw_ops.TensorStridedSliceUpdate(
        input=cache, begin=begin, end=end, strides=tf.ones([rank], tf.int32), value=new
    )


class Attention(keras.layers.Layer):
    """Causal multi-head self-attention with a fused q/k/v projection (`c_attn`)."""

    def __init__(self, config: DialoGPTConfig, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.hidden_size = config.hidden_size
        self.c_attn = Conv1D(3 * config.hidden_size, config.initializer_range, name="c_attn", dtype=self.dtype_policy)
        # GPT-2 scales the residual projections' init by 1/sqrt(2 * num_layers).
        proj_std = config.initializer_range / math.sqrt(2 * config.num_layers)
        self.c_proj = Conv1D(config.hidden_size, proj_std, name="c_proj", dtype=self.dtype_policy)
        self.attn_dropout = keras.layers.Dropout(config.attention_dropout, dtype=self.dtype_policy)
        self.resid_dropout = keras.layers.Dropout(config.residual_dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.c_attn.build(input_shape)
        self.c_proj.build(input_shape[:-1] + (self.hidden_size,))

    def call(self, x, bias, cache=None, cache_index=None, training=False):
        """Args:
            x: [B, T, C] hidden states of the new tokens.
            bias: [B, 1, T, S] additive float32 mask (0 = attend, MASKED_BIAS = masked), where
                S is T without a cache and the cache length with one.
            cache: optional [2, B, H, S, D] keys and values, or a (keys, values) pair of
                [B * H, S, D] buffers; the new ones are written at `cache_index` and attention
                runs over the whole buffer.
        Returns:
            ([B, T, C] output, updated cache or None).
        """
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        H, D = self.num_heads, self.head_size
        qkv = self.c_attn(x)
        qkv = tf.reshape(qkv, [B, T, 3, H, D])
        qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, B, H, T, D]
        q, k, v = qkv[0], qkv[1], qkv[2]
        paired = isinstance(cache, (tuple, list))
        if paired:
            # Separate key and value buffers [B * H, S, D]. Under XLA, `cache[0]` of a joint
            # [2, ...] buffer copies the whole key buffer every step (measured: ~7 ms/step at
            # batch 8, small shape); and a size-1 batch axis gets squeezed by a second fusion of
            # the write, which cannot share the buffer (the HLO copied the cache every step).
            S = tf.shape(cache[0])[1]
            k = update_cache(cache[0], tf.reshape(k, [B * H, T, D]), cache_index)
            v = update_cache(cache[1], tf.reshape(v, [B * H, T, D]), cache_index)
            cache = type(cache)((k, v))
            scores = tf.matmul(tf.reshape(q, [B * H, T, D]), k, transpose_b=True)  # [B * H, T, S]
            scores = tf.reshape(scores, [B, H, T, S])
        else:
            if cache is not None:
                cache = update_cache(cache, tf.stack([k, v]), cache_index)
                k, v = cache[0], cache[1]
            scores = tf.matmul(q, k, transpose_b=True)  # [B, H, T, S]
        scores = scores * tf.cast(1.0 / math.sqrt(D), q.dtype)
        # Softmax in float32, also under mixed precision (Keras casts `bias` to the compute dtype).
        scores = tf.cast(scores, tf.float32) + tf.cast(bias, tf.float32)
        probs = tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype)
        probs = self.attn_dropout(probs, training=training)
        if paired:
            out = tf.reshape(tf.matmul(tf.reshape(probs, [B * H, T, -1]), v), [B, H, T, D])
        else:
            out = tf.matmul(probs, v)  # [B, H, T, D]
        out = tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [B, T, H * D])
        return self.resid_dropout(self.c_proj(out), training=training), cache


class MLP(keras.layers.Layer):
    """Position-wise feed-forward: `c_fc` -> tanh-approximated GELU (GPT-2's) -> `c_proj`."""

    def __init__(self, config: DialoGPTConfig, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size = config.hidden_size
        self.mlp_size = config.mlp_size
        self.c_fc = Conv1D(config.mlp_size, config.initializer_range, name="c_fc", dtype=self.dtype_policy)
        proj_std = config.initializer_range / math.sqrt(2 * config.num_layers)
        self.c_proj = Conv1D(config.hidden_size, proj_std, name="c_proj", dtype=self.dtype_policy)
        self.dropout = keras.layers.Dropout(config.residual_dropout, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.c_fc.build(input_shape)
        self.c_proj.build(input_shape[:-1] + (self.mlp_size,))

    def call(self, x, training=False):
        h = keras.activations.gelu(self.c_fc(x), approximate=True)
        return self.dropout(self.c_proj(h), training=training)


class Block(keras.layers.Layer):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: DialoGPTConfig, **kwargs):
        super().__init__(**kwargs)
        eps = config.layer_norm_epsilon
        self.ln_1 = keras.layers.LayerNormalization(epsilon=eps, name="ln_1", dtype=self.dtype_policy)
        self.attn = Attention(config, name="attn", dtype=self.dtype_policy)
        self.ln_2 = keras.layers.LayerNormalization(epsilon=eps, name="ln_2", dtype=self.dtype_policy)
        self.mlp = MLP(config, name="mlp", dtype=self.dtype_policy)

    def build(self, input_shape):
        for layer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            layer.build(input_shape)

    def call(self, x, bias, cache=None, cache_index=None, training=False):
        a, cache = self.attn(self.ln_1(x), bias, cache=cache, cache_index=cache_index, training=training)
        x = x + a
        x = x + self.mlp(self.ln_2(x), training=training)
        return x, cache
