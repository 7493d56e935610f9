"""Dialogue files cut into chunks, and a chunk encoded into serialized examples: the work of
one `prepare` worker process. No TensorFlow here (NumPy and `tokenizers` only).

A TSV or JSON Lines file is cut into chunks of whole lines (about `chunk_bytes` each); a
chatterbot YAML or CCC JSON file is one chunk, read by its reader. Lines are split at `\\n`,
decoded, parsed and numbered by the readers' own line functions, so a chunk gives exactly the
dialogues and issues `read_dialogues` gives for its lines (a line that is not UTF-8 included).
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tfdialogpt.training.examples import encode_dialogues
from tfdialogpt.training.readers import (
    READERS,
    DataError,
    DataIssue,
    Dialogue,
    _decode,
    _parse_json_line,
    parse_tsv_line,
)
from tfdialogpt.training.records import serialize_examples

CHUNK_BYTES = 256 * 1024
LINE_FORMATS = (".tsv", ".jsonl")


def input_files(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """The data files to read, in order: each path a file, or a directory's files sorted by
    name (as `read_dialogues` reads a directory).

    Raises:
        DataError: a path is missing, has an unknown extension, or a directory holds no data.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise DataError("no data files given")
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in READERS and p.is_file())
            if not found:
                raise DataError(f"{path} holds no {', '.join(READERS)} files")
            files += found
        elif path.suffix not in READERS:
            raise DataError(f"cannot tell the format of {path}: expected one of {', '.join(READERS)}")
        elif not path.is_file():
            raise DataError(f"data file {path} does not exist")
        else:
            files.append(path)
    return files


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Whole lines of one input file (or a whole YAML or JSON file), and where they start."""

    file_index: int
    path: str  # as given: reports and `Dialogue.source` use it
    start: int  # byte offset
    end: int
    first_line: int  # 1-based number of its first line
    data: bytes | None  # None for YAML and JSON: the worker reads the file

    @property
    def next_line(self) -> int:
        """The number of the line after this chunk (chunks of lines end with `\\n`)."""
        return 1 if self.data is None else self.first_line + self.data.count(b"\n")


def read_chunks(
    files: Sequence[Path], file_index: int = 0, offset: int = 0, line: int = 1, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[Chunk]:
    """The chunks of `files` from `files[file_index]` at byte `offset` (line `line`) on."""
    for index in range(file_index, len(files)):
        path = files[index]
        if index > file_index:
            offset, line = 0, 1
        if path.suffix not in LINE_FORMATS:
            if offset == 0:
                yield Chunk(index, str(path), 0, path.stat().st_size, 1, None)
            continue
        with open(path, "rb") as f:
            f.seek(offset)
            carry = b""
            while True:
                block = f.read(chunk_bytes)
                data = carry + block
                if not data:
                    break
                cut = data.rfind(b"\n") + 1 if block else len(data)  # at the end: the last line, unended
                if cut == 0:  # no line ends in this block yet
                    carry = data
                    continue
                chunk = Chunk(index, str(path), offset, offset + cut, line, data[:cut])
                yield chunk
                carry, offset, line = data[cut:], chunk.end, chunk.next_line


def parse_lines(chunk: Chunk) -> tuple[list[Dialogue], list[DataIssue]]:
    """The dialogues and issues of a TSV or JSON Lines chunk, as the readers find them."""
    parse_line = parse_tsv_line if chunk.path.endswith(".tsv") else _parse_json_line
    dialogues, issues = [], []
    for number, raw in enumerate(io.BytesIO(chunk.data), start=chunk.first_line):  # split at b"\n"
        try:
            line = _decode(raw, number)  # number 1 is the file's first line: a BOM is dropped
            if not line.strip():
                continue
            turns, weights = parse_line(line)
        except ValueError as err:
            issues.append(DataIssue(chunk.path, number, str(err)))
            continue
        dialogues.append(Dialogue.from_turns(turns, weights, f"{chunk.path}:{number}"))
    return dialogues, issues


@dataclasses.dataclass
class EncodedChunk:
    """What a chunk gave: one serialized example per dialogue that makes one, and the rest."""

    records: list[bytes]
    tokens: list[int]  # per record: tokens in it
    loss_tokens: list[int]  # per record: labels with a non-zero weight
    dialogues: int
    malformed: list[tuple[int, str]]  # (line, message)
    without_example: list[tuple[int, str]]  # (line, why the dialogue gives no example)


_WORKER = {}  # this process's tokenizer and max_seq_len, set by `start_worker`


def start_worker(tokenizer, max_seq_len: int, in_pool: bool = True) -> None:
    """Sets up a process to encode chunks (a pool's initializer, or the parent with 1 worker)."""
    _WORKER.update(tokenizer=tokenizer, max_seq_len=max_seq_len)
    if in_pool:
        # one thread per worker: the workers are the parallelism (`tokenizers` reads this per call)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        parent = multiprocessing.parent_process()
        if parent is not None:  # a killed parent must not leave its workers waiting forever
            threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()


def encode_chunk(chunk: Chunk) -> EncodedChunk:
    """Reads, tokenizes and lays out one chunk (in a worker set up by `start_worker`)."""
    if chunk.data is None:
        found = READERS[Path(chunk.path).suffix](chunk.path)
        dialogues, issues = found.dialogues, found.issues
    else:
        dialogues, issues = parse_lines(chunk)
    encoded = encode_dialogues(dialogues, _WORKER["tokenizer"], _WORKER["max_seq_len"])
    return EncodedChunk(
        records=serialize_examples(encoded.examples),
        tokens=[len(ex.tokens) for ex in encoded.examples],
        loss_tokens=[int(np.count_nonzero(ex.weights)) for ex in encoded.examples],
        dialogues=len(dialogues),
        malformed=[(issue.line, issue.message) for issue in issues],
        without_example=[(int(source.rpartition(":")[2]), why) for source, why in encoded.skipped],
    )
