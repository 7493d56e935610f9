"""The object an export saves: the model's variables, its tokenizer graph, one `tf.function` per
signature of `signatures.py`, with the request checks built into the graph.

- `generate` / `generate_xla`: ids in, ids out; the decoding loop of `tfdialogpt.generation`
  with its KV cache, as a plain graph (stock TF Serving runs it with no flags) or compiled by
  XLA (TF Serving needs `--xla_cpu_compilation_enabled`).
- `chat` / `chat_xla`: text in, text out, as `Chat.reply` does. The
  turns are tokenized in the graph (`TextGraph`), the oldest whole turns dropped until history
  + reply fit the positions, the prompts left-padded to the bucket `model.generate` would use,
  decoded, and the reply detokenized with special tokens skipped and stripped. Its settings
  are optional: their defaults (the model's `generation_config`) are in the SignatureDef.
- `serving_default`: the chat with those defaults, `turns` its only input (what a REST client
  that names no signature gets; see `signatures.CHAT_DEFAULT`).
- `score`: log P(reply | context), for MMI reranking.

Settings are checked against `GenerationConfig`'s ranges in the graph, so stock TF Serving
also answers a bad value with INVALID_ARGUMENT and a reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import tensorflow as tf

from tfdialogpt.generation_config import SETTINGS
from tfdialogpt.padding import NEW_TOKEN_BUCKETS, PROMPT_BUCKETS
from tfdialogpt.serving import signatures as contract

# make_generate(model, limits, jit_compile) -> fn(input_ids, attention_mask, **served settings)
# -> (sequences [B, <=limits.max_new_tokens_cap], lengths [B]), all arguments tensors.
GenerateBuilder = Callable[..., Callable[..., tuple[tf.Tensor, tf.Tensor]]]


def _tf_signature(sig: contract.Signature) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(spec.static_shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in sig.inputs]


def _named(fn: Callable, names: Sequence[str], defaults: dict[str, tf.Tensor] | None = None) -> Callable:
    """`fn(*tensors)` with named parameters, so signature inputs carry the contract's names.

    Tensor defaults become the SignatureDef's `defaults` (TF's saver records a `tf.function`'s
    tensor-valued Python defaults), so a request may leave those inputs out.
    """
    defaults = defaults or {}
    empty = inspect.Parameter.empty
    fn.__signature__ = inspect.Signature(
        [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults.get(name, empty))
            for name in names
        ]
    )
    return fn


def _default_generate_builder(model, limits: contract.Limits, jit_compile: bool):
    """The decoding loop of `tfdialogpt.generation` (the function `model.generate` compiles),
    with one value per row for every setting (the n-gram ban's size too, up to the export's
    `max_no_repeat_ngram_size`); run-time settings the contract does not serve keep
    `GenerationConfig`'s defaults.

    Under XLA a one-row request runs a function traced for one row, as in-process
    `model.generate` does: the model then takes its one-row matmul path (`layers.Conv1D`),
    which the batch-size-agnostic trace cannot see.
    """
    from tfdialogpt.generation.engine import GENERATE_INPUTS, make_generate_fn

    def build(batch_size):
        return make_generate_fn(
            model,
            max_new_tokens=limits.max_new_tokens_cap,
            max_no_repeat_ngram_size=limits.max_no_repeat_ngram_size,
            jit_compile=jit_compile,
            per_row=True,
            batch_size=batch_size,
        )

    any_rows = build(None)
    one_row = build(1) if jit_compile else None
    fixed = {
        name: (SETTINGS[name].wire_default, dtype)
        for name, dtype in GENERATE_INPUTS[2:]
        if name not in contract.PARAMETERS
    }

    def decode(input_ids, attention_mask, **settings):
        rows = tf.shape(input_ids)[:1]
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, **settings)
        inputs.update({name: tf.fill(rows, tf.constant(value, dtype)) for name, (value, dtype) in fixed.items()})

        def run(fn, batch_size):
            def call():
                shaped = {
                    key: tf.ensure_shape(value, [batch_size] + [None] * (value.shape.rank - 1))
                    for key, value in inputs.items()
                }
                out = fn(**shaped)
                return tf.ensure_shape(out["sequences"], [None, None]), tf.ensure_shape(out["lengths"], [None])

            return call

        if one_row is None:
            return run(any_rows, None)()
        return tf.cond(rows[0] == 1, run(one_row, 1), run(any_rows, None))

    return decode


def _range_check(name: str, value, setting, high) -> tf.Operation | None:
    """An in-graph check of one served setting against `GenerationConfig`'s range."""
    low, high = setting.low, setting.high if high is None else high
    if setting.kind is bool or (low is None and high is None):
        return None
    ok = tf.math.is_finite(tf.cast(value, tf.float32))
    if low is not None:
        ok &= value > low if setting.low_open else value >= low
    if high is not None:
        ok &= value < high if setting.high_open else value <= high
    return tf.debugging.Assert(tf.reduce_all(ok), [f"{name} must be in {setting.range_text(high)}, got", value])


