"""SavedModel export in TF Serving's layout, with the whole decoding loop inside the graph.

`export(model, "/models/dialogpt")` writes `/models/dialogpt/<version>/` (the next version by
default) holding:
- `saved_model.pb` + `variables/` with the signatures of `signatures.py`:
  `serving_default` and `generate` (the decoding loop with its KV cache, plain graph: stock
  TF Serving runs it with no flags), `generate_xla` (the same loop with `jit_compile=True`,
  for TF Serving started with `--xla_cpu_compilation_enabled`), and `score`;
- `assets.extra/tf_serving_warmup_requests`: a TFRecord of `PredictionLog`, one request per
  prompt-length bucket and signature, which TF Serving replays before serving the version;
- `assets.extra/tfdialogpt.json`: the export's limits (cap on new tokens, vocabulary,
  positions), which `tfdialogpt.serving.server` uses to check requests.

Only stock TF ops are used (no `py_function`, no custom ops). The version directory is
written under a temporary name and renamed into place, so a polling server never sees a half
written version.

Example:
    >>> from tfdialogpt import DialoGPT
    >>> from tfdialogpt.serving.export import export
    >>> result = export(DialoGPT.from_pretrained("microsoft/DialoGPT-small"), "/models/dialogpt")  # doctest: +SKIP
    >>> result.path  # doctest: +SKIP
    '/models/dialogpt/1'
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfdialogpt.generation_config import SETTINGS
from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.protos import apis, to_tensor_proto

# make_generate(model, max_new_tokens_cap, jit_compile) -> fn(input_ids, attention_mask,
# **served settings) -> (sequences [B, <=cap], lengths [B]), all arguments tensors.
GenerateBuilder = Callable[..., Callable[..., tuple[tf.Tensor, tf.Tensor]]]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went: `path` = `base_path/version`, and what it holds."""

    path: str
    version: int
    signatures: tuple[str, ...]
    warmup_records: int
    limits: contract.Limits


def next_version(base_path: str | os.PathLike) -> int:
    """1 + the largest numeric version directory under `base_path` (1 if none)."""
    try:
        versions = [int(name) for name in os.listdir(base_path) if name.isdigit()]
    except FileNotFoundError:
        return 1
    return max(versions, default=0) + 1


def _tf_signature(sig: contract.Signature) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(spec.static_shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in sig.inputs]


def _named(fn: Callable, names: Sequence[str]) -> Callable:
    """`fn(*tensors)` with named parameters, so signature inputs carry the contract's names."""
    fn.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    return fn


def _default_generate_builder(model, max_new_tokens_cap: int, jit_compile: bool):
    """The decoding loop of `tfdialogpt.generation` (the function `model.generate` compiles);
    run-time settings the contract does not serve keep `GenerationConfig`'s defaults."""
    from tfdialogpt.generation.engine import GENERATE_INPUTS, make_generate_fn

    generate_fn = make_generate_fn(model, max_new_tokens=max_new_tokens_cap, jit_compile=jit_compile)
    fixed = {
        name: tf.constant(SETTINGS[name].wire_default, dtype)
        for name, dtype in GENERATE_INPUTS[2:]
        if name not in contract.PARAMETERS
    }

    def decode(input_ids, attention_mask, **settings):
        out = generate_fn(input_ids=input_ids, attention_mask=attention_mask, **settings, **fixed)
        return out["sequences"], out["lengths"]

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
    return tf.debugging.Assert(ok, [f"{name} must be in {setting.range_text(high)}, got", value])


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
            length + settings["max_new_tokens"] <= limits.max_positions,
            [
                f"prompt length + max_new_tokens must be at most {limits.max_positions}, got",
                length,
                settings["max_new_tokens"],
            ],
        ),
    ]
    highs = limits.highs()
    for name, parameter in contract.PARAMETERS.items():
        check = _range_check(name, settings[name], parameter.setting, highs.get(name))
        if check is not None:
            checks.append(check)
    return checks


