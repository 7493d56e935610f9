"""The compiled generate function, and `generate` (what `DialoGPT.generate` calls).

`make_generate_fn` wires a model into the decode loops as one `tf.function` whose run-time
controls (max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, ...) are scalar
tensor inputs: one compiled graph per shape bucket serves every setting, and the SavedModel
exporter wraps the very same function in its signatures. `generate` validates arguments,
re-pads the prompts to the left, picks the bucket and calls the memoised function.
"""

from __future__ import annotations

import math
import secrets
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfdialogpt.generation import buckets
from tfdialogpt.generation.beam_search import beam_search
from tfdialogpt.generation.sampling import SamplingParams, decode
from tfdialogpt.model import positions_from_mask

# Inputs of the compiled function, in order. The first eight are the serving signature's.
GENERATE_INPUTS = (
    ("input_ids", tf.int32),  # [B, T], left padded
    ("attention_mask", tf.int32),  # [B, T], 1 for tokens
    ("max_new_tokens", tf.int32),  # scalar <= the function's width N
    ("temperature", tf.float32),
    ("top_k", tf.int32),
    ("top_p", tf.float32),
    ("repetition_penalty", tf.float32),
    ("seed", tf.int32),
    ("min_new_tokens", tf.int32),
    ("do_sample", tf.bool),
    ("length_penalty", tf.float32),
)
DEFAULT_MAX_NEW_TOKENS = 64


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
            tokens[:, None], cache, index, attention_mask=attention_mask, position_ids=position_ids,
            return_hidden=True,
        )
        return model.lm_head(hidden[:, 0]), cache

    return next_fn


def reorder_cache(cache, indices):
    """Per-layer caches ([2, B, H, S, D], or (keys, values) pairs of [B * H, S, D]) with their
    batch rows taken from `indices`."""

    def reorder(buffer):
        if buffer.shape.rank == 5:
            return tf.gather(buffer, indices, axis=1)
        rows = tf.reshape(buffer, tf.concat([[tf.shape(indices)[0], -1], tf.shape(buffer)[1:]], axis=0))
        return tf.reshape(tf.gather(rows, indices), tf.shape(buffer))  # via [B, H, S, D]

    return tf.nest.map_structure(reorder, cache)


