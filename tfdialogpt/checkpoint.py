"""Checkpoint reading and writing: every format a DialoGPT user meets, loaded strictly.

Formats read (plain or sharded with their `*.index.json`):
- `tf_model.h5` written by HF transformers' TF classes, in both layouts on the hub: the 2020
  files (`tfgp_t2lm_head_model/.../wte/weight:0`) and today's (`tfgpt2lm_head_model/.../
  wte/embeddings:0`);
- `model.safetensors` written by PyTorch (`transformer.h.0.attn.c_attn.weight`) or by TF
  (`transformer/h_._0/attn/c_attn/weight:0`).

Every tensor name is reduced to one canonical spelling (PyTorch's, without the `transformer.`
prefix: `h.0.attn.c_attn.weight`, `wte.weight`, `ln_f.bias`), checked against the names and
shapes the config implies, and only then assigned. A missing, unexpected or mis-shaped
tensor raises one `CheckpointError` that lists them all, and so does a tensor holding NaN or
Inf; a model is never half loaded. Hub ids are resolved by `tfdialogpt.hub`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from tfdialogpt import quantization
from tfdialogpt.checkpoint_files import (  # noqa: F401 (part of this module's interface)
    CONFIG_NAME,
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_NAME,
    TF_WEIGHTS_INDEX_NAME,
    TF_WEIGHTS_NAME,
    WEIGHT_FILES,
    CheckpointError,
    _local_directory,
    _read_config,
    _resolve_hub,
    _weight_map,
    _weights_in_dir,
    load_config,
    resolve,
    resolve_file,
)
from tfdialogpt.config import DialoGPTConfig

# Scope of HF's TFGPT2LMHeadModel as transformers 4.x writes it; the loader ignores the scope.
_HF_TF_SCOPE = "tfgpt2lm_head_model/transformer"
# Buffers some PyTorch checkpoints carry: not weights.
_IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_MAX_LISTED = 10
# Elements per slice of the NaN/Inf check (a 1 MB boolean mask at a time).
_FINITE_SLICE = 1 << 20


# ---- names -----------------------------------------------------------------------------------


def canonical_name(name: str) -> str | None:
    """Reduces any checkpoint spelling of a weight to `h.0.attn.c_attn.weight` style.

    Returns None for a name that holds no GPT-2 weight we know of.
    """
    name = name.removesuffix(":0")
    parts = re.split(r"[/.]", name.replace("h_._", "h."))
    for start, part in enumerate(parts):
        if part in ("wte", "wpe", "ln_f") or (part == "h" and start + 1 < len(parts) and parts[start + 1].isdigit()):
            break
    else:
        return "lm_head.weight" if parts[-2:] == ["lm_head", "weight"] else None
    parts = parts[start:]
    rename = {"gamma": "weight", "beta": "bias", "embeddings": "weight"}
    parts[-1] = rename.get(parts[-1], parts[-1])
    return ".".join(parts)


def expected_shapes(config: DialoGPTConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for every weight the config implies (148 for the small shape)."""
    c, f = config.hidden_size, config.mlp_size
    shapes = {"wte.weight": (config.vocab_size, c), "wpe.weight": (config.max_positions, c)}
    for i in range(config.num_layers):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (c,), p + "ln_1.bias": (c,),
            p + "attn.c_attn.weight": (c, 3 * c), p + "attn.c_attn.bias": (3 * c,),
            p + "attn.c_proj.weight": (c, c), p + "attn.c_proj.bias": (c,),
            p + "ln_2.weight": (c,), p + "ln_2.bias": (c,),
            p + "mlp.c_fc.weight": (c, f), p + "mlp.c_fc.bias": (f,),
            p + "mlp.c_proj.weight": (f, c), p + "mlp.c_proj.bias": (c,),
        })  # fmt: skip
    shapes.update({"ln_f.weight": (c,), "ln_f.bias": (c,)})
    return shapes


def model_variables(model) -> dict[str, object]:
    """Canonical name -> the model's Keras variable (the name table)."""
    table = {"wte.weight": model.wte.embeddings, "wpe.weight": model.wpe.embeddings}
    for i, block in enumerate(model.h):
        p = f"h.{i}."
        for ln_name in ("ln_1", "ln_2"):
            ln = getattr(block, ln_name)
            table[p + ln_name + ".weight"], table[p + ln_name + ".bias"] = ln.gamma, ln.beta
        for sub, proj in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")):
            layer = getattr(getattr(block, sub), proj)
            table[f"{p}{sub}.{proj}.weight"], table[f"{p}{sub}.{proj}.bias"] = layer.weight, layer.bias
    table["ln_f.weight"], table["ln_f.bias"] = model.ln_f.gamma, model.ln_f.beta
    return table


