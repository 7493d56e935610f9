"""The compiled generate function, and `generate` (what `DialoGPT.generate` calls).

`make_generate_fn` wires a model into the decode loops as one `tf.function` whose run-time
settings (every `GenerationConfig` setting that does not shape the graph: max_new_tokens,
temperature, top_k, top_p, repetition_penalty, seed, ...) are scalar tensor inputs: one
compiled graph per shape bucket serves every value, and the SavedModel exporter wraps the
very same function in its signatures. `generate` validates the config, re-pads the prompts
to the left, picks the bucket and calls the memoised function.

This module knows the model only through its interface (`config`, `init_cache`,
`call_with_cache`, `lm_head`); it does not import `tfdialogpt.model`.
"""

from __future__ import annotations

import inspect
import secrets
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfdialogpt import padding
from tfdialogpt.generation import buckets
from tfdialogpt.generation.beam_search import beam_search
from tfdialogpt.generation.prefill import CHUNK_SIZE, prefill
from tfdialogpt.generation.sampling import SamplingParams, decode
from tfdialogpt.generation_config import RUNTIME, SETTINGS, GenerationConfig
from tfdialogpt.layers import positions_from_mask

_TF_DTYPES = {int: tf.int32, float: tf.float32, bool: tf.bool}
# Inputs of the compiled function: the prompt, then the run-time settings (config order).
GENERATE_INPUTS = (("input_ids", tf.int32), ("attention_mask", tf.int32)) + tuple(
    (name, _TF_DTYPES[SETTINGS[name].kind]) for name in RUNTIME
)


class GenerationOutput(NamedTuple):
    """What `generate` returns.

    sequences: int32 [B, max_new_tokens], the new tokens only; a row's EOS is included and
        every position after it holds the pad id.
    lengths: int32 [B], how many tokens each row produced (EOS included), so
        `sequences[b, :lengths[b]]` is row b's continuation.
    """

    sequences: tf.Tensor
    lengths: tf.Tensor

    def token_lists(self, eos_token_id: int | None = None) -> list[list[int]]:
        """Each row's new ids as a list, cut at its length (and before its EOS if given)."""
        sequences, lengths = np.asarray(self.sequences), np.asarray(self.lengths)
        rows = [seq[:n].tolist() for seq, n in zip(sequences, lengths, strict=True)]
        if eos_token_id is not None:
            rows = [row[: row.index(eos_token_id)] if eos_token_id in row else row for row in rows]
        return rows


def next_token_fn(model, attention_mask):
    """The model as a decode-loop callback: `(tokens [B], cache, index) -> (logits [B, V], cache)`.

    `attention_mask` [B, S] covers the whole cache buffer.
    """
    # Position ids of every buffer slot, counted once here rather than in every step.
    positions = positions_from_mask(attention_mask)  # [B, S]

    def next_fn(tokens, cache, index):
        position_ids = tf.gather(positions, tf.reshape(tf.cast(index, tf.int32), [1]), axis=1)  # [B, 1]
        hidden, cache = model.call_with_cache(
            tokens[:, None],
            cache,
            index,
            attention_mask=attention_mask,
            position_ids=position_ids,
            return_hidden=True,
        )
        return model.lm_head(hidden[:, 0]), cache

    return next_fn


def reorder_cache(cache, indices):
    """The cache (per layer, a (keys, values) pair of [B * H, S, D]) with its batch rows taken
    from `indices` [B]."""

    def reorder(buffer):
        rows = tf.reshape(buffer, tf.concat([[tf.shape(indices)[0], -1], tf.shape(buffer)[1:]], axis=0))
        return tf.reshape(tf.gather(rows, indices), tf.shape(buffer))  # via [B, H, S, D]

    return tf.nest.map_structure(reorder, cache)


