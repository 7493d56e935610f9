"""Dialogue files, read without TensorFlow: DialoGPT's TSV, JSON Lines, chatterbot-corpus YAML
(and, by `ccc`, the Chit-Chat Challenge's JSON).

These file formats are read into `Dialogue`s (turns, oldest first, each with a loss weight):

- DialoGPT's TSV (`prepro.py`): one dialogue a line, `w src1 EOS w src2 ...<TAB>w tgt`, where
  each turn may start with a float weight (`1.0`, `0.0`; default 1.0);
- JSON Lines: `{"turns": ["Hi", "Hello!"], "weights": [1.0, 1.0]}` (`weights` optional);
- chatterbot-corpus YAML: `conversations:` as lists of utterances;
- `.json`: the Chit-Chat Challenge corpus (`chitchat-dataset`), read by `tfdialogpt.training.ccc`.

A line that cannot be read is a `DataIssue` naming its file and line; it is reported and
skipped (or raises `DataError` in strict mode), and every other line is kept. That includes
a line that is not UTF-8 (a Latin-1 `\xe9` among UTF-8 lines): files are read as bytes and
decoded line by line.

This module imports no TensorFlow (nor NumPy): data can be checked and prepared on a machine,
or in worker processes, that never load it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

from tfdialogpt.training.ccc import read_ccc
from tfdialogpt.training.dialogues import DataError, DataIssue, Dialogue, DialogueFile, _finish, describe_issues

logger = logging.getLogger("tfdialogpt.training")

TSV_TURN_SEPARATOR = " EOS "
# A turn weight must be written as a decimal ("1.0", "0.0", ".5"), so that a reply that merely
# starts with a number ("20 years old .") is not read as a weight.
_WEIGHT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?$")


def _decode(raw: bytes, number: int) -> str:
    """One line's text; a UTF-8 byte-order mark opening the file is dropped.

    Raises:
        ValueError: the line is not valid UTF-8 (named by its first bad byte, 1-based).
    """
    start = 3 if number == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = start + err.start
        raise ValueError(f"invalid UTF-8 at byte {at + 1} of the line (0x{raw[at]:02x})") from None


def _lines(path: str):
    """(1-based number, text, DataIssue or None) for each line of `path`, split at b"\\n".

    A line that is not UTF-8 comes with its issue, and its text decoded with U+FFFD for the
    bad bytes (so that a YAML file still parses around it).
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, _decode(raw, number), None
            except ValueError as err:
                yield number, raw.decode("utf-8", "replace"), DataIssue(path, number, str(err))


def _check_weight(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} weight must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} weight must be finite and >= 0, got {value!r}")
    return value


# ---- readers -------------------------------------------------------------------------------------


def parse_tsv_line(line: str) -> tuple[list[str], list[float]]:
    """Parses one DialoGPT TSV line into (turns, weights); raises ValueError if malformed.

    Example:
        >>> parse_tsv_line("0.0 hi there EOS 1.0 how are you ?\\t1.0 fine .")
        (['hi there', 'how are you ?', 'fine .'], [0.0, 1.0, 1.0])
    """
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) != 2:
        raise ValueError(f"expected `sources<TAB>target` (one TAB), found {len(fields) - 1} TABs")
    texts = fields[0].split(TSV_TURN_SEPARATOR) + [fields[1]]
    turns, weights = [], []
    for number, text in enumerate(texts, start=1):
        words = text.split()
        weight = 1.0
        if words and _WEIGHT.match(words[0]):
            weight = _check_weight(float(words[0]), f"turn {number}")
            words = words[1:]
        if not words:
            raise ValueError(f"turn {number} is empty")
        turns.append(" ".join(words))
        weights.append(weight)
    return turns, weights


def _read_line_format(path: str | os.PathLike, parse_line, strict: bool) -> DialogueFile:
    """One dialogue a line: `parse_line(line) -> (turns, weights)` raises `ValueError` for a line
    that does not parse, which becomes a `DataIssue` like an undecodable line; blank lines are
    ignored."""
    path = str(path)
    dialogues, issues = [], []
    for number, line, issue in _lines(path):
        if issue is not None:
            issues.append(issue)
            continue
        if not line.strip():
            continue
        try:
            turns, weights = parse_line(line)
        except ValueError as err:
            issues.append(DataIssue(path, number, str(err)))
            continue
        dialogues.append(Dialogue.from_turns(turns, weights, f"{path}:{number}"))
    return _finish(path, dialogues, issues, strict)


def read_tsv(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads DialoGPT's TSV format (`w src1 EOS w src2 ...<TAB>w tgt`, one dialogue a line).

    Blank lines are ignored; any other line that does not parse is a `DataIssue`.
    """
    return _read_line_format(path, parse_tsv_line, strict)


def parse_json_dialogue(record: object) -> tuple[list[str], list[float] | None]:
    """Validates one JSON Lines record `{"turns": [...], "weights": [...]?}`."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    turns = record.get("turns")
    if not isinstance(turns, list) or len(turns) < 2:
        raise ValueError('expected "turns": a list of at least 2 strings')
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, str) or not turn.strip():
            raise ValueError(f"turn {number} must be a non-empty string, got {turn!r}")
    weights = record.get("weights")
    if weights is not None:
        if not isinstance(weights, list) or len(weights) != len(turns):
            raise ValueError(f'"weights" must be a list of {len(turns)} numbers, one per turn')
        weights = [_check_weight(w, f"turn {i}") for i, w in enumerate(weights, start=1)]
    return turns, weights