def make_generate_fn(model, *, max_new_tokens: int, num_beams: int = 1, no_repeat_ngram_size: int = 0,
                     do_sample: bool | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None,
                     batch_size: int | None = None, prompt_length: int | None = None,
                     jit_compile: bool = True):
    """Builds the generate function of `model` as a `tf.function`.

    Static (shape the graph): `max_new_tokens` (N, the output width), `num_beams`,
    `no_repeat_ngram_size`, the EOS / pad ids, and optionally the batch size and prompt length
    of the input signature (None keeps that dimension dynamic; XLA still compiles per shape).
    `do_sample`: False builds a greedy-only graph, True a sampling-only one, None (the default)
    one that follows the `do_sample` input at run time (both loops are compiled, under a cond
    outside the loops, so each runs at full speed). The `do_sample` input is ignored unless
    `do_sample=None`.

    The function takes the tensors named in `GENERATE_INPUTS`, in that order (keywords work
    too): input_ids and attention_mask int32 [B, T] (left padded), then int32/float32/bool
    scalars. It returns `{"sequences": int32 [B, N], "lengths": int32 [B]}`. With
    `jit_compile=True` the whole loop is one XLA program; `False` gives the same loop as a
    plain graph (what TF Serving runs without its XLA flags).

    Example:
        >>> fn = make_generate_fn(model, max_new_tokens=64)  # doctest: +SKIP
        >>> out = fn(ids, mask, 40, 1.0, 0, 1.0, 1.0, 0, 0, False, 1.0)  # doctest: +SKIP
        >>> out["sequences"].shape  # doctest: +SKIP
        TensorShape([2, 64])
    """
    config = model.config
    eos = config.eos_token_id if eos_token_id is None else int(eos_token_id)
    pad = default_pad_id(config, eos) if pad_token_id is None else int(pad_token_id)
    N, K = int(max_new_tokens), int(num_beams)
    ngram = int(no_repeat_ngram_size)
    search = None if do_sample is None else bool(do_sample)  # the inner `do_sample` is the input
    shape = [batch_size, prompt_length]
    signature = [
        tf.TensorSpec(shape if i < 2 else [], dtype, name=name) for i, (name, dtype) in enumerate(GENERATE_INPUTS)
    ]

    def generate(input_ids, attention_mask, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                 min_new_tokens, do_sample, length_penalty):
        params = SamplingParams(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens, seed=seed,
        )
        T = tf.shape(input_ids)[1]
        ids, mask = input_ids, attention_mask
        if K > 1:  # every beam starts from the prompt: rows b*K .. b*K+K-1 are row b
            ids, mask = tf.repeat(ids, K, axis=0), tf.repeat(mask, K, axis=0)
        # The mask over the whole cache buffer: the prompt's, then the N new tokens.
        full_mask = tf.concat([mask, tf.ones([tf.shape(ids)[0], N], tf.int32)], axis=1)
        cache = model.init_cache(tf.shape(ids)[0], T + N, per_layer=True, split_kv=True)
        hidden, cache = model.call_with_cache(ids, cache, 0, attention_mask=full_mask, return_hidden=True)
        first_logits = model.lm_head(hidden[:, -1])
        next_fn = next_token_fn(model, full_mask)
        common = dict(max_new_tokens=N, eos_token_id=eos, pad_token_id=pad, no_repeat_ngram_size=ngram)
        if K > 1:
            sequences, lengths = beam_search(
                next_fn, reorder_cache, first_logits, cache, input_ids, attention_mask, params,
                num_beams=K, length_penalty=length_penalty, **common,
            )
        else:
            sequences, lengths = decode(next_fn, first_logits, cache, input_ids, attention_mask, params,
                                        do_sample=search, **common)
        return {"sequences": sequences, "lengths": lengths}

    return tf.function(generate, input_signature=signature, jit_compile=jit_compile)


def default_pad_id(config, eos_token_id: int) -> int:
    """The pad id for outputs: the config's, else EOS (DialoGPT has no pad token)."""
    return eos_token_id if config.pad_token_id is None else int(config.pad_token_id)


# ---- the user-facing call ----------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def _check_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"`{name}` must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    return float(value)