def _per_row_settings(settings: dict[str, tf.Tensor], rows: tf.Tensor) -> tuple[dict[str, tf.Tensor], list]:
    """Each setting ([B] or [1], one for all rows) broadcast to [B], with checks that say so."""
    checks, out = [], {}
    for name, value in settings.items():
        size = tf.size(value)
        checks.append(
            tf.debugging.Assert(
                tf.logical_or(size == rows, size == 1),
                [f"{name} must hold one value per row or one for all rows; rows and values:", rows, size],
            )
        )
        with tf.control_dependencies(checks[-1:]):
            out[name] = tf.broadcast_to(tf.reshape(value, [-1]), [rows])
    return out, checks


def _settings_checks(limits: contract.Limits, settings) -> list:
    highs = limits.highs()
    checks = []
    for name, parameter in contract.PARAMETERS.items():
        check = _range_check(name, settings[name], parameter.setting, highs.get(name))
        if check is not None:
            checks.append(check)
    return checks


def _round_up(length: tf.Tensor, buckets: Sequence[int]) -> tf.Tensor:
    """`padding.round_up` in the graph: the smallest bucket >= length, else length."""
    sizes = tf.constant(buckets, length.dtype)
    fits = tf.boolean_mask(sizes, sizes >= length)
    return tf.cond(tf.size(fits) > 0, lambda: tf.reduce_min(fits), lambda: length)


def _left_pad_to_bucket(ids: tf.RaggedTensor, max_new_tokens: tf.Tensor, limits: contract.Limits):
    """Ragged prompts left-padded to `padding.padded_length` of the longest, as the client and
    `model.generate` pad: (input_ids, attention_mask) int32 [B, W]."""
    ids = tf.cast(ids, tf.int32)
    lengths = tf.cast(ids.row_lengths(), tf.int32)  # [B]
    longest = tf.reduce_max(lengths)
    positions = limits.max_positions
    new = tf.minimum(_round_up(tf.reduce_max(max_new_tokens), NEW_TOKEN_BUCKETS), positions - longest)
    width = tf.minimum(_round_up(longest, PROMPT_BUCKETS), positions - new)
    dense = ids.to_tensor(default_value=limits.pad_token_id)  # right-padded [B, longest]
    source = tf.range(width)[tf.newaxis, :] - (width - lengths)[:, tf.newaxis]  # [B, W], < longest
    real = source >= 0
    shifted = tf.gather(dense, tf.maximum(source, 0), batch_dims=1)
    return tf.where(real, shifted, limits.pad_token_id), tf.cast(real, tf.int32)


