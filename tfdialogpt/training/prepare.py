"""`prepare`: dialogue files tokenized once, in parallel, into TFRecord shards + a manifest.

The input files are cut into chunks of whole lines (`chunks.py`); worker processes (spawned,
no TensorFlow) read, tokenize and lay out each chunk as DialoGPT's examples
(`encode_dialogues`, the paper's per-token loss weights) and serialize them; this process
writes them, in input order, into shards of `shard_size` examples each
(`shard-00000.tfrecord`, ...) and finally `manifest.json` (see `shards.py`).

- Deterministic: the shards are a function of the inputs and settings only, whatever the
  number of workers (chunks are written in input order; their size plays no part).
- Resumable: a shard is written under a temporary name and renamed when complete, then
  `progress.json` records it with where the next shard starts (a chunk's byte offset and the
  examples of it already written). A killed run started again with the same arguments goes
  on from there; another run's directory is refused unless `overwrite=True`.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tfdialogpt.training.chunks import (
    CHUNK_BYTES,
    Chunk,
    EncodedChunk,
    encode_chunk,
    input_files,
    read_chunks,
    start_worker,
)
from tfdialogpt.training.readers import DataError, DataIssue, describe_issues
from tfdialogpt.training.shards import FORMAT, FORMAT_VERSION, MANIFEST_FILE, PROGRESS_FILE, SHARD_PATTERN

logger = logging.getLogger("tfdialogpt.training")

DEFAULT_MAX_SEQ_LEN = 128  # DialoGPT's prepro.py default, as in `finetune`
DEFAULT_SHARD_SIZE = 100_000  # examples per shard: ~100-300 MB at DialoGPT's lengths
MAX_SKIPPED_LISTED = 1000  # skipped lines listed in the manifest (all are counted)
_OURS = re.compile(r"^(manifest\.json|progress\.json|shard-\d{5,}\.tfrecord)(\.tmp)?$")
FEATURES = {
    "tokens": "int64 list: the dialogue's tokens; inputs are tokens[:-1], labels tokens[1:]",
    "weights": "float list: one loss weight per label",
}


def default_workers() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def max_seq_len_for(model: str | os.PathLike | None, requested: int | None) -> int:
    """`requested`, checked against `model`'s positions (its config only is read); None gives
    min(128, positions), or 128 without a model."""
    if model is None:
        return DEFAULT_MAX_SEQ_LEN if requested is None else requested
    from tfdialogpt.checkpoint_files import load_config

    positions = load_config(model).max_positions
    if requested is None:
        return min(DEFAULT_MAX_SEQ_LEN, positions)
    if requested > positions:
        raise ValueError(f"max_seq_len={requested} exceeds the {positions} positions of model {model}")
    return requested


def _run(files: Sequence[Path], tokenizer, max_seq_len: int, shard_size: int, strict: bool) -> dict:
    """What makes the output: a run started again with an equal dict resumes."""
    sources = []
    for path in files:
        stat = path.stat()
        sources.append(
            {"path": str(path), "resolved": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        )
    return {
        "tokenizer": {
            "fingerprint": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": tokenizer.eos_token_id,
        },
        "max_seq_len": max_seq_len,
        "shard_size": shard_size,
        "strict": strict,
        "sources": sources,
    }


def _difference(old: dict, new: dict) -> str:
    def key(run):
        return {**run, "sources": [{k: s[k] for k in ("resolved", "size", "mtime_ns")} for s in run["sources"]]}

    old, new = key(old), key(new)
    for name in ("sources", "tokenizer", "max_seq_len", "shard_size", "strict"):
        if old.get(name) != new[name]:
            return {"sources": "other input files, or changed ones"}.get(name, f"another {name}")
    return ""


def _write_json(path: Path, content: dict) -> None:
    """Atomically: a reader (or a restart after a kill) sees the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fresh_progress(run: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "run": run,
        "shards": [],
        "written": {"examples": 0, "tokens": 0, "loss_tokens": 0},
        "position": {"file": 0, "offset": 0, "line": 1, "drop": 0},
        "read": {"dialogues": 0, "malformed_lines": 0, "dialogues_without_example": 0, "skipped": []},
    }


