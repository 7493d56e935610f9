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
from tfdialogpt.generation_config import GenerationConfig
from tfdialogpt.layers import MASKED_BIAS, Block, Conv1D, positions_from_mask


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
        self.generation_config = GenerationConfig()
        self.name_or_path: str | None = None  # where from_pretrained found it (its tokenizer is there too)
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
            S = tf.shape(cache[0][0])[1]
            key_mask = tf.ones([B, S], tf.int32) if attention_mask is None else attention_mask
            query_start = tf.cast(cache_index, tf.int32)
        if position_ids is None:
            # A gather, not a slice: under XLA a slice at a loop-variant index would have to be
            # a compile-time constant.
            position_ids = tf.gather(positions_from_mask(key_mask), query_start + tf.range(T), axis=1)
        bias = attention_bias(key_mask, query_start, T)

        x = self.wte(input_ids) + self.wpe(position_ids)
        x = self.drop(x, training=training)
        new_layers = []
        for i, block in enumerate(self.h):
            layer_cache = None if cache is None else cache[i]
            x, layer_cache = block(x, bias, cache=layer_cache, cache_index=cache_index, training=training)
            new_layers.append(layer_cache)
        return self.ln_f(x), (None if cache is None else tuple(new_layers))

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
        Raises:
            ValueError: (eagerly) an id outside [0, vocab_size); in a graph, the same check
                fails the step with InvalidArgumentError. (Under XLA no check runs.)
        """
        if isinstance(inputs, dict):
            attention_mask = inputs.get("attention_mask", attention_mask)
            position_ids = inputs.get("position_ids", position_ids)
            inputs = inputs["input_ids"]
        inputs = self._checked_ids(tf.convert_to_tensor(inputs))
        hidden, _ = self._forward(inputs, attention_mask, position_ids, None, None, training)
        return self.lm_head(hidden)

    def _checked_ids(self, ids: tf.Tensor) -> tf.Tensor:
        """`ids`, with ids outside the vocabulary refused (an embedding lookup would wrap a
        negative id around, or read past the table)."""
        vocab = self.config.vocab_size
        if tf.executing_eagerly():
            bad = tf.logical_or(ids < 0, ids >= vocab)
            if bool(tf.reduce_any(bad)):
                first = tf.where(bad)[0].numpy().tolist()
                value = int(ids.numpy()[tuple(first)])
                raise ValueError(f"input_ids{first} = {value} is outside the vocabulary [0, {vocab})")
            return ids
        check = tf.debugging.Assert(
            tf.reduce_all(tf.logical_and(ids >= 0, ids < vocab)), [f"input_ids must be in [0, {vocab})"]
        )
        with tf.control_dependencies([check]):
            return tf.identity(ids)

    def init_cache(self, batch_size, length, dtype=None):
        """A zeroed KV cache with room for `length` positions: per layer, a (keys, values) pair
        of [B * H, S, D] buffers (batch and heads merged).

        Each layer's write then updates its own buffer in place under XLA, where reading keys
        out of a joint buffer, or squeezing a size-1 batch axis, would copy them.
        """
        c = self.config
        dtype = dtype or self.compute_dtype
        shape = [batch_size * c.num_heads, length, c.head_size]
        return tuple((tf.zeros(shape, dtype), tf.zeros(shape, dtype)) for _ in range(c.num_layers))

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
            cache: from `init_cache` (or a previous call); returned updated.
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
        config: GenerationConfig | None = None,
        jit_compile: bool = True,
        **overrides,
    ):
        """Continues each prompt: greedy, sampling or beam search, as one compiled XLA loop.

        Settings are a `GenerationConfig` (HF's names and meanings): `config`, else the
        model's `generation_config` (read from the checkpoint's `generation_config.json`
        when it has one), with `overrides` on top, e.g.
        `model.generate(ids, max_new_tokens=40, do_sample=True, top_p=0.9, seed=0)`.

        Args:
            input_ids: int [B, T] prompts (a 1-D sequence is one prompt). Padding may be on
                either side; rows are re-padded to the left internally.
            attention_mask: [B, T], 1 for tokens, 0 for padding (default: all tokens).
            config: the settings; see `GenerationConfig` for each one and its range.
            jit_compile: False runs the same loop without XLA.
            **overrides: settings that replace the config's.
        Returns:
            `GenerationOutput(sequences, lengths)`: int32 [B, max_new_tokens] new tokens only,
            EOS included and pad after it, and int32 [B] tokens produced per row.
        Raises:
            ValueError: for a bad setting or prompt, before anything is compiled.
            TypeError: an unknown setting name.

        Example:
            >>> out = model.generate(ids, attention_mask=mask, max_new_tokens=40)  # doctest: +SKIP
            >>> reply = out.sequences[0, : out.lengths[0]]  # doctest: +SKIP
        """
        from tfdialogpt.generation import engine

        config = (config or self.generation_config).replace(**overrides)
        return engine.generate(self, input_ids, attention_mask=attention_mask, config=config, jit_compile=jit_compile)

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
        or `"default"` for the small model embedded in this package. A
        `generation_config.json` beside the weights becomes the model's `generation_config`.

        See `tfdialogpt.checkpoint.load_pretrained` for the formats and keyword arguments.
        """
        from tfdialogpt import checkpoint
        from tfdialogpt.generation_config import FILE_NAME

        model = checkpoint.load_pretrained(cls, name_or_path, **kwargs)
        path = checkpoint.resolve_file(name_or_path, FILE_NAME, **_hub_kwargs(kwargs))
        if path is not None:
            try:
                config = GenerationConfig.from_json_file(path)
                # Ids equal to the model's own (what transformers writes) are no setting of their own.
                same = {
                    name: None
                    for name in ("eos_token_id", "pad_token_id")
                    if getattr(config, name) == getattr(model.config, name)
                }
                model.generation_config = config.replace(**same)
            except ValueError as err:
                raise checkpoint.CheckpointError(str(err)) from None
        model.name_or_path = os.fspath(name_or_path)
        return model

    def save_pretrained(self, directory: str | os.PathLike, **kwargs) -> None:
        """Writes `config.json` and `tf_model.h5` in HF's layout (transformers loads it), and
        `generation_config.json` when the model's settings differ from the defaults."""
        from tfdialogpt import checkpoint

        checkpoint.save_pretrained(self, directory, **kwargs)
        if self.generation_config != GenerationConfig():
            self.generation_config.save_pretrained(directory)


def _hub_kwargs(kwargs: dict) -> dict:
    return {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
