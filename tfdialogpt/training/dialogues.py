"""What every dialogue reader gives: `Dialogue`s, and the `DataIssue`s of what it could not read.

Shared by the readers of each format (`readers`: TSV, JSON Lines, chatterbot YAML; `ccc`: the
Chit-Chat Challenge JSON). No TensorFlow, no NumPy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

MAX_LISTED = 20


@dataclasses.dataclass(frozen=True)
class Dialogue:
    """One dialogue: its turns, oldest first, and a loss weight per turn.

    The first turn never carries loss (it is the prompt); a later turn with weight 0.0 is
    context only.

    Example:
        >>> Dialogue(("Hi", "Hello!"), (1.0, 1.0), source="chat.tsv:3")
        Dialogue(turns=('Hi', 'Hello!'), weights=(1.0, 1.0), source='chat.tsv:3')
    """

    turns: tuple[str, ...]
    weights: tuple[float, ...]
    source: str = ""  # "file:line" it came from, for reports

    def __post_init__(self):
        if len(self.turns) != len(self.weights):
            raise ValueError(f"{len(self.turns)} turns but {len(self.weights)} weights")

    @classmethod
    def from_turns(cls, turns: Sequence[str], weights: Sequence[float] | None = None, source: str = "") -> Dialogue:
        weights = [1.0] * len(turns) if weights is None else weights
        return cls(tuple(turns), tuple(float(w) for w in weights), source)


@dataclasses.dataclass(frozen=True)
class DataIssue:
    """A line (or YAML entry, or CCC conversation) that could not be read."""

    path: str
    line: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class DataError(ValueError):
    """Data that cannot be used: malformed lines in strict mode, or an unreadable file."""

    def __init__(self, message: str, issues: Sequence[DataIssue] = ()):
        super().__init__(message)
        self.issues = list(issues)


def describe_issues(issues: Sequence[DataIssue], what: str = "malformed") -> str:
    """`3 malformed lines: a.tsv:4: ...; a.tsv:9: ...` (at most 20 listed)."""
    shown = "; ".join(str(issue) for issue in issues[:MAX_LISTED])
    more = f"; and {len(issues) - MAX_LISTED} more" if len(issues) > MAX_LISTED else ""
    return f"{len(issues)} {what} line{'s' if len(issues) != 1 else ''}: {shown}{more}"


@dataclasses.dataclass
class DialogueFile:
    """What a reader found: the dialogues and the issues, both in file order."""

    path: str
    dialogues: list[Dialogue]
    issues: list[DataIssue]

    def raise_if_issues(self) -> None:
        if self.issues:
            raise DataError(f"{self.path}: " + describe_issues(self.issues), self.issues)


def _finish(path: str, dialogues: list[Dialogue], issues: list[DataIssue], strict: bool) -> DialogueFile:
    result = DialogueFile(path, dialogues, issues)
    if strict:
        result.raise_if_issues()
    return result