def _generate_checks(limits: contract.Limits, input_ids, attention_mask, settings):
    """In-graph request checks, so stock TF Serving also answers INVALID_ARGUMENT with a reason."""
    length = tf.shape(input_ids)[1]
    assert_ = tf.debugging.Assert
    checks = [
        tf.debugging.assert_equal(
            tf.shape(attention_mask), tf.shape(input_ids), message="attention_mask must have input_ids' shape"
        ),
        assert_(length > 0, ["input_ids has no columns; expected at least one prompt token"]),
        assert_(
            tf.reduce_all((input_ids >= 0) & (input_ids < limits.vocab_size)),
            [f"input_ids must be in [0, {limits.vocab_size})"],
        ),
        assert_(
            tf.reduce_all(attention_mask[:, -1] == 1),
            ["attention_mask's last column must be 1: prompts must be left-padded"],
        ),
        assert_(
            tf.reduce_all(tf.reduce_sum(attention_mask, axis=1) + settings["max_new_tokens"] <= limits.max_positions),
            [
                f"each row's prompt tokens + max_new_tokens must be at most {limits.max_positions}, got",
                tf.reduce_sum(attention_mask, axis=1),
                settings["max_new_tokens"],
            ],
        ),
    ]
    return checks + _settings_checks(limits, settings)


