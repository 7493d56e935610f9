"""SavedModel export in TF Serving's layout, with the whole decoding loop inside the graph.

`export(model, "/models/dialogpt")` writes `/models/dialogpt/<version>/` (the next version by
default) holding:
- `saved_model.pb` + `variables/` with the signatures of `signatures.py` (built by
  `serving_module.py`): `chat` (text in, text out, the tokenizer in the graph),
  `serving_default` (the chat with the export's default settings, `turns` its only input),
  `generate` (ids in, ids out), their XLA twins `chat_xla` and `generate_xla` (for TF
  Serving started with `--xla_cpu_compilation_enabled`), and `score`;
- `assets.extra/tf_serving_warmup_requests`: a TFRecord of `PredictionLog` (`warmup.py`), one
  request per prompt-length bucket and signature, which TF Serving replays before serving;
- `assets.extra/tfdialogpt.json`: the export's limits (cap on new tokens, vocabulary,
  positions), which `tfdialogpt.serving.server` uses to check requests.

Only stock TF and TF Text ops are used (no `py_function`, no custom ops). The version directory is
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
import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import tensorflow as tf

from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.serving_module import ServingModule
from tfdialogpt.serving.warmup import warmup_requests

__all__ = ["ExportResult", "export", "next_version", "warmup_requests"]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went: `path` = `base_path/version`, and what it holds."""

    path: str
    version: int
    signatures: tuple[str, ...]
    warmup_records: int
    limits: contract.Limits


def next_version(base_path: str | os.PathLike) -> int:
    """1 + the largest numeric version directory under `base_path` (1 if none).

    Raises:
        ValueError: `base_path` is a file.
    """
    try:
        versions = [int(name) for name in os.listdir(base_path) if name.isascii() and name.isdigit()]
    except FileNotFoundError:
        return 1
    except NotADirectoryError:
        raise ValueError(f"base path {base_path} is a file; exports go into a directory of versions") from None
    return max(versions, default=0) + 1


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
        contract.CHAT_SIGNATURE,
        contract.GENERATE_SIGNATURE,
        contract.SCORE_SIGNATURE,
    ),
    include_xla: bool = True,
    quantize: str | None = None,
    tokenizer=None,
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
        warmup_signatures: signatures replayed at load time. The XLA ones are left out by
            default: on a TF Serving without its XLA flags their warmup would fail the load.
        include_xla: also export the `generate_xla` and `chat_xla` signatures.
        quantize: `"int8"` loads a named model with int8 weights (`DialoGPT.quantize`); a
            model object is exported as it is (quantize it first).
        tokenizer: the model's `Tokenizer` (or a name / directory for it), built into the chat
            signatures; by default the one beside the model's checkpoint (`model.name_or_path`).

    The chat signatures' settings default to the model's `generation_config` (its served
    settings; `max_new_tokens` at most the cap), recorded in their SignatureDefs.

    Returns:
        An `ExportResult` with the version directory.

    Raises:
        FileExistsError: the version directory exists already.
        ValueError: a bad cap, version or warmup setting, no tokenizer for a model object, a
            tokenizer whose vocabulary does not fit the model, or a base path that is a file.
    """
    next_version(base_path)  # a base path that is a file is refused before the model loads
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
    xla = {contract.GENERATE_XLA_SIGNATURE, contract.CHAT_XLA_SIGNATURE}
    exported = set(contract.SIGNATURES) - (set() if include_xla else xla)
    unknown = [name for name in warmup_signatures if name not in exported]
    if unknown:
        raise ValueError(f"cannot warm up {unknown}: not exported")
    text = _text_graph(model, tokenizer)
    limits = contract.Limits(
        vocab_size=config.vocab_size,
        max_positions=config.max_positions,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else config.eos_token_id,
        cache_bytes_per_position=2 * config.num_layers * config.hidden_size * tf.as_dtype(model.compute_dtype).size,
        max_new_tokens_cap=max_new_tokens_cap,
        warmup_prompt_lengths=tuple(n for n in warmup_prompt_lengths if n + max_new_tokens_cap <= config.max_positions),
        # Room for the model's own n-gram ban (its generation_config) if it is larger.
        max_no_repeat_ngram_size=max(
            contract.DEFAULT_MAX_NO_REPEAT_NGRAM_SIZE, model.generation_config.no_repeat_ngram_size or 0
        ),
    )
    base_path = os.fspath(base_path)
    final = os.path.join(base_path, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"version {version} already exists at {final}; pick another version or remove it")
    os.makedirs(base_path, exist_ok=True)

    module = ServingModule(model, text, limits, _chat_defaults(model, limits), include_xla=include_xla)
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


def _text_graph(model, tokenizer):
    from tfdialogpt.text_graph import TextGraph
    from tfdialogpt.tokenizer import Tokenizer

    if tokenizer is None:
        if model.name_or_path is None:
            raise ValueError(
                "the chat signatures need the model's tokenizer: pass tokenizer= (a Tokenizer or its directory)"
            )
        tokenizer = model.name_or_path
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    config = model.config
    if tokenizer.vocab_size > config.vocab_size or tokenizer.eos_token_id != config.eos_token_id:
        raise ValueError(
            f"the tokenizer ({tokenizer.vocab_size} ids, EOS {tokenizer.eos_token_id}) does not fit the model "
            f"({config.vocab_size} ids, EOS {config.eos_token_id})"
        )
    return TextGraph.from_tokenizer(tokenizer)


def _chat_defaults(model, limits: contract.Limits) -> dict[str, float | int | bool]:
    """The chat signatures' default settings: the model's served generation settings."""
    config = model.generation_config
    values = {
        name: parameter.default if getattr(config, name) is None else getattr(config, name)
        for name, parameter in contract.PARAMETERS.items()
    }
    values["max_new_tokens"] = min(values["max_new_tokens"], limits.max_new_tokens_cap)
    return values


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
        tokenizer=args.tokenizer,
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