def left_pad(input_ids, attention_mask, pad_token_id: int):
    """Re-pads a batch to the left: returns (ids [B, T], mask [B, T], real lengths [B]).

    Each row's real tokens (mask 1) keep their order; padding on either side (or holes) moves
    to the left, where the decode loop needs it. Positions come from the mask, so this does
    not change what the model computes for any row.
    """
    rows = [ids[m.astype(bool)] for ids, m in zip(input_ids, attention_mask, strict=True)]
    lengths = np.array([len(r) for r in rows], np.int32)
    T = int(lengths.max())
    ids = np.full((len(rows), T), pad_token_id, np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    for b, row in enumerate(rows):
        if len(row):
            ids[b, T - len(row):], mask[b, T - len(row):] = row, 1
    return ids, mask, lengths


def generate(model, input_ids, attention_mask=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
             num_beams: int = 1, length_penalty: float = 1.0, eos_token_id: int | None = None,
             pad_token_id: int | None = None, seed: int | None = None, jit_compile: bool = True
             ) -> GenerationOutput:
    """Continues each prompt of a batch; see `DialoGPT.generate` for the arguments.

    Every argument is checked before anything is traced or compiled (`ValueError` names the
    culprit). Prompts may be padded on either side: they are re-padded to the left here.
    """
    config = model.config
    ids = np.asarray(input_ids.numpy() if isinstance(input_ids, tf.Tensor) else input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.size == 0:
        raise ValueError(f"`input_ids` must be a non-empty [batch, length] array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`input_ids` must hold integer token ids, got dtype {ids.dtype}")
    if attention_mask is None:
        mask = np.ones(ids.shape, np.int32)
    else:
        mask = np.asarray(attention_mask.numpy() if isinstance(attention_mask, tf.Tensor) else attention_mask)
        if mask.ndim == 1:
            mask = mask[None, :]
        if mask.shape != ids.shape:
            raise ValueError(f"`attention_mask` has shape {mask.shape}; expected the shape of `input_ids` {ids.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("`attention_mask` must hold only 0 and 1")
    real = mask.astype(bool)
    if (ids[real] < 0).any() or (ids[real] >= config.vocab_size).any():
        raise ValueError(f"`input_ids` holds ids outside [0, {config.vocab_size})")
    empty = np.flatnonzero(real.sum(axis=1) == 0)
    if len(empty):
        raise ValueError(f"prompt rows {empty.tolist()} are empty (no token with attention_mask 1)")

    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
    min_new_tokens = _check_int("min_new_tokens", min_new_tokens, 0)
    if min_new_tokens > max_new_tokens:
        raise ValueError(f"`min_new_tokens` ({min_new_tokens}) exceeds `max_new_tokens` ({max_new_tokens})")
    top_k = _check_int("top_k", top_k, 0)
    no_repeat_ngram_size = _check_int("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    num_beams = _check_int("num_beams", num_beams, 1)
    temperature = _check_float("temperature", temperature)
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature} (use do_sample=False for greedy)")
    top_p = _check_float("top_p", top_p)
    if not 0 < top_p <= 1:
        raise ValueError(f"`top_p` must be in (0, 1], got {top_p}")
    repetition_penalty = _check_float("repetition_penalty", repetition_penalty)
    if repetition_penalty <= 0:
        raise ValueError(f"`repetition_penalty` must be > 0, got {repetition_penalty}")
    length_penalty = _check_float("length_penalty", length_penalty)
    if num_beams > 1 and do_sample:
        raise ValueError("beam sampling (num_beams > 1 with do_sample=True) is not supported")
    eos = config.eos_token_id if eos_token_id is None else _check_int("eos_token_id", eos_token_id, 0)
    pad = default_pad_id(config, eos) if pad_token_id is None else _check_int("pad_token_id", pad_token_id, 0)
    for name, value in (("eos_token_id", eos), ("pad_token_id", pad)):
        if value >= config.vocab_size:
            raise ValueError(f"`{name}` {value} is outside the vocabulary [0, {config.vocab_size})")
    seed = secrets.randbelow(2**31) if seed is None else _check_int("seed", seed, 0)
    if seed >= 2**31:
        raise ValueError(f"`seed` must fit in int32, got {seed}")

    ids, mask, lengths = left_pad(ids, mask, pad)
    prompt_length = int(lengths.max())
    if prompt_length + max_new_tokens > config.max_positions:
        raise ValueError(
            f"prompt ({prompt_length} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"{config.max_positions} positions"
        )
    T, N = buckets.bucket_shapes(prompt_length, max_new_tokens, config.max_positions)
    B = ids.shape[0]
    ids = np.concatenate([np.full((B, T - prompt_length), pad, np.int32), ids], axis=1)
    mask = np.concatenate([np.zeros((B, T - prompt_length), np.int32), mask], axis=1)

    # The quantization mode is part of the key: `quantize()` replaces the weight variables.
    key = (B, T, N, num_beams, no_repeat_ngram_size, bool(do_sample), eos, pad, bool(jit_compile),
           model.weight_quantization)
    fn = buckets.COMPILED.get(
        model,
        key,
        lambda: make_generate_fn(
            model, max_new_tokens=N, num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size,
            do_sample=bool(do_sample), eos_token_id=eos, pad_token_id=pad, batch_size=B, prompt_length=T, jit_compile=jit_compile,
        ),
    )
    out = fn(
        tf.constant(ids), tf.constant(mask), tf.constant(max_new_tokens, tf.int32),
        tf.constant(temperature, tf.float32), tf.constant(top_k, tf.int32), tf.constant(top_p, tf.float32),
        tf.constant(repetition_penalty, tf.float32), tf.constant(seed, tf.int32),
        tf.constant(min_new_tokens, tf.int32), tf.constant(bool(do_sample)), tf.constant(length_penalty, tf.float32),
    )
    return GenerationOutput(out["sequences"][:, :max_new_tokens], out["lengths"])
