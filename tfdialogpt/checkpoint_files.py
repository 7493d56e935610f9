"""The files of a checkpoint: their names, and where they are (a local directory, `"default"`
for the embedded model, or a hub repository through `tfdialogpt.hub`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tfdialogpt import hub
from tfdialogpt.config import DEFAULT_MODEL_DIR, ConfigError, DialoGPTConfig

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TF_WEIGHTS_NAME = "tf_model.h5"
TF_WEIGHTS_INDEX_NAME = "tf_model.h5.index.json"
CONFIG_NAME = "config.json"
# Order of preference when a directory or hub repo holds several formats.
WEIGHT_FILES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, TF_WEIGHTS_NAME, TF_WEIGHTS_INDEX_NAME)


# A model's reverse model (source given reply, for MMI reranking) is kept in this subdirectory.
REVERSE_DIR_NAME = "reverse"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: missing, malformed or not matching."""


def reverse_model_dir(name_or_path) -> Path:
    """The reverse (MMI) model kept beside a local model, in its `reverse/` subdirectory
    (`"default"`: the embedded model's)."""
    directory = DEFAULT_MODEL_DIR if str(name_or_path) == "default" else Path(name_or_path)
    reverse = directory / REVERSE_DIR_NAME
    if not (reverse / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"no reverse model beside model {str(name_or_path)!r} (looked for {REVERSE_DIR_NAME}/{CONFIG_NAME} "
            "in its directory): name the reverse model itself (--mmi-model)"
        )
    return reverse


def _weights_in_dir(directory: Path) -> Path:
    for filename in WEIGHT_FILES:
        if (directory / filename).is_file():
            return directory / filename
    raise CheckpointError(f"no checkpoint in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


def _local_directory(name_or_path: str | os.PathLike) -> Path | None:
    """The checkpoint directory `name_or_path` names (`"default"`: the embedded model), or None
    for a hub id."""
    if str(name_or_path) == "default":
        return DEFAULT_MODEL_DIR
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise CheckpointError(f"{name_or_path} is not a checkpoint directory")
    return None


def _config_in_dir(directory: Path) -> Path:
    if not (directory / CONFIG_NAME).is_file():
        if directory == DEFAULT_MODEL_DIR:
            raise CheckpointError(f"the embedded default model is missing from {directory}")
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}")
    return directory / CONFIG_NAME


def resolve(
    name_or_path: str | os.PathLike, cache_dir=None, revision=None, token=None, local_files_only=False
) -> tuple[Path, Path]:
    """Finds (config.json, weights file or index) for a directory, `"default"` or a hub id.

    Hub ids go through `tfdialogpt.hub` (huggingface_hub): downloads show its progress bar and
    land in its cache (`cache_dir` or HF_HUB_CACHE); `local_files_only=True` or
    `HF_HUB_OFFLINE=1` reads that cache only.
    """
    directory = _local_directory(name_or_path)
    if directory is None:
        return _resolve_hub(
            hub.HubRepo(
                str(name_or_path),
                cache_dir=cache_dir,
                revision=revision,
                token=token,
                local_files_only=local_files_only,
            )
        )
    return _config_in_dir(directory), _weights_in_dir(directory)


def load_config(
    name_or_path: str | os.PathLike, cache_dir=None, revision=None, token=None, local_files_only=False
) -> DialoGPTConfig:
    """The config alone of a directory, `"default"` or a hub id (no weights read or fetched):
    what a client of a served model needs (its positions and EOS id). Hub arguments as in
    `resolve`."""
    directory = _local_directory(name_or_path)
    if directory is not None:
        return _read_config(_config_in_dir(directory))
    repo = hub.HubRepo(
        str(name_or_path), cache_dir=cache_dir, revision=revision, token=token, local_files_only=local_files_only
    )
    path, _ = _resolve_hub(repo, config_only=True)
    return _read_config(path)


def _read_config(path: Path) -> DialoGPTConfig:
    try:
        return DialoGPTConfig.from_json_file(path)
    except ConfigError as err:
        raise CheckpointError(f"bad {path}: {err}") from None


def _resolve_hub(repo: hub.HubRepo, config_only: bool = False) -> tuple[Path, Path | None]:
    try:
        config_path = repo.download(CONFIG_NAME)
        if config_path is None:
            raise repo.not_found(CONFIG_NAME)
        if config_only:
            return config_path, None
        for filename in WEIGHT_FILES:
            weights = repo.download(filename)
            if weights is None:
                continue
            if filename.endswith(".index.json"):
                for shard in sorted(set(_weight_map(weights).values())):
                    if repo.download(shard) is None:
                        raise repo.not_found(f"shard {shard} of {filename}")
            return config_path, weights
    except hub.HubError as err:
        raise CheckpointError(str(err)) from None
    raise CheckpointError(f"no checkpoint for {repo.describe()}: expected one of {', '.join(WEIGHT_FILES)}")


# ---- loading and saving ----------------------------------------------------------------------------


def resolve_file(name_or_path: str | os.PathLike, filename: str, **hub_kwargs) -> Path | None:
    """An optional file beside the checkpoint (e.g. `generation_config.json`): its path in a
    local directory or the hub's cache (downloaded if needed), or None when there is none."""
    directory = _local_directory(name_or_path)
    if directory is not None:
        path = directory / filename
        return path if path.is_file() else None
    try:
        return hub.HubRepo(str(name_or_path), **hub_kwargs).download(filename)
    except hub.HubError as err:
        raise CheckpointError(str(err)) from None


def _weight_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file, from a `*.index.json`."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError(f"weight_map is a {type(weight_map).__name__}, expected an object")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot read shard index {index}: {err}") from None
    return weight_map