class ServingModule(tf.Module):
    """The exported object: the model's variables, its tokenizer graph, one tf.function per signature.

    Args:
        model: a `DialoGPT`.
        text: the model's tokenizer as a `TextGraph` (for the chat signatures).
        limits: the export's limits.
        chat_defaults: the chat signatures' settings when a request gives none (served
            settings by name, wire values).
        make_generate: builds the decoding function (see `GenerateBuilder`); by default
            `tfdialogpt.generation.make_generate_fn`.
        include_xla: also build the XLA-compiled signatures.
    """

    def __init__(
        self,
        model,
        text,
        limits: contract.Limits,
        chat_defaults: dict[str, float | int | bool],
        make_generate: GenerateBuilder | None = None,
        include_xla: bool = True,
    ):
        super().__init__(name="dialogpt_serving")
        # The model is used but not tracked: the export tracks the TF variables under its Keras 3
        # variables instead. A tracked Keras variable is exported as a second, separate variable
        # (Keras's `_export_to_saved_model_graph` wraps the exported copy in a new `tf.Variable`),
        # so the SavedModel's saver restores one copy while the signatures read the other. TF2's
        # `tf.saved_model.load` hides this; TF1's session loader (TF Serving's C++
        # `LoadSavedModel`, `saved_model_cli run`) leaves the read variables uninitialized.
        self.model = self._no_dependency(model)
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self.text = text
        self.limits = limits
        make_generate = make_generate or _default_generate_builder
        decoders = {False: make_generate(model, limits, False)}
        if include_xla:
            decoders[True] = make_generate(model, limits, True)
        self._decoders = decoders
        defaults = {  # [1]: one value for every row of a request
            name: tf.constant([chat_defaults[name]], tf.as_dtype(parameter.spec.np_dtype))
            for name, parameter in contract.PARAMETERS.items()
        }
        self.functions = {}
        for jit_compile in decoders:
            generate_sig = contract.GENERATE_XLA if jit_compile else contract.GENERATE
            chat_sig = contract.CHAT_XLA if jit_compile else contract.CHAT
            self.functions[generate_sig.name] = self._generate_function(decoders[jit_compile])
            self.functions[chat_sig.name] = self._chat_function(decoders[jit_compile], defaults)
        chat = self.functions[contract.CHAT_SIGNATURE]
        self.functions[contract.DEFAULT_SIGNATURE] = tf.function(
            lambda turns: chat(turns, **defaults), input_signature=_tf_signature(contract.CHAT_DEFAULT)
        )  # the [1] defaults stand for every row
        self.score = tf.function(self._score, input_signature=_tf_signature(contract.SCORE))

    def _checked_decode(self, decode, input_ids, attention_mask, settings):
        """`settings` are [B] here (see `_per_row_settings`)."""
        with tf.control_dependencies(_generate_checks(self.limits, input_ids, attention_mask, settings)):
            sequences, lengths = decode(input_ids, attention_mask, **settings)
        # As many columns as the largest max_new_tokens asks for, whatever buffer the decoder
        # kept; a row with fewer holds the pad id after its own end (see `lengths`).
        width = tf.reduce_max(settings["max_new_tokens"])
        return tf.cast(sequences[:, :width], tf.int32), tf.cast(lengths, tf.int32)

    def _generate_function(self, decode):
        names = contract.GENERATE.input_names

        def generate(*inputs):
            values = dict(zip(names, inputs, strict=True))
            input_ids, attention_mask = values.pop("input_ids"), values.pop("attention_mask")
            values, checks = _per_row_settings(values, tf.shape(input_ids)[0])
            with tf.control_dependencies(checks):
                input_ids = tf.identity(input_ids)
            sequences, lengths = self._checked_decode(decode, input_ids, attention_mask, values)
            return {"sequences": sequences, "lengths": lengths}

        return tf.function(_named(generate, names), input_signature=_tf_signature(contract.GENERATE))

    def _chat_function(self, decode, defaults: dict[str, tf.Tensor]):
        """Text in, text out, as `Chat.reply` does: the newest whole turns that leave room for
        `max_new_tokens` are kept, the reply is decoded with special tokens skipped and stripped."""
        limits, text = self.limits, self.text
        names = contract.CHAT.input_names

        def chat(*inputs):
            values = dict(zip(names, inputs, strict=True))
            turns = values.pop("turns")
            values, checks = _per_row_settings(values, tf.shape(turns)[0])
            new = values["max_new_tokens"]
            checks += _settings_checks(limits, values) + [
                tf.debugging.Assert(tf.shape(turns)[0] > 0, ["turns has no rows; expected at least one dialogue"]),
                tf.debugging.Assert(
                    tf.reduce_all(new < limits.max_positions),
                    [f"max_new_tokens must leave room for a history in {limits.max_positions} positions, got", new],
                ),
            ]
            with tf.control_dependencies(checks):
                ids, _, _ = text.encode_dialogue(turns, max_length=limits.max_positions - new)
            input_ids, attention_mask = _left_pad_to_bucket(ids, new, limits)
            sequences, lengths = self._checked_decode(decode, input_ids, attention_mask, values)
            reply = text.strip(text.decode(sequences, lengths, skip_special_tokens=True))
            return {"reply": reply, "sequences": sequences, "lengths": lengths}

        return tf.function(_named(chat, names, defaults), input_signature=_tf_signature(contract.CHAT))

    def _score(self, input_ids, attention_mask, target_mask):
        from tfdialogpt.scoring import score_tensors

        checks = [
            tf.debugging.assert_equal(
                tf.shape(attention_mask), tf.shape(input_ids), message="attention_mask must have input_ids' shape"
            ),
            tf.debugging.assert_equal(
                tf.shape(target_mask), tf.shape(input_ids), message="target_mask must have input_ids' shape"
            ),
            tf.debugging.Assert(
                tf.reduce_all((input_ids >= 0) & (input_ids < self.limits.vocab_size)),
                [f"input_ids must be in [0, {self.limits.vocab_size})"],
            ),
        ]
        with tf.control_dependencies(checks):
            log_probs = score_tensors(self.model, input_ids, attention_mask, target_mask)
        num_tokens = tf.reduce_sum(tf.cast(target_mask[:, 1:], tf.int32), axis=1)
        return {"log_probs": tf.cast(log_probs, tf.float32), "num_tokens": num_tokens}

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The signatures to save. The chat functions are given whole (not as concrete
        functions), so the saver records their default settings in the SignatureDefs."""
        functions = {}
        for name, function in self.functions.items():
            functions[name] = (
                function
                if name in (contract.CHAT_SIGNATURE, contract.CHAT_XLA_SIGNATURE)
                else (function.get_concrete_function())
            )
        functions[contract.SCORE_SIGNATURE] = self.score.get_concrete_function()
        return functions