def make_generate_fn(
    model,
    *,
    max_new_tokens: int,
    num_beams: int = 1,
    no_repeat_ngram_size: int = 0,
    max_no_repeat_ngram_size: int = 0,
    do_sample: bool | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    batch_size: int | None = None,
    prompt_length: int | None = None,
    jit_compile: bool = True,
    per_row: bool = False,
    prefill_chunk_size: int | None = CHUNK_SIZE,
):
    """Builds the generate function of `model` as a `tf.function`.

    Static (shape the graph): `max_new_tokens` (N, the output width), `num_beams`,
    `no_repeat_ngram_size`, the EOS / pad ids, and optionally the batch size and prompt length
    of the input signature (None keeps that dimension dynamic; XLA still compiles per shape).
    `do_sample`: False builds a greedy-only graph, True a sampling-only one, None (the default)
    one that follows the `do_sample` input at run time (both loops are compiled, under a cond
    outside the loops, so each runs at full speed). The `do_sample` input is ignored unless
    `do_sample=None`.

    The function takes the tensors named in `GENERATE_INPUTS` (keywords, or positionally in
    that order): input_ids and attention_mask int32 [B, T] (left padded), then one scalar per
    run-time setting of `GenerationConfig` (`max_new_tokens` <= N). It returns
    `{"sequences": int32 [B, N], "lengths": int32 [B]}`. With `jit_compile=True` the whole
    loop is one XLA program; `False` gives the same loop as a plain graph (what TF Serving
    runs without its XLA flags).

    `per_row=True` takes every run-time setting as a [B] tensor, one value per row (what the
    served signatures take, so requests with different settings share a run): each row is
    then decoded as if alone, with its own seed stream, `max_new_tokens` and greedy or sampled
    choice. Beam search (`num_beams` > 1) takes scalars only. With `max_no_repeat_ngram_size`
    > 0 (and `per_row`), the n-gram size is a run-time input too, `no_repeat_ngram_size` [B]
    after the others, each at most that static bound, instead of the static
    `no_repeat_ngram_size`.

    `prefill_chunk_size`: the prompt's forward pass runs this many positions per loop step
    (`tfdialogpt.generation.prefill`: a stopped run ends between chunks, activations are
    bounded by the chunk); None runs it in one pass.

    Example:
        >>> fn = make_generate_fn(model, max_new_tokens=64)  # doctest: +SKIP
        >>> out = fn(input_ids=ids, attention_mask=mask, **runtime_inputs(config))  # doctest: +SKIP
        >>> out["sequences"].shape  # doctest: +SKIP
        TensorShape([2, 64])
    """
    config = model.config
    eos = config.eos_token_id if eos_token_id is None else int(eos_token_id)
    pad = default_pad_id(config, eos) if pad_token_id is None else int(pad_token_id)
    N, K = int(max_new_tokens), int(num_beams)
    ngram = int(no_repeat_ngram_size)
    search = None if do_sample is None else bool(do_sample)  # the inner `do_sample` is the input
    ngram_bound = int(max_no_repeat_ngram_size)
    if per_row and K > 1:
        raise ValueError("beam search takes scalar settings (per_row=False)")
    if ngram_bound and (not per_row or ngram):
        raise ValueError("max_no_repeat_ngram_size needs per_row=True and no static no_repeat_ngram_size")
    inputs = GENERATE_INPUTS + ((("no_repeat_ngram_size", tf.int32),) if ngram_bound else ())
    shape = [batch_size, prompt_length]
    setting_shape = [batch_size] if per_row else []
    signature = [
        tf.TensorSpec(shape if i < 2 else setting_shape, dtype, name=name) for i, (name, dtype) in enumerate(inputs)
    ]
    names = tuple(name for name, _ in inputs)

    def generate(*inputs):
        values = dict(zip(names, inputs, strict=True))
        input_ids, attention_mask = values["input_ids"], values["attention_mask"]
        params = SamplingParams(**{f: values[f] for f in SamplingParams.__dataclass_fields__ if f in values})
        T = tf.shape(input_ids)[1]
        ids, mask = input_ids, attention_mask
        if K > 1:  # every beam starts from the prompt: rows b*K .. b*K+K-1 are row b
            ids, mask = tf.repeat(ids, K, axis=0), tf.repeat(mask, K, axis=0)
        # The mask over the whole cache buffer: the prompt's, then the N new tokens.
        full_mask = tf.concat([mask, tf.ones([tf.shape(ids)[0], N], tf.int32)], axis=1)
        cache = model.init_cache(tf.shape(ids)[0], T + N)
        last_hidden, cache = prefill(model, ids, full_mask, cache, prefill_chunk_size)
        first_logits = model.lm_head(last_hidden)
        next_fn = next_token_fn(model, full_mask)
        common = dict(max_new_tokens=N, eos_token_id=eos, pad_token_id=pad, no_repeat_ngram_size=ngram)
        if K > 1:
            sequences, lengths = beam_search(
                next_fn,
                reorder_cache,
                first_logits,
                cache,
                input_ids,
                attention_mask,
                params,
                num_beams=K,
                length_penalty=values["length_penalty"],
                **common,
            )
        else:
            sequences, lengths = decode(
                next_fn,
                first_logits,
                cache,
                input_ids,
                attention_mask,
                params,
                do_sample=search,
                max_no_repeat_ngram_size=ngram_bound,
                **common,
            )
        return {"sequences": sequences, "lengths": lengths}

    # Named parameters (keyword calls, and SavedModel signature inputs named after them).
    generate.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    return tf.function(generate, input_signature=signature, jit_compile=jit_compile)