def _hf_tf_name(canonical: str) -> str:
    """`h.0.attn.c_attn.weight` -> `h_._0/attn/c_attn/weight:0` (TF Keras 2 variable names)."""
    parts = canonical.split(".")
    if parts[0] == "h":
        parts = [f"h_._{parts[1]}"] + parts[2:]
    if parts[0] in ("wte", "wpe"):
        parts[-1] = "embeddings"
    elif parts[-2] in ("ln_1", "ln_2", "ln_f"):
        parts[-1] = {"weight": "gamma", "bias": "beta"}[parts[-1]]
    return "/".join(parts) + ":0"


# ---- readers -----------------------------------------------------------------------------------


def _add(tensors: dict[str, np.ndarray], raw_name: str, value: np.ndarray, source: str) -> None:
    name = canonical_name(raw_name)
    if name is None:
        raise CheckpointError(f"{source} holds an unexpected tensor `{raw_name}` that is not a GPT-2 weight")
    if name in tensors:
        raise CheckpointError(f"{source} holds `{name}` twice (the second as `{raw_name}`)")
    tensors[name] = value


def read_h5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All weights of a HF-layout Keras h5 file (one shard or a whole checkpoint)."""
    tensors: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            datasets: list[tuple[str, h5py.Dataset]] = []
            f.visititems(lambda n, obj: datasets.append((n, obj)) if isinstance(obj, h5py.Dataset) else None)
            for raw_name, dataset in datasets:
                _add(tensors, raw_name, dataset[()], str(path))
    except (OSError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"cannot read {path}: {err} (truncated or not an HDF5 checkpoint?)") from None
    return tensors


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All weights of a safetensors file written by PyTorch or by TF."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err} (truncated or not a safetensors file?)") from None
    tensors: dict[str, np.ndarray] = {}
    for raw_name, value in raw.items():
        _add(tensors, raw_name, value, str(path))
    return tensors


def _read_any(path: Path) -> dict[str, np.ndarray]:
    return read_safetensors(path) if path.suffix == ".safetensors" else read_h5(path)


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a weights file, or every shard listed by a `*.index.json`, into canonical names."""
    path = Path(path)
    if not path.name.endswith(".index.json"):
        return _read_any(path)
    weight_map = _weight_map(path)
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{path.name} lists the shard {shard}, which is not in {path.parent}")
        for name, value in _read_any(shard_path).items():
            if name in tensors:
                raise CheckpointError(f"`{name}` appears in more than one shard of {path}")
            tensors[name] = value
    return tensors


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(f"`{n}`" for n in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _non_finite_count(value: np.ndarray) -> int:
    """How many NaN/Inf values `value` holds, checked in slices: the only temporary is a
    1 MB mask, not one the size of the tensor (38 MB for DialoGPT-small's `wte`)."""
    if value.dtype.kind not in "fc":
        return 0
    flat = value.reshape(-1)  # a view: readers return contiguous arrays
    return sum(
        int(part.size - np.count_nonzero(np.isfinite(part)))
        for part in (flat[start : start + _FINITE_SLICE] for start in range(0, flat.size, _FINITE_SLICE))
    )


def _file_holding(source: str, name: str) -> str:
    """The file of `source` holding the canonical tensor `name`: its shard for an index."""
    if source.endswith(".index.json") and os.path.isfile(source):
        for raw_name, shard in _weight_map(Path(source)).items():
            if canonical_name(raw_name) == name:
                return str(Path(source).parent / shard)
    return source


def check_weights(tensors: dict[str, np.ndarray], config: DialoGPTConfig, source: str) -> dict[str, np.ndarray]:
    """Validates names, shapes and values against the config; returns tensors ready to assign.

    TF checkpoints store biases as (1, n): they are flattened. Every value must be finite (a
    NaN or Inf weight makes every output NaN). An `lm_head.weight` must equal `wte.weight`
    (GPT-2 ties them).
    """
    expected = expected_shapes(config)
    tensors = {k: v for k, v in tensors.items() if not _IGNORED.match(k)}
    lm_head = tensors.pop("lm_head.weight", None)

    def mismatch(problems: list[str]) -> CheckpointError:
        return CheckpointError(
            f"checkpoint {source} does not match its config ({config.num_layers} layers, "
            f"hidden {config.hidden_size}, vocab {config.vocab_size}; expected {len(expected)} "
            f"tensors, found {len(tensors)}): " + " | ".join(problems)
        )

    problems = []
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    if missing:
        problems.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    ready, misshaped = {}, []
    for name in expected.keys() & tensors.keys():
        value = tensors[name]
        if value.ndim == 2 and value.shape[0] == 1 and len(expected[name]) == 1:
            value = value.reshape(-1)
        if tuple(value.shape) != expected[name]:
            misshaped.append(f"`{name}` is {tuple(value.shape)}, expected {expected[name]}")
        ready[name] = value
    if misshaped:
        problems.append("wrong shape: " + "; ".join(sorted(misshaped)[:_MAX_LISTED]))
    if problems:
        raise mismatch(problems)
    checked = {**ready, "lm_head.weight": lm_head} if lm_head is not None else ready
    non_finite = {name: n for name in sorted(checked) if (n := _non_finite_count(checked[name]))}
    if non_finite:
        shown = [
            f"`{name}`: {n} non-finite value{'s' if n > 1 else ''} (NaN/Inf) in {_file_holding(source, name)}"
            for name, n in list(non_finite.items())[:_MAX_LISTED]
        ]
        more = len(non_finite) - len(shown)
        raise CheckpointError("; ".join(shown) + (f"; and {more} more tensors" if more else ""))
    if lm_head is not None and not np.array_equal(lm_head, ready["wte.weight"]):
        raise mismatch(["`lm_head.weight` differs from `wte.weight`; only a tied LM head is supported"])
    return ready


def assign_weights(model, tensors: dict[str, np.ndarray]) -> None:
    """Assigns already-checked tensors to every variable of `model`."""
    table = model_variables(model)
    if table.keys() != tensors.keys():
        raise CheckpointError(f"internal: name table and tensors differ: {_listing(table.keys() ^ tensors.keys())}")
    for name, variable in table.items():
        variable.assign(tensors[name].astype(variable.dtype))


# ---- locating checkpoints ------------------------------------------------------------------------


def load_pretrained(
    model_cls,
    name_or_path,
    *,
    config: DialoGPTConfig | None = None,
    cache_dir=None,
    revision=None,
    token=None,
    local_files_only=False,
    quantize: str | None = None,
    **model_kwargs,
):
    """Builds `model_cls(config)` and loads a checkpoint into it, strictly.

    Args:
        name_or_path: a directory (config.json + weights), a hub id, or "default".
        config: overrides the checkpoint's config.json (must still match the weights).
        cache_dir, revision, token, local_files_only: for a hub id (`tfdialogpt.hub`):
            `local_files_only=True`, or `HF_HUB_OFFLINE=1`, reads the local hub cache only.
        quantize: `"int8"` quantizes the loaded model for inference (`DialoGPT.quantize`).
    Raises:
        CheckpointError: no checkpoint, an unreachable hub, an unreadable file, or weights
            that do not match the config or hold NaN/Inf values.
        ValueError: an unsupported `quantize` mode (checked before anything is read).
    """
    if quantize is not None:
        quantization.check_mode(quantize)
    config_path, weights_path = resolve(
        name_or_path, cache_dir=cache_dir, revision=revision, token=token, local_files_only=local_files_only
    )
    if config is None:
        config = _read_config(config_path)
    tensors = check_weights(read_weights(weights_path), config, str(weights_path))
    model = model_cls(config, **model_kwargs)
    assign_weights(model, tensors)
    if quantize is not None:
        model.quantize(quantize)
    return model


STORAGE_DTYPES = ("float32", "float16")


def _numpy_weights(model, dtype: str = "float32") -> dict[str, np.ndarray]:
    return {name: np.asarray(v.numpy(), dtype=dtype) for name, v in model_variables(model).items()}


def save_pretrained(
    model, directory, *, safe_serialization: bool = False, tokenizer=None, weights_dtype: str = "float32"
) -> None:
    """Writes `config.json` and `tf_model.h5` in HF's TF layout; optionally also a
    PyTorch-layout `model.safetensors`, and the tokenizer files.

    transformers' `TFGPT2LMHeadModel.from_pretrained(directory)` loads the h5 (and
    `GPT2LMHeadModel.from_pretrained(directory)` the safetensors) with the same logits.
    `weights_dtype="float16"` stores half the bytes (as the hub's fp16 checkpoints do); loading
    gives the model's own dtype back (float32 by default), holding the float16-rounded values.
    """
    import keras

    if weights_dtype not in STORAGE_DTYPES:
        raise ValueError(f"weights_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {weights_dtype!r}")

    if getattr(model, "weight_quantization", None) is not None:
        raise ValueError(
            f"model {model.name!r} holds {model.weight_quantization} weights, which HF checkpoints cannot store; "
            "save the float model and quantize it after loading (`from_pretrained(..., quantize=...)`)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory)
    weights = _numpy_weights(model, weights_dtype)
    tmp = directory / (TF_WEIGHTS_NAME + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = keras.__version__
        f.attrs["layer_names"] = np.array([b"transformer"], dtype=object)
        f.create_group("top_level_model_weights").attrs["weight_names"] = np.array([], dtype=np.float64)
        group = f.create_group("transformer")
        names = []
        for name, value in weights.items():
            tf_name = f"{_HF_TF_SCOPE}/{_hf_tf_name(name)}"
            if ".c_" in name and name.endswith(".bias"):
                value = value.reshape(1, -1)  # HF TF Conv1D biases are (1, n)
            group.create_dataset(tf_name, data=value)
            names.append(tf_name.encode("utf8"))
        group.attrs["weight_names"] = np.array(names, dtype=object)
    os.replace(tmp, directory / TF_WEIGHTS_NAME)
    if safe_serialization:
        from safetensors.numpy import save_file

        pt = {f"transformer.{name}": np.ascontiguousarray(value) for name, value in weights.items()}
        save_file(pt, str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
