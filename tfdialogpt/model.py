"""DialoGPT: GPT-2 as a Keras 3 model (TF backend), readable top to bottom.

token + position embeddings -> `h_0 .. h_{L-1}` pre-LN blocks -> `ln_f` -> LM head tied to `wte`.

Two ways in:
- `model(input_ids, attention_mask=mask)` -> logits [B, T, vocab] (training, scoring).
- `model.call_with_cache(input_ids, cache, cache_index, attention_mask)` -> (logits, cache):
  the cache is preallocated by `init_cache` and written at `cache_index`; its logits equal the
  full pass. Generation (in `tfdialogpt.generation`) drives this path.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tfdialogpt import quantization
from tfdialogpt.config import DialoGPTConfig
from tfdialogpt.layers import MASKED_BIAS, Block, Conv1D


def positions_from_mask(attention_mask: tf.Tensor) -> tf.Tensor:
    """Position ids [B, S] that count only real tokens: left padding shifts no position."""
    mask = tf.cast(attention_mask, tf.int32)
    return tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)


def attention_bias(key_mask: tf.Tensor, query_start, num_queries) -> tf.Tensor:
    """Additive float32 bias [B, 1, T, S]: causal, and masked where `key_mask` [B, S] is 0.

    Query t sits at absolute position `query_start + t` among the S keys.
    """
    S = tf.shape(key_mask)[1]
    query_pos = tf.range(num_queries) + tf.cast(query_start, tf.int32)  # [T]
    causal = tf.range(S)[None, :] <= query_pos[:, None]  # [T, S]
    allowed = tf.logical_and(causal[None, :, :], tf.cast(key_mask, tf.bool)[:, None, :])
    return tf.where(allowed, 0.0, MASKED_BIAS)[:, None, :, :]


class DialoGPT(keras.Model):
    """GPT-2 language model with DialoGPT's conventions (`<|endoftext|>` separates turns).

    Args:
        config: the architecture (`DialoGPTConfig.preset("small")` etc.).

    Example:
        >>> model = DialoGPT.from_pretrained("microsoft/DialoGPT-small")  # doctest: +SKIP
        >>> logits = model(input_ids, attention_mask=mask)  # [B, T, vocab], float32
    """

    def __init__(self, config: DialoGPTConfig, **kwargs):
        kwargs.setdefault("name", "dialogpt")
        super().__init__(**kwargs)
        self.config = config
        init = keras.initializers.RandomNormal(stddev=config.initializer_range)
        # Sublayers share the model's dtype policy: `DialoGPT(config, dtype="mixed_bfloat16")`.
        policy = self.dtype_policy
        self.wte = keras.layers.Embedding(
            config.vocab_size, config.hidden_size, embeddings_initializer=init, name="wte", dtype=policy
        )
        self.wpe = keras.layers.Embedding(
            config.max_positions, config.hidden_size, embeddings_initializer=init, name="wpe", dtype=policy
        )
        self.drop = keras.layers.Dropout(config.embedding_dropout, dtype=policy)
        self.h = [Block(config, name=f"h_{i}", dtype=policy) for i in range(config.num_layers)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name="ln_f", dtype=policy)
        self.build_all()

    def build_all(self) -> None:
        """Creates every variable now, so loading can assign them before any call."""
        hidden_shape = (None, None, self.config.hidden_size)
        self.wte.build((None, None))
        self.wpe.build((None, None))
        for block in self.h:
            block.build(hidden_shape)
        self.ln_f.build(hidden_shape)
        self.built = True

    # ---- forward ---------------------------------------------------------------------------------
    def _forward(self, input_ids, attention_mask, position_ids, cache, cache_index, training):
        """Returns (final hidden states [B, T, C] after ln_f, updated cache or None)."""
        input_ids = tf.convert_to_tensor(input_ids)
        B, T = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
        if cache is None:
            key_mask = tf.ones([B, T], tf.int32) if attention_mask is None else attention_mask
            query_start = 0
        else:
            # The mask covers the whole preallocated buffer; rows of it past the new tokens are
            # never attended to (causal), so their values do not matter.
            S = tf.shape(cache[0])[-2]
            key_mask = tf.ones([B, S], tf.int32) if attention_mask is None else attention_mask
            query_start = tf.cast(cache_index, tf.int32)
        if position_ids is None:
            # A gather, not a slice: under XLA a slice at a loop-variant index would have to be
            # a compile-time constant.
            position_ids = tf.gather(positions_from_mask(key_mask), query_start + tf.range(T), axis=1)
        bias = attention_bias(key_mask, query_start, T)

        x = self.wte(input_ids) + self.wpe(position_ids)
        x = self.drop(x, training=training)
        # Per-layer caches: a list of [2, B, H, S, D] or of (keys, values) pairs (what the decode
        # loop carries, so each layer's write stays in place), or one stacked [L, 2, B, H, S, D].
        stacked = cache is not None and not isinstance(cache, (list, tuple))
        new_layers = []
        for i, block in enumerate(self.h):
            layer_cache = None if cache is None else cache[i]
            x, layer_cache = block(x, bias, cache=layer_cache, cache_index=cache_index, training=training)
            new_layers.append(layer_cache)
        if cache is None:
            new_cache = None
        elif stacked:
            new_cache = tf.stack(new_layers)
        else:
            new_cache = type(cache)(new_layers)
        return self.ln_f(x), new_cache

    def lm_head(self, hidden: tf.Tensor) -> tf.Tensor:
        """Logits [..., vocab] in float32 from hidden states, with the head tied to `wte`."""
        hidden2d = tf.reshape(hidden, [-1, self.config.hidden_size])
        if self.wte.quantization_mode == "int8":
            logits = quantization.int8_matmul(hidden2d, self.wte.embeddings, self.wte.embeddings_scale)
        else:
            logits = tf.matmul(hidden2d, tf.cast(self.wte.embeddings, hidden.dtype), transpose_b=True)
        shape = tf.concat([tf.shape(hidden)[:-1], [self.config.vocab_size]], axis=0)
        return tf.cast(tf.reshape(logits, shape), tf.float32)

    def call(self, inputs, attention_mask=None, position_ids=None, training=False):
        """Logits [B, T, vocab] (float32).

        Args:
            inputs: `input_ids` int [B, T], or a dict with `input_ids` and optionally
                `attention_mask` / `position_ids` (the form `fit` feeds).
            attention_mask: [B, T], 1 for tokens and 0 for padding (left or right).
            position_ids: [B, T]; by default counted from the mask, so padding never shifts
                a row's positions and each row's logits equal that row run alone.
        """
        if isinstance(inputs, dict):
            attention_mask = inputs.get("attention_mask", attention_mask)
            position_ids = inputs.get("position_ids", position_ids)
            inputs = inputs["input_ids"]
        hidden, _ = self._forward(inputs, attention_mask, position_ids, None, None, training)
        return self.lm_head(hidden)

    def init_cache(self, batch_size, length, dtype=None, per_layer=False, split_kv=False):
        """A zeroed KV cache [L, 2, B, H, S, D] with room for `length` positions.

        With `per_layer=True`, a tuple of L tensors [2, B, H, S, D] instead: the form a decode
        loop should carry, since each layer's write then updates its own buffer in place.
        With `split_kv=True` too, each layer is a (keys, values) pair of [B * H, S, D] tensors
        (batch and heads merged): the fastest form under XLA, where reading keys out of a joint
        buffer copies them, and so does squeezing a size-1 batch axis.
        """
        c = self.config
        dtype = dtype or self.compute_dtype
        if per_layer and split_kv:
            shape = [batch_size * c.num_heads, length, c.head_size]
            return tuple((tf.zeros(shape, dtype), tf.zeros(shape, dtype)) for _ in range(c.num_layers))
        if per_layer:
            shape = [2, batch_size, c.num_heads, length, c.head_size]
            return tuple(tf.zeros(shape, dtype) for _ in range(c.num_layers))
        return tf.zeros([c.num_layers, 2, batch_size, c.num_heads, length, c.head_size], dtype)

    def call_with_cache(
        self,
        input_ids,
        cache,
        cache_index,
        attention_mask=None,
        position_ids=None,
        return_hidden=False,
        training=False,
    ):
        """Runs the new tokens `input_ids` [B, T] against a preallocated cache.

        Args:
            cache: [L, 2, B, H, S, D] from `init_cache` (or a previous call), or the per-layer
                tuple from `init_cache(..., per_layer=True[, split_kv=True])`; returned in the
                same form.
            cache_index: int scalar, where the new tokens' keys/values are written.
            attention_mask: [B, S] over the whole cache buffer (1 = real token).
            return_hidden: return final hidden states [B, T, C] instead of logits, so a caller
                that needs only the last position's logits can skip the rest of the head.
        Returns:
            (logits [B, T, vocab] float32 or hidden states, updated cache).
        """
        hidden, cache = self._forward(input_ids, attention_mask, position_ids, cache, cache_index, training)
        return (hidden if return_hidden else self.lm_head(hidden)), cache

    # ---- generation ------------------------------------------------------------------------------
    def generate(
        self,
        input_ids,
        attention_mask=None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        eos_token_id: int | None = None,
        seed: int | None = None,
        pad_token_id: int | None = None,
        jit_compile: bool = True,
    ):
        """Continues each prompt: greedy, sampling or beam search, as one compiled XLA loop.

        Arguments are named and behave as in HF transformers' `generate`.

        Args:
            input_ids: int [B, T] prompts (a 1-D sequence is one prompt). Padding may be on
                either side; rows are re-padded to the left internally.
            attention_mask: [B, T], 1 for tokens, 0 for padding (default: all tokens).
            max_new_tokens: how many tokens to generate at most (prompt + new <= positions).
            do_sample: sample (with `temperature`, `top_k`, `top_p`, `seed`) instead of argmax.
            repetition_penalty / no_repeat_ngram_size / min_new_tokens: HF's processors.
            num_beams / length_penalty: beam search (`num_beams > 1`, not with sampling).
            eos_token_id: ends a row when newly generated (default: the config's, 50256);
                EOS inside the prompt (DialoGPT's turn separator) does not.
            seed: makes sampling reproducible (None: a fresh random seed).
            pad_token_id: fills positions after a row's EOS (default: config's, else EOS).
            jit_compile: False runs the same loop without XLA.
        Returns:
            `GenerationOutput(sequences, lengths)`: int32 [B, max_new_tokens] new tokens only,
            EOS included and pad after it, and int32 [B] tokens produced per row.
        Raises:
            ValueError: for a bad argument, before anything is compiled.

        Example:
            >>> out = model.generate(ids, attention_mask=mask, max_new_tokens=40)  # doctest: +SKIP
            >>> reply = out.sequences[0, : out.lengths[0]]  # doctest: +SKIP
        """
        from tfdialogpt.generation import engine

        return engine.generate(
            self, input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens, num_beams=num_beams,
            length_penalty=length_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed,
            jit_compile=jit_compile,
        )

    # ---- int8 inference ----------------------------------------------------------------------------
    @property
    def weight_quantization(self) -> str | None:
        """`"int8"` after `quantize("int8")`, else None (float weights). (Not Keras's
        `quantization_mode`, which would route this model's own call to a quantized kernel.)"""
        return self.wte.quantization_mode

    def quantize(self, mode=None, config=None, **kwargs):
        """Stores the projections and the tied embedding / LM head as int8, in place.

        Every `c_attn`, `c_proj` and `c_fc` kernel and the token embedding become int8 with a
        float scale per output channel; the float copies are dropped. Matmuls then quantize
        their input rows on the fly (see `tfdialogpt.quantization`). Faster generation on CPU
        at a measured accuracy cost; the model can no longer be trained or saved as an HF
        checkpoint (quantize a loaded float model instead: `from_pretrained(..., quantize=
        "int8")`). Position embeddings and layer norms stay float.

        Args:
            mode: `"int8"` (the only mode).
        Raises:
            ValueError: for another mode, or a model that is already quantized.
        """
        quantization.check_mode(mode)
        if self.weight_quantization is not None:
            raise ValueError(f"model {self.name!r} is already quantized ({self.weight_quantization})")
        for layer in self._flatten_layers():
            if isinstance(layer, Conv1D):
                layer.quantize(mode)
        self.wte.quantize(mode)
        # Functions traced for the float weights would read variables that no longer exist.
        self.train_function = self.test_function = self.predict_function = None

    # ---- config / checkpoints ------------------------------------------------------------------
    def get_config(self):
        return {"config": self.config.to_hf_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(DialoGPTConfig.from_hf_dict(config["config"]), name=config.get("name"))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs) -> DialoGPT:
        """Loads a checkpoint: a local directory, a hub id (`microsoft/DialoGPT-medium`),
        or `"default"` for the small model embedded in this package.

        See `tfdialogpt.checkpoint.load_pretrained` for the formats and keyword arguments.
        """
        from tfdialogpt import checkpoint

        return checkpoint.load_pretrained(cls, name_or_path, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs) -> None:
        """Writes `config.json` and `tf_model.h5` in HF's layout (transformers loads it)."""
        from tfdialogpt import checkpoint

        checkpoint.save_pretrained(self, directory, **kwargs)