def _open_output(directory: Path, run: dict, overwrite: bool) -> tuple[str, dict]:
    """("done", manifest), ("resume", progress) or ("new", progress) for `directory`."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"output {directory} is a file; expected a directory")
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(os.listdir(directory))
    foreign = [name for name in names if not _OURS.match(name)]
    if foreign:
        raise FileExistsError(
            f"output {directory} holds files that no prepare run wrote ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}): choose an empty or new directory"
        )
    previous, done = None, (directory / MANIFEST_FILE).is_file()
    state_file = directory / (MANIFEST_FILE if done else PROGRESS_FILE)
    if state_file.is_file():
        try:
            previous = json.loads(state_file.read_text(encoding="utf-8"))
            previous_run = {k: previous[k] for k in run} if done else previous["run"]
            version = previous["format_version"]
        except (ValueError, KeyError, TypeError):
            previous_run = version = None
        if previous_run is None:
            why = "an unreadable " + state_file.name
        elif version != FORMAT_VERSION:
            why = f"format version {version!r}, not {FORMAT_VERSION}"
        else:
            why = _difference(previous_run, run)
        if not why:
            if done:
                return "done", previous
            for name in names:  # unfinished shards, or one renamed but not yet recorded
                shard = re.match(r"^shard-(\d+)\.tfrecord", name)
                if name.endswith(".tmp") or (shard and int(shard.group(1)) >= len(previous["shards"])):
                    os.remove(directory / name)
            return "resume", previous
    elif any(not name.endswith(".tmp") for name in names):
        why = f"{len(names)} files of an unfinished run and no {PROGRESS_FILE}"
    else:  # empty, or what a kill during the first write of progress.json leaves
        why = ""
    if why and not overwrite:
        raise FileExistsError(f"output {directory} holds another prepare run ({why}); pass --overwrite to replace it")
    for name in names:
        os.remove(directory / name)
    return "new", _fresh_progress(run)


class _ShardWriter:
    """Writes shard `index` under `<name>.tmp`; `commit` renames it when complete."""

    def __init__(self, directory: Path, index: int):
        self.directory, self.index = directory, index
        self._writer, self.examples, self.tokens = None, 0, 0
        self.lengths = collections.Counter()  # examples per length (labels), for batch counts

    def write(self, record: bytes, tokens: int) -> None:
        if self._writer is None:
            from tfdialogpt._quiet import import_tensorflow

            tf = import_tensorflow()
            self._writer = tf.io.TFRecordWriter(str(self._path(".tmp")))
        self._writer.write(record)
        self.examples += 1
        self.tokens += tokens
        self.lengths[tokens - 1] += 1

    def _path(self, suffix: str = "") -> Path:
        return self.directory / (SHARD_PATTERN.format(index=self.index) + suffix)

    def commit(self) -> dict:
        self._writer.close()
        with open(self._path(".tmp"), "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._path(".tmp"), self._path())
        shard = {"file": self._path().name, "examples": self.examples, "tokens": self.tokens}
        shard["bytes"] = self._path().stat().st_size
        shard["length_counts"] = sorted(map(list, self.lengths.items()))
        self.index, self._writer, self.examples, self.tokens = self.index + 1, None, 0, 0
        self.lengths = collections.Counter()
        return shard

    def close(self) -> None:
        """Stops without committing (the temporary file is removed on restart)."""
        if self._writer is not None:
            self._writer.close()


def _encoded(
    chunks: Iterable[Chunk], tokenizer, max_seq_len: int, workers: int
) -> Iterator[tuple[Chunk, EncodedChunk]]:
    """Each chunk with what it gives, in input order: here (1 worker) or in spawned processes."""
    if workers == 1:
        start_worker(tokenizer, max_seq_len, in_pool=False)
        for chunk in chunks:
            yield chunk, encode_chunk(chunk)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold TensorFlow
    with ProcessPoolExecutor(workers, context, initializer=start_worker, initargs=(tokenizer, max_seq_len)) as pool:
        pending = collections.deque()
        try:
            for chunk in chunks:
                pending.append((chunk, pool.submit(encode_chunk, chunk)))
                if len(pending) >= 2 * workers:  # bounded read-ahead
                    chunk, future = pending.popleft()
                    yield chunk, future.result()
            while pending:
                chunk, future = pending.popleft()
                yield chunk, future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _add_read(read: dict, chunk: Chunk, encoded: EncodedChunk) -> None:
    read["dialogues"] += encoded.dialogues
    read["malformed_lines"] += len(encoded.malformed)
    read["dialogues_without_example"] += len(encoded.without_example)
    found = [(line, "malformed", why) for line, why in encoded.malformed]
    found += [(line, "no_example", why) for line, why in encoded.without_example]
    room = MAX_SKIPPED_LISTED - len(read["skipped"])
    for line, kind, why in sorted(found)[: max(room, 0)]:
        read["skipped"].append({"file": chunk.path, "line": line, "kind": kind, "reason": why})


def prepare(
    train: str | os.PathLike | Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    tokenizer="default",
    *,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    on_shard: Callable[[dict], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict:
    """Tokenizes dialogue files once into TFRecord shards and a `manifest.json`.

    Args:
        train: data files (.tsv, .jsonl, .yml/.yaml) or directories of them, read in order.
        output_dir: where the shards and the manifest go; created if missing. A directory
            holding this same run (unfinished or done) is resumed; another run's is refused.
        tokenizer: a `Tokenizer`, or its directory / hub id / `"default"`.
        max_seq_len: longest input; older turns are dropped to fit, as in `finetune`.
        workers: processes that tokenize (default: the CPUs); 1 works in this process.
            The output does not depend on it.
        shard_size: examples per shard (the last one holds the rest).
        strict: raise `DataError` at the first malformed line instead of skipping it.
        overwrite: replace another prepare run's output in `output_dir`.
        progress: a progress bar on stderr; None shows it when stderr is a terminal.
        on_shard: called with each shard's manifest entry once it is complete.
        chunk_bytes: about how many bytes of input a worker takes at a time.

    Returns:
        The manifest (as written to `output_dir/manifest.json`).

    Raises:
        DataError: a missing or unreadable input, no example at all, or (strict) a
            malformed line.
        FileExistsError: `output_dir` holds another run's output (and not `overwrite`), or
            files no prepare run wrote.

    Example:
        >>> manifest = prepare(["train.tsv"], "prepared/", "microsoft/DialoGPT-small")  # doctest: +SKIP
        >>> manifest["totals"]["examples"], [s["file"] for s in manifest["shards"]]  # doctest: +SKIP
        (146846, ['shard-00000.tfrecord', 'shard-00001.tfrecord'])
    """
    from tfdialogpt.tokenizer import Tokenizer

    files = input_files(train)
    for name, value, least in (
        ("max_seq_len", max_seq_len, 2),
        ("shard_size", shard_size, 1),
        ("chunk_bytes", chunk_bytes, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    workers = default_workers() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    directory = Path(output_dir)
    run = _run(files, tokenizer, max_seq_len, shard_size, strict)
    state, found = _open_output(directory, run, overwrite)
    if state == "done":
        return found
    _write_json(directory / PROGRESS_FILE, found)
    manifest = _write_shards(directory, files, tokenizer, found, workers, progress, on_shard, chunk_bytes)
    _write_json(directory / MANIFEST_FILE, manifest)
    os.remove(directory / PROGRESS_FILE)
    totals = manifest["totals"]
    if totals["malformed_lines"] or totals["dialogues_without_example"]:
        malformed, without = totals["malformed_lines"], totals["dialogues_without_example"]
        logger.warning(
            "prepare: skipped %d malformed line%s and %d dialogue%s that give no example (listed in %s)",
            *(malformed, "" if malformed == 1 else "s", without, "" if without == 1 else "s"),
            directory / MANIFEST_FILE,
        )
    return manifest


def _write_shards(directory, files, tokenizer, progress_state, workers, progress, on_shard, chunk_bytes) -> dict:
    from tqdm import tqdm

    from tfdialogpt import __version__

    state = progress_state
    run, position, written, read = state["run"], state["position"], state["written"], state["read"]
    shard_size = run["shard_size"]
    sizes = [source["size"] for source in run["sources"]]
    to_drop = position["drop"]
    writer = _ShardWriter(directory, len(state["shards"]))
    chunks = read_chunks(files, position["file"], position["offset"], position["line"], chunk_bytes)
    bar = tqdm(
        total=sum(sizes),
        initial=sum(sizes[: position["file"]]) + position["offset"],
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="prepare",
        disable=None if progress is None else not progress,
        file=sys.stderr,
    )

    def commit(where: dict, read_then: dict) -> None:
        shard = writer.commit()
        state["shards"].append(shard)
        state["position"], state["read"] = where, json.loads(json.dumps(read_then))
        _write_json(directory / PROGRESS_FILE, state)
        if on_shard is not None:
            on_shard(shard)

    encoded_chunks = _encoded(chunks, tokenizer, run["max_seq_len"], workers)
    try:
        for chunk, encoded in encoded_chunks:
            read_before = json.loads(json.dumps(read))  # the counts where this chunk starts
            _add_read(read, chunk, encoded)
            if run["strict"] and encoded.malformed:
                issues = [DataIssue(chunk.path, line, why) for line, why in encoded.malformed]
                raise DataError(f"{chunk.path}: {describe_issues(issues)} (strict: nothing more is read)", issues)
            after = {"file": chunk.file_index, "offset": chunk.end, "line": chunk.next_line, "drop": 0}
            for k, record in enumerate(encoded.records):
                if to_drop:  # written before a restart
                    to_drop -= 1
                    continue
                writer.write(record, encoded.tokens[k])
                written["examples"] += 1
                written["tokens"] += encoded.tokens[k]
                written["loss_tokens"] += encoded.loss_tokens[k]
                if writer.examples == shard_size:
                    if k + 1 < len(encoded.records):  # the next shard starts inside this chunk
                        where = {"file": chunk.file_index, "offset": chunk.start, "line": chunk.first_line}
                        commit({**where, "drop": k + 1}, read_before)
                    else:
                        commit(after, read)
            bar.update(chunk.end - chunk.start)
            bar.set_postfix(dialogues=read["dialogues"], examples=written["examples"], refresh=False)
        if writer.examples:
            commit({"file": len(files), "offset": 0, "line": 1, "drop": 0}, read)
    finally:
        encoded_chunks.close()  # stops the workers now, not when the traceback is freed
        writer.close()
        bar.close()
    if not written["examples"]:
        raise DataError(
            f"no training examples in {', '.join(map(str, files))}: "
            "every dialogue was malformed, too long or had no loss"
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tfdialogpt_version": __version__,
        "features": FEATURES,
        **run,
        "shards": state["shards"],
        "totals": {
            "dialogues": read["dialogues"],
            **written,
            "malformed_lines": read["malformed_lines"],
            "dialogues_without_example": read["dialogues_without_example"],
        },
        "skipped": read["skipped"],
        "skipped_listed_max": MAX_SKIPPED_LISTED,
    }