class ServingModule(tf.Module):
    """The exported object: the model's variables and one tf.function per signature.

    Args:
        model: a `DialoGPT`.
        limits: the export's limits.
        make_generate: builds the decoding function (see `GenerateBuilder`); by default
            `tfdialogpt.generation.make_generate_fn`.
    """

    def __init__(
        self, model, limits: contract.Limits, make_generate: GenerateBuilder | None = None, include_xla: bool = True
    ):
        super().__init__(name="dialogpt_serving")
        self.model = model
        self.limits = limits
        make_generate = make_generate or _default_generate_builder
        self.generate = self._generate_function(make_generate(model, limits.max_new_tokens_cap, False))
        self.generate_xla = (
            self._generate_function(make_generate(model, limits.max_new_tokens_cap, True)) if include_xla else None
        )
        self.score = tf.function(self._score, input_signature=_tf_signature(contract.SCORE))

    def _generate_function(self, decode):
        limits = self.limits
        names = contract.GENERATE.input_names

        def generate(*inputs):
            values = dict(zip(names, inputs, strict=True))
            input_ids, attention_mask = values.pop("input_ids"), values.pop("attention_mask")
            with tf.control_dependencies(_generate_checks(limits, input_ids, attention_mask, values)):
                sequences, lengths = decode(input_ids, attention_mask, **values)
            # Exactly max_new_tokens columns, whatever buffer the decoder kept.
            sequences = tf.cast(sequences[:, : values["max_new_tokens"]], tf.int32)
            return {"sequences": sequences, "lengths": tf.cast(lengths, tf.int32)}

        return tf.function(_named(generate, names), input_signature=_tf_signature(contract.GENERATE))

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
        functions = {
            contract.DEFAULT_SIGNATURE: self.generate.get_concrete_function(),
            contract.GENERATE_SIGNATURE: self.generate.get_concrete_function(),
            contract.SCORE_SIGNATURE: self.score.get_concrete_function(),
        }
        if self.generate_xla is not None:
            functions[contract.GENERATE_XLA_SIGNATURE] = self.generate_xla.get_concrete_function()
        return functions


def warmup_requests(
    limits: contract.Limits,
    signature_names: Sequence[str],
    model_name: str = "dialogpt",
    batch_sizes: Sequence[int] = (1,),
) -> list:
    """`PredictionLog`s, one per signature, prompt-length bucket and batch size.

    Generate requests ask for 2 new tokens: enough to run the prefill and a decode step of
    every compiled shape, quick even for large models.
    """
    api = apis()
    lengths = [n for n in limits.warmup_prompt_lengths if n + 2 <= limits.max_positions] or [1]
    logs = []
    for name in signature_names:
        sig = contract.SIGNATURES[name]
        for length in lengths:
            for batch in batch_sizes:
                ids = np.full((batch, length), limits.eos_token_id, np.int32)
                if name == contract.SCORE_SIGNATURE:
                    target = np.zeros_like(ids)
                    target[:, -1] = 1
                    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "target_mask": target}
                else:
                    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
                    for parameter in contract.PARAMETERS.values():
                        inputs[parameter.name] = np.asarray(parameter.default, parameter.spec.np_dtype)
                    inputs["max_new_tokens"] = np.asarray(min(2, limits.max_new_tokens_cap), np.int32)
                request = api.predict_pb2.PredictRequest()
                request.model_spec.name = model_name
                request.model_spec.signature_name = sig.name
                for key, value in inputs.items():
                    to_tensor_proto(value, request.inputs[key])
                logs.append(
                    api.prediction_log_pb2.PredictionLog(predict_log=api.prediction_log_pb2.PredictLog(request=request))
                )
    if len(logs) > contract.MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(logs)} warmup records; TF Serving reads at most {contract.MAX_WARMUP_RECORDS}")
    return logs