def _parse_json_line(line: str) -> tuple[list[str], list[float] | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg} at column {err.colno}") from None
    return parse_json_dialogue(record)


def read_jsonl(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads JSON Lines: one `{"turns": [...], "weights": [...]}` object a line."""
    return _read_line_format(path, _parse_json_line, strict)


def read_chatterbot_yaml(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads a chatterbot-corpus YAML file (`conversations:` lists of utterances).

    Utterances are taken exactly as written (YAML's type guessing would turn `yes` into True).
    Each conversation's issues carry the line it starts on. A line that is not UTF-8 is an
    issue of its own, and the conversation with an utterance on it is skipped.
    """
    import yaml

    path = str(path)
    texts, undecodable = [], {}
    for number, line, issue in _lines(path):
        texts.append(line)
        if issue is not None:
            undecodable[number] = issue
    try:
        root = yaml.compose("".join(texts))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        issue = DataIssue(path, (mark.line + 1) if mark else 1, f"invalid YAML: {getattr(err, 'problem', err)}")
        raise DataError(f"cannot read {path}: {issue}", [issue]) from None
    conversations = None
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "conversations":
                conversations = value
    if not isinstance(conversations, yaml.SequenceNode):
        line = 1 if root is None else root.start_mark.line + 1
        issue = DataIssue(path, line, "expected a mapping with a `conversations:` list")
        raise DataError(f"cannot read {path}: {issue}", [issue])
    dialogues, issues = [], list(undecodable.values())
    for node in conversations.value:
        number = node.start_mark.line + 1
        if not isinstance(node, yaml.SequenceNode):
            issues.append(DataIssue(path, number, "a conversation must be a list of utterances"))
            continue
        if undecodable and any(line in undecodable for turn in node.value for line in _node_lines(turn)):
            continue  # reported as its undecodable line
        bad = [
            i
            for i, turn in enumerate(node.value, start=1)
            if not isinstance(turn, yaml.ScalarNode) or not str(turn.value).strip()
        ]
        if bad:
            issues.append(DataIssue(path, number, f"utterance {bad[0]} is not a non-empty string"))
        elif len(node.value) < 2:
            issues.append(DataIssue(path, number, "a conversation needs at least 2 utterances"))
        else:
            turns = [" ".join(str(turn.value).split()) for turn in node.value]
            dialogues.append(Dialogue.from_turns(turns, None, f"{path}:{number}"))
    issues.sort(key=lambda issue: issue.line)
    return _finish(path, dialogues, issues, strict)


def _node_lines(node) -> range:
    """The 1-based lines a YAML node is written on (a block ends at column 0 of the next line)."""
    first, last = node.start_mark.line + 1, node.end_mark.line + 1
    if node.end_mark.column == 0 and last > first:
        last -= 1
    return range(first, last + 1)


READERS = {
    ".tsv": read_tsv,
    ".jsonl": read_jsonl,
    ".yml": read_chatterbot_yaml,
    ".yaml": read_chatterbot_yaml,
    ".json": read_ccc,  # the only JSON format read whole; other JSON is refused by read_ccc
}


def read_dialogues(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads a file by its extension (.tsv, .jsonl, .yml/.yaml, .json), or every such file in a
    directory (sorted by name, e.g. a chatterbot-corpus language folder).

    Args:
        strict: raise `DataError` on the first file with malformed lines instead of
            reporting them in `DialogueFile.issues`.
    Raises:
        DataError: unknown extension, missing path, or (strict) malformed lines.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in READERS)
        if not files:
            raise DataError(f"{path} holds no {', '.join(READERS)} files")
        dialogues, issues = [], []
        for file in files:
            part = read_dialogues(file, strict=strict)
            dialogues += part.dialogues
            issues += part.issues
        return DialogueFile(str(path), dialogues, issues)
    if path.suffix not in READERS:
        raise DataError(f"cannot tell the format of {path}: expected one of {', '.join(READERS)}")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    return READERS[path.suffix](path, strict=strict)


def load_dialogues(data, strict: bool = False, what: str = "data") -> tuple[list[Dialogue], list[DataIssue]]:
    """Dialogues and issues from a path (format by extension) or from `Dialogue`s / turn lists.

    Issues found in a file are logged as a warning (they are skipped, unless `strict`).
    """
    if isinstance(data, (str, Path)):
        found: DialogueFile = read_dialogues(data, strict=strict)
        if found.issues:
            logger.warning(
                "%s %s: %s (skipped; strict mode raises instead)", what, found.path, describe_issues(found.issues)
            )
        return found.dialogues, found.issues
    dialogues = [
        d if isinstance(d, Dialogue) else Dialogue.from_turns(list(d), None, f"{what}[{i}]") for i, d in enumerate(data)
    ]
    return dialogues, []