def runtime_inputs(config: GenerationConfig) -> dict[str, tf.Tensor]:
    """The compiled function's run-time setting inputs for a validated config with a seed."""
    return {name: tf.constant(getattr(config, name), dtype) for name, dtype in GENERATE_INPUTS[2:]}


def default_pad_id(config, eos_token_id: int) -> int:
    """The pad id for outputs: the config's, else EOS (DialoGPT has no pad token)."""
    return eos_token_id if config.pad_token_id is None else int(config.pad_token_id)


# ---- the user-facing call ----------------------------------------------------------------------


def _as_array(value) -> np.ndarray:
    array = np.asarray(value.numpy() if isinstance(value, tf.Tensor) else value)
    if array.ndim == 1:
        array = array[None, :]
    return array


def check_prompts(input_ids, attention_mask, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The prompts as int arrays [B, T] with their mask; `ValueError` naming what is wrong."""
    ids = _as_array(input_ids)
    if ids.ndim != 2 or ids.size == 0:
        raise ValueError(f"`input_ids` must be a non-empty [batch, length] array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`input_ids` must hold integer token ids, got dtype {ids.dtype}")
    if attention_mask is None:
        mask = np.ones(ids.shape, np.int32)
    else:
        mask = _as_array(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"`attention_mask` has shape {mask.shape}; expected the shape of `input_ids` {ids.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("`attention_mask` must hold only 0 and 1")
    real = mask.astype(bool)
    if (ids[real] < 0).any() or (ids[real] >= vocab_size).any():
        raise ValueError(f"`input_ids` holds ids outside [0, {vocab_size})")
    empty = np.flatnonzero(real.sum(axis=1) == 0)
    if len(empty):
        raise ValueError(f"prompt rows {empty.tolist()} are empty (no token with attention_mask 1)")
    return ids, mask


def generate(
    model, input_ids, attention_mask=None, config: GenerationConfig | None = None, jit_compile: bool = True
) -> GenerationOutput:
    """Continues each prompt of a batch; see `DialoGPT.generate` for the arguments.

    Every setting is checked before anything is traced or compiled (`ValueError` names the
    culprit). Prompts may be padded on either side: they are re-padded to the left here.
    """
    model_config = model.config
    ids, mask = check_prompts(input_ids, attention_mask, model_config.vocab_size)
    config = (config or GenerationConfig()).validate(vocab_size=model_config.vocab_size)
    eos = model_config.eos_token_id if config.eos_token_id is None else config.eos_token_id
    pad = default_pad_id(model_config, eos) if config.pad_token_id is None else config.pad_token_id
    seed = secrets.randbelow(2**31) if config.seed is None else config.seed
    config = config.replace(eos_token_id=eos, pad_token_id=pad, seed=seed)

    prompt_length, max_new_tokens = int(mask.sum(axis=1).max()), config.max_new_tokens
    if prompt_length + max_new_tokens > model_config.max_positions:
        raise ValueError(
            f"prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"{model_config.max_positions} positions"
        )
    T, N = padding.bucket_shapes(prompt_length, max_new_tokens, model_config.max_positions)
    ids, mask, _ = padding.repad_left(ids, mask, pad, width=T)

    # The quantization mode is part of the key: `quantize()` replaces the weight variables.
    B = ids.shape[0]
    key = (
        B,
        T,
        N,
        config.num_beams,
        config.no_repeat_ngram_size,
        config.do_sample,
        eos,
        pad,
        bool(jit_compile),
        model.weight_quantization,
    )
    fn = buckets.COMPILED.get(
        model,
        key,
        lambda proxy: make_generate_fn(
            proxy,
            max_new_tokens=N,
            num_beams=config.num_beams,
            no_repeat_ngram_size=config.no_repeat_ngram_size,
            do_sample=config.do_sample,
            eos_token_id=eos,
            pad_token_id=pad,
            batch_size=B,
            prompt_length=T,
            jit_compile=jit_compile,
        ),
    )
    out = fn(input_ids=tf.constant(ids), attention_mask=tf.constant(mask), **runtime_inputs(config))
    return GenerationOutput(out["sequences"][:, :max_new_tokens], out["lengths"])
