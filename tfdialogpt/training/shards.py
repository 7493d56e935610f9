"""Prepared training data: the shard directory `prepare` writes, and reading it back.

A prepared directory holds TFRecord shards of `tf.train.Example`s (`tokens` int64 list,
`weights` float list; see `records.py`) and a `manifest.json` that says how they were made:

    {"format": "tfdialogpt.prepared", "format_version": 2,
     "tokenizer": {"fingerprint": "sha256:...", "vocab_size": 50257, "eos_token_id": 50256},
     "max_seq_len": 128, "shard_size": 100000, "strict": false,
     "sources": [{"path": "train.tsv", "resolved": "/data/train.tsv", "size": ..., "mtime_ns": ...}],
     "shards": [{"file": "shard-00000.tfrecord", "examples": 100000, "tokens": ..., "bytes": ...,
                 "length_counts": [[5, 312], [6, 401], ...]}],
     "totals": {"dialogues": ..., "examples": ..., "tokens": ..., "loss_tokens": ...,
                "malformed_lines": ..., "dialogues_without_example": ...},
     "skipped": [{"file": "train.tsv", "line": 7, "kind": "malformed", "reason": "..."}], ...}

`length_counts` lists a shard's examples per length (labels, n): enough to know how many
batches an epoch of any batch size and buckets has without reading the data. Version 2
added it; version 1 directories are refused (prepare them again).

A run still under way (or killed) has `progress.json` instead of `manifest.json`.

This module loads TensorFlow only inside `read_prepared`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tfdialogpt.training.readers import DataError

FORMAT = "tfdialogpt.prepared"
FORMAT_VERSION = 2  # 2: shards list their length_counts
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.json"
SHARD_PATTERN = "shard-{index:05d}.tfrecord"


class PreparedDataError(DataError):
    """A prepared directory that cannot be read: missing, unfinished, or not ours."""


class TokenizerMismatchError(PreparedDataError):
    """The data was prepared with another tokenizer than the one given."""


def load_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a finished `prepare` run in `directory`.

    Raises:
        PreparedDataError: no such directory, an unfinished run, or an unknown format.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        if (directory / PROGRESS_FILE).is_file():
            raise PreparedDataError(
                f"{directory} holds an unfinished prepare run (no {MANIFEST_FILE} yet): "
                "run `tfdialogpt prepare` again with the same arguments to finish it"
            )
        what = "has no" if directory.is_dir() else "does not exist, so no"
        raise PreparedDataError(f"{directory} {what} {MANIFEST_FILE}: expected the output of `tfdialogpt prepare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise PreparedDataError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PreparedDataError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PreparedDataError(
            f"{path} has format version {manifest.get('format_version')!r}; this tfdialogpt reads "
            f"version {FORMAT_VERSION}: prepare the data again"
        )
    return manifest


def check_tokenizer(manifest: dict, tokenizer, directory: str | os.PathLike = "the prepared data") -> None:
    """Raises `TokenizerMismatchError` unless `tokenizer` (a `Tokenizer`) made the data."""
    recorded = manifest["tokenizer"]
    if tokenizer.fingerprint() != recorded["fingerprint"]:
        raise TokenizerMismatchError(
            f"{directory} was tokenized with another tokenizer (fingerprint {recorded['fingerprint'][:19]}..., "
            f"{recorded['vocab_size']} ids) than the one given ({tokenizer.fingerprint()[:19]}..., "
            f"{tokenizer.vocab_size} ids): run `tfdialogpt prepare` again with this tokenizer"
        )


def shard_paths(directory: str | os.PathLike, manifest: dict) -> list[str]:
    """The shards' paths in order, each checked to exist with the size the manifest records."""
    paths = []
    for shard in manifest["shards"]:
        path = Path(directory) / shard["file"]
        if not path.is_file():
            raise PreparedDataError(f"shard {path} is missing ({len(manifest['shards'])} listed in {MANIFEST_FILE})")
        if path.stat().st_size != shard["bytes"]:
            raise PreparedDataError(
                f"shard {path} has {path.stat().st_size} bytes, {MANIFEST_FILE} says {shard['bytes']}: "
                "it was changed or truncated; prepare the data again"
            )
        paths.append(str(path))
    return paths


def read_prepared(directory: str | os.PathLike, tokenizer):
    """The examples of a prepared directory as a `tf.data.Dataset` of `(tokens, weights)`.

    Elements come in the order `prepare` wrote them (the input files' order): `tokens` int32
    [n + 1] (inputs are tokens[:-1], labels tokens[1:]) and `weights` float32 [n], as
    `tfdialogpt.training.examples.Example` holds them. The dataset knows its length.

    Args:
        directory: the `--output` of `tfdialogpt prepare`.
        tokenizer: the `Tokenizer` (or its directory / hub id) the model will train with;
            its fingerprint must equal the one the data was made with. `None` skips the check.

    Raises:
        TokenizerMismatchError: the data was made with another tokenizer.
        PreparedDataError: no finished run in `directory`, or a shard missing or changed.

    Example:
        >>> ds = read_prepared("prepared/", Tokenizer.from_pretrained("default"))  # doctest: +SKIP
        >>> tokens, weights = next(iter(ds))  # doctest: +SKIP
    """
    manifest = load_manifest(directory)
    if tokenizer is not None:
        if isinstance(tokenizer, (str, os.PathLike)):
            from tfdialogpt.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_pretrained(tokenizer)
        check_tokenizer(manifest, tokenizer, directory)
    paths = shard_paths(directory, manifest)

    from tfdialogpt._quiet import import_tensorflow

    tf = import_tensorflow()
    ds = tf.data.TFRecordDataset(paths).map(parse_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.apply(tf.data.experimental.assert_cardinality(manifest["totals"]["examples"]))


def parse_record(record):
    """One serialized example -> `(tokens int32 [n + 1], weights float32 [n])` (a `tf.data` map)."""
    import tensorflow as tf

    features = {"tokens": tf.io.RaggedFeature(tf.int64), "weights": tf.io.RaggedFeature(tf.float32)}
    example = tf.io.parse_single_example(record, features)
    return tf.cast(example["tokens"], tf.int32), example["weights"]


def length_counts(manifest: dict, shards: list[int] | None = None) -> tuple[list[int], list[int]]:
    """(lengths, counts): how many examples of each length (labels) the given shards (indices
    into `manifest["shards"]`; default all) hold, summed from the manifest."""
    total: dict[int, int] = {}
    chosen = range(len(manifest["shards"])) if shards is None else shards
    for index in chosen:
        for length, count in manifest["shards"][index]["length_counts"]:
            total[length] = total.get(length, 0) + count
    lengths = sorted(total)
    return lengths, [total[n] for n in lengths]
