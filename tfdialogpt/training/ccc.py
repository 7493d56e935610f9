"""The Chit-Chat Challenge corpus (CCC, BYU PCC lab; PyPI `chitchat-dataset`), read without
TensorFlow into the same `Dialogue`s and `DataIssue`s as the other readers.

A CCC file is one JSON object of conversations keyed by id; each conversation's `messages` is
a list of runs of consecutive messages by one sender:

    {"a07edb12-...": {"messages": [[{"text": "Hello", "sender": "7208...", "timestamp": "..."},
                                     {"text": "How are you doing today?", "sender": "7208..."}],
                                    [{"text": "whats up MD", "sender": "549c..."}], ...],
                      "prompt": "...", "ratings": {...}, "start": "..."}, ...}

A turn is the text of one run, its messages joined with a space (whitespace collapsed, empty
messages adding nothing); runs next to each other by the same sender are one turn. Every turn
has weight 1.0. A conversation that cannot be read (no `messages` list, a message without a
string `text` or `sender`, a turn with no text, fewer than two turns) is a `DataIssue`
naming the conversation's id and the line its key is on; it is skipped, or refused in strict
mode. In `chitchat-dataset` 0.9.0, 3,150 of the 7,168 conversations are one sender's
messages only (nobody answered): they are such issues, so that package's file is read with
`strict=False`.

JSON that is not a CCC object (JSON Lines, a config file, a list) is refused as a whole with
a `DataError`: `.json` files are read as CCC only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator

from tfdialogpt.training.dialogues import DataError, DataIssue, Dialogue, DialogueFile, _finish

_SPACE = re.compile(r"[ \t\n\r]*")
_SHAPE = 'expected a JSON object of conversations, {"<id>": {"messages": [[{"text", "sender"}, ...], ...]}, ...}'


def parse_ccc_conversation(conversation: object) -> list[str]:
    """The turns of one CCC conversation; raises ValueError if it cannot be read.

    Example:
        >>> parse_ccc_conversation({"messages": [
        ...     [{"text": "Hi", "sender": "a"}, {"text": "how are  you?", "sender": "a"}],
        ...     [{"text": "good", "sender": "b"}], [{"text": "you?", "sender": "b"}]]})
        ['Hi how are you?', 'good you?']
    """
    if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
        raise ValueError('expected an object with a "messages" list')
    turns: list[list[str]] = []
    senders: list[str] = []
    for number, run in enumerate(conversation["messages"], start=1):
        if not isinstance(run, list):
            raise ValueError(f"turn {number} must be a list of messages, got {type(run).__name__}")
        said = []  # (sender, words) of the run's messages that have text
        for index, message in enumerate(run, start=1):
            where = f"turn {number}, message {index}"
            if not isinstance(message, dict):
                raise ValueError(f"{where} must be an object, got {type(message).__name__}")
            for key in ("text", "sender"):
                if not isinstance(message.get(key), str):
                    raise ValueError(f'{where}: "{key}" must be a string, got {message.get(key)!r}')
            if message["text"].split():
                said.append((message["sender"], message["text"].split()))
        if not said:
            raise ValueError(f"turn {number} has no text")
        for sender, words in said:  # a sender's messages next to each other are one turn
            if senders and senders[-1] == sender:
                turns[-1] += words
            else:
                turns.append(list(words))
                senders.append(sender)
    if not turns:
        raise ValueError("no messages; a dialogue needs 2 turns")
    if len(turns) < 2:
        raise ValueError("1 turn (one sender only); a dialogue needs 2")
    return [" ".join(words) for words in turns]


def _members(text: str) -> Iterator[tuple[object, object, int]]:
    """(key, value, offset of the key) of each member of the JSON object `text`, in file order.

    Raises:
        json.JSONDecodeError: `text` is not one JSON object.
    """
    decoder = json.JSONDecoder()
    at = _SPACE.match(text).end()
    if not text.startswith("{", at):
        raise json.JSONDecodeError("expected an object", text, at)
    at = _SPACE.match(text, at + 1).end()
    while not text.startswith("}", at):
        start = at
        if not text.startswith('"', at):
            raise json.JSONDecodeError("expected a string key", text, at)
        key, at = decoder.raw_decode(text, at)
        at = _SPACE.match(text, at).end()
        if not text.startswith(":", at):
            raise json.JSONDecodeError("expected ':'", text, at)
        value, at = decoder.raw_decode(text, _SPACE.match(text, at + 1).end())
        yield key, value, start
        at = _SPACE.match(text, at).end()
        if text.startswith(",", at):
            at = _SPACE.match(text, at + 1).end()
            if text.startswith("}", at):
                raise json.JSONDecodeError("expected a string key", text, at)
        elif not text.startswith("}", at):
            raise json.JSONDecodeError("expected ',' or '}'", text, at)
    if _SPACE.match(text, at + 1).end() != len(text):
        raise json.JSONDecodeError("extra data after the object", text, _SPACE.match(text, at + 1).end())


def read_ccc(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads a CCC JSON file (`chitchat_dataset/dataset.json`): one `Dialogue` per conversation.

    Args:
        strict: raise `DataError` if any conversation cannot be read, instead of reporting it
            in `DialogueFile.issues`.
    Raises:
        DataError: the file is not UTF-8, not JSON, or not a CCC object (see the module's
            docstring); or (strict) a conversation cannot be read.

    Example:
        >>> found = read_ccc(chitchat_dataset_path)  # doctest: +SKIP
        >>> len(found.dialogues), len(found.issues)  # doctest: +SKIP
        (4018, 3150)
    """
    path = str(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        issue = DataIssue(path, line, f"invalid UTF-8 at byte {err.start + 1} of the file (0x{raw[err.start]:02x})")
        raise DataError(f"cannot read {path}: {issue}", [issue]) from None
    dialogues, issues, looks_like_ccc = [], [], False
    line, counted = 1, 0  # line of offset `counted`: lines are counted once, forward
    try:
        for key, conversation, offset in _members(text):
            line, counted = line + text.count("\n", counted, offset), offset
            looks_like_ccc = looks_like_ccc or (isinstance(conversation, dict) and "messages" in conversation)
            try:
                turns = parse_ccc_conversation(conversation)
            except ValueError as err:
                issues.append(DataIssue(path, line, f"conversation {key}: {err}"))
                continue
            dialogues.append(Dialogue.from_turns(turns, None, f"{path}:{line}: conversation {key}"))  # one-line files
    except json.JSONDecodeError as err:
        issue = DataIssue(path, err.lineno, f"invalid JSON: {err.msg} at column {err.colno}; {_SHAPE}")
        raise DataError(f"cannot read {path}: {issue}", [issue]) from None
    if not looks_like_ccc:
        issue = DataIssue(path, 1, f'no conversation with "messages": {_SHAPE} (JSON Lines dialogues go in .jsonl)')
        raise DataError(f"cannot read {path}: {issue}", [issue])
    return _finish(path, dialogues, issues, strict)
