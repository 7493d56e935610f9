"""Where `finetune`'s data comes from: dialogue files or lists (read whole and encoded in
memory, `DialogueBatches`), or a directory `tfdialogpt prepare` wrote (streamed,
`PreparedBatches`). Both give batches of the same shapes in the same way."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tfdialogpt.training.examples import encode
from tfdialogpt.training.readers import DataIssue, load_dialogues
from tfdialogpt.training.shards import MANIFEST_FILE, PROGRESS_FILE, load_manifest

STREAMED_DIR = "prepared"  # under the output directory: plain files prepared to be streamed


def is_prepared(data) -> bool:
    """True for a directory holding a prepare run (finished or not): its manifest or progress file."""
    if not isinstance(data, (str, os.PathLike)):
        return False
    path = Path(data)
    return path.is_dir() and ((path / MANIFEST_FILE).is_file() or (path / PROGRESS_FILE).is_file())


@dataclasses.dataclass
class DataSource:
    """Training or validation data, opened: dialogues read into memory, or a prepared manifest."""

    what: str  # "train" / "valid", for messages
    issues: list[DataIssue]  # malformed lines (those a manifest lists, for prepared data)
    dialogues: list | None = None
    prepared: str | None = None  # the prepared directory
    manifest: dict | None = None
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (source, reason)
    num_examples: int = 0
    num_tokens: int = 0  # tokens with loss
    files: str | os.PathLike | None = None  # plain files to prepare, then stream (`stream_files`)

    @property
    def max_seq_len(self) -> int | None:
        """The `max_seq_len` prepared data was made with (None for dialogues)."""
        return None if self.manifest is None else self.manifest["max_seq_len"]


def open_source(data, strict: bool, what: str, stream_files: bool = False) -> DataSource:
    """Reads dialogue files / lists whole, or only the manifest of a prepared directory; with
    `stream_files`, dialogue files are not read yet (`prepare_files` does it, chunk by chunk).

    Raises:
        PreparedDataError: an unfinished or unreadable prepared directory.
        DataError: unreadable dialogue files, or malformed lines with `strict`.
    """
    if stream_files and isinstance(data, (str, os.PathLike)) and not is_prepared(data):
        return DataSource(what, [], files=data)
    if not is_prepared(data):
        dialogues, issues = load_dialogues(data, strict, what)
        return DataSource(what, issues, dialogues=dialogues)
    manifest = load_manifest(data)
    issues, skipped = [], []
    for entry in manifest["skipped"]:
        if entry["kind"] == "malformed":
            issues.append(DataIssue(entry["file"], entry["line"], entry["reason"]))
        else:
            skipped.append((f"{entry['file']}:{entry['line']}", entry["reason"]))
    totals = manifest["totals"]
    return DataSource(
        what,
        issues,
        prepared=str(data),
        manifest=manifest,
        skipped=skipped,
        num_examples=totals["examples"],
        num_tokens=totals["loss_tokens"],
    )


def streamed_files_dir(output_dir) -> Path | None:
    """Where `stream_files` prepares plain files: `<output>/prepared` (`prepared-<task>` on a
    worker that is not the chief, as backups are kept apart)."""
    from tfdialogpt.training import distribute

    if not output_dir:
        return None
    return Path(output_dir) / (STREAMED_DIR if distribute.is_chief() else f"{STREAMED_DIR}-{distribute.task_id()}")


def prepare_files(source: DataSource | None, directory, tokenizer, max_seq_len: int, strict: bool):
    """`source.files` prepared into `directory/<train|valid>` (resumable: a killed run's
    directory is continued), then opened as prepared data; any other source unchanged."""
    from tfdialogpt.training.prepare import prepare

    if source is None or source.files is None:
        return source
    target = Path(directory) / source.what
    # Our own scratch copy: a killed run's is continued, one of other files replaced. One
    # worker, in this process: spawning would re-import an unguarded `__main__` script (run
    # `tfdialogpt prepare --workers N` first to tokenize in parallel).
    prepare(
        source.files,
        target,
        tokenizer,
        max_seq_len=max_seq_len,
        strict=strict,
        overwrite=True,
        workers=1,
        progress=False,
    )
    return open_source(target, strict, source.what)


def check_max_seq_len(source: DataSource, requested: int | None, positions: int) -> None:
    """Prepared data fits the model and was cut to the `max_seq_len` asked for (if any)."""
    if source.manifest is None:
        return
    prepared = source.max_seq_len
    if requested is not None and requested != prepared:
        raise ValueError(
            f"{source.what} data {source.prepared} was prepared with max_seq_len={prepared}, not the "
            f"{requested} asked for: prepare it again with --max-seq-len {requested}, or leave max_seq_len unset"
        )
    if prepared > positions:
        raise ValueError(
            f"{source.what} data {source.prepared} was prepared with max_seq_len={prepared}, more than the "
            f"model's {positions} positions: prepare it again with --max-seq-len {positions} or less"
        )


def make_batches(source: DataSource, tokenizer, max_seq_len: int, settings, num_pipelines: int = 1):
    """`DialogueBatches` (dialogues, encoded here) or `PreparedBatches` (streamed) for `source`.

    For dialogues, also fills in `source.skipped`, `num_examples` and `num_tokens`.
    """
    pad_id = tokenizer.eos_token_id
    if source.manifest is not None:
        from tfdialogpt.training.streaming import PreparedBatches

        return PreparedBatches(
            source.prepared,
            tokenizer,
            settings.batch_size,
            pad_id,
            settings.seed,
            settings.bucket_lengths,
            settings.shuffle_buffer,
            num_pipelines,
        )
    from tfdialogpt.training.pipeline import DialogueBatches

    encoded = encode(source.dialogues, tokenizer, max_seq_len, source.what)
    source.skipped, source.num_examples, source.num_tokens = encoded.skipped, len(encoded.examples), encoded.num_tokens
    return DialogueBatches(
        encoded.examples,
        settings.batch_size,
        pad_id,
        settings.seed,
        settings.bucket_lengths,
        shuffle=settings.shuffle_buffer > 0,
    )