def export(
    model,
    base_path: str | os.PathLike,
    version: int | None = None,
    *,
    model_name: str = "dialogpt",
    max_new_tokens_cap: int = contract.DEFAULT_MAX_NEW_TOKENS_CAP,
    warmup_prompt_lengths: Sequence[int] = contract.DEFAULT_WARMUP_PROMPT_LENGTHS,
    warmup_batch_sizes: Sequence[int] = (1,),
    warmup_signatures: Sequence[str] = (
        contract.DEFAULT_SIGNATURE,
        contract.GENERATE_SIGNATURE,
        contract.SCORE_SIGNATURE,
    ),
    include_xla: bool = True,
    quantize: str | None = None,
) -> ExportResult:
    """Writes `model` as SavedModel version `version` under `base_path` (TF Serving's layout).

    Args:
        model: a `DialoGPT`, or a name / directory for `DialoGPT.from_pretrained`.
        base_path: the model's base directory (created if missing).
        version: the version number; by default one more than the largest present.
        model_name: the name written into the warmup requests.
        max_new_tokens_cap: the most new tokens one request may ask for; each generate call
            preallocates its KV cache for prompt + this many positions.
        warmup_prompt_lengths: prompt-length buckets to warm up (those that fit are kept).
        warmup_batch_sizes: batch sizes to warm up (match TF Serving's `allowed_batch_sizes`).
        warmup_signatures: signatures replayed at load time. `generate_xla` is left out by
            default: on a TF Serving without its XLA flags its warmup would fail the load.
        include_xla: also export the `generate_xla` signature.
        quantize: `"int8"` loads a named model with int8 weights (`DialoGPT.quantize`); a
            model object is exported as it is (quantize it first).

    Returns:
        An `ExportResult` with the version directory.

    Raises:
        FileExistsError: the version directory exists already.
        ValueError: a bad cap, version or warmup setting.
    """
    if not hasattr(model, "call_with_cache"):
        from tfdialogpt.model import DialoGPT

        model = DialoGPT.from_pretrained(model, quantize=quantize)
    elif quantize is not None and model.weight_quantization != quantize:
        raise ValueError(
            f"quantize={quantize!r} applies to a model given by name; quantize the model object first "
            f"(`model.quantize({quantize!r})`)"
        )
    config = model.config
    if version is None:
        version = next_version(base_path)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    if not 1 <= max_new_tokens_cap < config.max_positions:
        raise ValueError(f"max_new_tokens_cap must be in [1, {config.max_positions - 1}], got {max_new_tokens_cap}")
    unknown = [name for name in warmup_signatures if name not in contract.SIGNATURES]
    if unknown or (not include_xla and contract.GENERATE_XLA_SIGNATURE in warmup_signatures):
        raise ValueError(f"cannot warm up {unknown or [contract.GENERATE_XLA_SIGNATURE]}: not exported")
    limits = contract.Limits(
        vocab_size=config.vocab_size,
        max_positions=config.max_positions,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else config.eos_token_id,
        max_new_tokens_cap=max_new_tokens_cap,
        warmup_prompt_lengths=tuple(n for n in warmup_prompt_lengths if n + max_new_tokens_cap <= config.max_positions),
    )
    base_path = os.fspath(base_path)
    final = os.path.join(base_path, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"version {version} already exists at {final}; pick another version or remove it")
    os.makedirs(base_path, exist_ok=True)

    module = ServingModule(model, limits, include_xla=include_xla)
    signature_functions = module.signatures()
    staging = tempfile.mkdtemp(prefix=f".export-{version}-", dir=base_path)  # not numeric: ignored by servers
    try:
        tf.saved_model.save(module, staging, signatures=signature_functions)
        extra = os.path.join(staging, contract.ASSETS_EXTRA_DIR)
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, contract.METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(limits.to_json_dict(), f, indent=2)
            f.write("\n")
        logs = warmup_requests(limits, warmup_signatures, model_name, warmup_batch_sizes)
        with tf.io.TFRecordWriter(os.path.join(extra, contract.WARMUP_FILE)) as writer:
            for entry in logs:
                writer.write(entry.SerializeToString())
        os.chmod(staging, 0o755)
        os.rename(staging, final)  # atomic: a server polling base_path sees all or nothing
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(final, version, tuple(signature_functions), len(logs), limits)


# ---- command line (also what `tfdialogpt export` maps to) ------------------------------------


def export_from_args(args) -> ExportResult:
    return export(
        args.model,
        args.base_path,
        args.version,
        model_name=args.model_name,
        max_new_tokens_cap=args.max_new_tokens_cap,
        warmup_batch_sizes=tuple(args.warmup_batch_sizes),
        include_xla=not args.no_xla,
        quantize=args.quantize,
    )


def main(argv=None) -> int:
    import argparse

    from tfdialogpt.serving.options import add_export_arguments

    parser = argparse.ArgumentParser(prog="python -m tfdialogpt.serving.export", description=__doc__.split("\n")[0])
    add_export_arguments(parser)
    result = export_from_args(parser.parse_args(argv))
    print(
        f"wrote version {result.version} to {result.path}: signatures {', '.join(result.signatures)}; "
        f"{result.warmup_records} warmup requests"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
