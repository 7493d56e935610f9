"""Dialogue data: file readers, DialoGPT's example layout, and the `tf.data` pipeline.

Three file formats are read into `Dialogue`s (turns, oldest first, each with a loss weight):

- DialoGPT's TSV (`prepro.py`): one dialogue a line, `w src1 EOS w src2 ...<TAB>w tgt`, where
  each turn may start with a float weight (`1.0`, `0.0`; default 1.0);
- JSON Lines: `{"turns": ["Hi", "Hello!"], "weights": [1.0, 1.0]}` (`weights` optional);
- chatterbot-corpus YAML: `conversations:` as lists of utterances.

A line that cannot be read is a `DataIssue` naming its file and line; it is reported and
skipped (or raises `DataError` in strict mode), and every other line is kept.

A dialogue becomes one training example as in DialoGPT's `prepro.py`: the turns joined and
closed by `<|endoftext|>`, inputs = tokens[:-1], labels = tokens[1:]. The first turn is context
only; every later turn carries its weight on its own tokens and on the EOS that closes it, so
a 0.0 turn adds no loss. Oldest turns are dropped until the input fits `max_seq_len`.

Batches are bucketed by length (few distinct shapes, little padding), padded to a fixed batch
size with zero-weight rows, and come in an order that is a pure function of (seed, epoch):
`train_dataset(..., start_epoch=e, skip_batches=k)` continues a run exactly where a killed
one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

TSV_TURN_SEPARATOR = " EOS "
# A turn weight must be written as a decimal ("1.0", "0.0", ".5"), so that a reply that merely
# starts with a number ("20 years old .") is not read as a weight.
_WEIGHT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?$")
_MAX_LISTED = 20


# ---- dialogues and issues ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dialogue:
    """One dialogue: its turns, oldest first, and a loss weight per turn.

    The first turn never carries loss (it is the prompt); a later turn with weight 0.0 is
    context only.

    Example:
        >>> Dialogue(("Hi", "Hello!"), (1.0, 1.0), source="chat.tsv:3")
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
    """A line (or YAML entry) that could not be read."""

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
    shown = "; ".join(str(issue) for issue in issues[:_MAX_LISTED])
    more = f"; and {len(issues) - _MAX_LISTED} more" if len(issues) > _MAX_LISTED else ""
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


def read_tsv(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads DialoGPT's TSV format (`w src1 EOS w src2 ...<TAB>w tgt`, one dialogue a line).

    Blank lines are ignored; any other line that does not parse is a `DataIssue`.
    """
    path = str(path)
    dialogues, issues = [], []
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                turns, weights = parse_tsv_line(line)
            except ValueError as err:
                issues.append(DataIssue(path, number, str(err)))
                continue
            dialogues.append(Dialogue.from_turns(turns, weights, f"{path}:{number}"))
    return _finish(path, dialogues, issues, strict)


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


def read_jsonl(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads JSON Lines: one `{"turns": [...], "weights": [...]}` object a line."""
    path = str(path)
    dialogues, issues = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                turns, weights = parse_json_dialogue(json.loads(line))
            except json.JSONDecodeError as err:
                issues.append(DataIssue(path, number, f"invalid JSON: {err.msg} at column {err.colno}"))
                continue
            except ValueError as err:
                issues.append(DataIssue(path, number, str(err)))
                continue
            dialogues.append(Dialogue.from_turns(turns, weights, f"{path}:{number}"))
    return _finish(path, dialogues, issues, strict)


def read_chatterbot_yaml(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads a chatterbot-corpus YAML file (`conversations:` lists of utterances).

    Utterances are taken exactly as written (YAML's type guessing would turn `yes` into True).
    Each conversation's issues carry the line it starts on.
    """
    import yaml

    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            root = yaml.compose(f)
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
    dialogues, issues = [], []
    for node in conversations.value:
        number = node.start_mark.line + 1
        if not isinstance(node, yaml.SequenceNode):
            issues.append(DataIssue(path, number, "a conversation must be a list of utterances"))
            continue
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
    return _finish(path, dialogues, issues, strict)


READERS = {".tsv": read_tsv, ".jsonl": read_jsonl, ".yml": read_chatterbot_yaml, ".yaml": read_chatterbot_yaml}


def read_dialogues(path: str | os.PathLike, strict: bool = False) -> DialogueFile:
    """Reads a file by its extension (.tsv, .jsonl, .yml/.yaml), or every such file in a
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


# ---- examples ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Example:
    """One training sequence: `tokens` (inputs are tokens[:-1], labels tokens[1:]) and a loss
    weight per label."""

    tokens: np.ndarray  # int32 [n + 1]
    weights: np.ndarray  # float32 [n]

    @property
    def length(self) -> int:
        return len(self.weights)


def build_example(
    turn_ids: Sequence[Sequence[int]], weights: Sequence[float], eos_token_id: int, max_seq_len: int
) -> tuple[Example | None, str | None]:
    """Lays out one tokenized dialogue as DialoGPT does; returns (example, None) or
    (None, why it yields no example).

    - trailing zero-weight turns are dropped (they could only add inputs without loss);
    - the oldest turns are dropped until the input (all tokens but the last EOS) fits
      `max_seq_len`; a kept first turn is context only;
    - label weights: 0 on the first turn and its EOS, the turn's weight on each later turn's
      tokens and on its closing EOS.

    Example (EOS = 9):
        >>> ex, _ = build_example([[1, 2], [3], [4, 5]], [1.0, 0.0, 1.0], 9, 16)
        >>> ex.tokens.tolist()   # 1 2 EOS 3 EOS 4 5 EOS
        [1, 2, 9, 3, 9, 4, 5, 9]
        >>> ex.weights.tolist()  # predicting 2 EOS 3 EOS 4 5 EOS
        [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    """
    turns = [list(ids) for ids in turn_ids]
    weights = [float(w) for w in weights]
    if any(not ids for ids in turns):
        return None, "a turn encodes to no tokens"
    while len(weights) > 1 and weights[-1] == 0.0:
        turns.pop()
        weights.pop()
    if len(turns) < 2:
        return None, "no turn after the first carries loss"
    lengths = [len(ids) + 1 for ids in turns]  # with its EOS
    start = 0
    while sum(lengths[start:]) - 1 > max_seq_len and len(turns) - start > 2:
        start += 1
    if sum(lengths[start:]) - 1 > max_seq_len:
        return None, f"the last two turns need {sum(lengths[start:]) - 1} tokens, more than max_seq_len={max_seq_len}"
    turns, weights, lengths = turns[start:], weights[start:], lengths[start:]
    if all(w == 0.0 for w in weights[1:]):  # only possible after dropping
        return None, "no turn after the first carries loss"
    tokens = [t for ids in turns for t in ids + [eos_token_id]]
    # token k is predicted at label position k - 1, with the weight of the turn holding token k
    token_weights = [0.0] * lengths[0] + [
        w for ids, w in zip(turns[1:], weights[1:], strict=True) for _ in range(len(ids) + 1)
    ]  # noqa: E501
    return Example(np.asarray(tokens, np.int32), np.asarray(token_weights[1:], np.float32)), None


@dataclasses.dataclass
class EncodedDialogues:
    """Examples ready for `tf.data`, plus what could not become one (with its source)."""

    examples: list[Example]
    skipped: list[tuple[str, str]]  # (source, reason)
    max_seq_len: int

    @property
    def num_tokens(self) -> int:
        """Tokens that carry loss."""
        return int(sum(np.count_nonzero(ex.weights) for ex in self.examples))

    def describe_skipped(self) -> str:
        shown = "; ".join(f"{src}: {why}" for src, why in self.skipped[:_MAX_LISTED])
        return f"{len(self.skipped)} dialogues give no example: {shown}"


def encode_dialogues(dialogues: Iterable[Dialogue], tokenizer, max_seq_len: int) -> EncodedDialogues:
    """Tokenizes dialogues (batched, in `tokenizers`' threads) into examples."""
    dialogues = list(dialogues)
    flat = [turn for d in dialogues for turn in d.turns]
    ids = tokenizer.encode_batch(flat) if flat else []
    examples, skipped, at = [], [], 0
    for dialogue in dialogues:
        turn_ids = ids[at : at + len(dialogue.turns)]
        at += len(dialogue.turns)
        example, why = build_example(turn_ids, dialogue.weights, tokenizer.eos_token_id, max_seq_len)
        if example is None:
            skipped.append((dialogue.source, why))
        else:
            examples.append(example)
    return EncodedDialogues(examples, skipped, max_seq_len)


# ---- batching ------------------------------------------------------------------------------------


def bucket_lengths_for(max_seq_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Padded lengths: powers of two from `smallest` up to, and always including, max_seq_len."""
    lengths, n = [], smallest
    while n < max_seq_len:
        lengths.append(n)
        n *= 2
    return tuple(lengths) + (max_seq_len,)


def num_batches(examples: Sequence[Example], batch_size: int, bucket_lengths: Sequence[int]) -> int:
    """Batches per epoch: every bucket ends with one partial batch; order does not matter."""
    buckets = np.searchsorted(np.asarray(bucket_lengths), [ex.length for ex in examples])
    return int(sum(math.ceil(n / batch_size) for n in np.bincount(buckets)))


class DialogueBatches:
    """Builds the `tf.data` pipelines over encoded examples.

    Each element is `(inputs, labels, weights)`: inputs `{"input_ids", "attention_mask"}`
    int32 [B, L], labels int32 [B, L], weights float32 [B, L], with L one of
    `bucket_lengths` and B always `batch_size` (a bucket's last batch is filled with rows
    of weight 0, so XLA and `tf.distribute` see fixed shapes).

    Args:
        examples: from `encode_dialogues`.
        batch_size: global batch size (split across replicas under `tf.distribute`).
        pad_token_id: filler for padded inputs (masked out, weight 0).
        seed: the shuffle order of epoch e is a pure function of (seed, e).
        bucket_lengths: padded lengths; default powers of two up to the longest example.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        pad_token_id: int,
        seed: int = 0,
        bucket_lengths: Sequence[int] | None = None,
    ):
        if not examples:
            raise DataError("no training examples: every dialogue was malformed, too long or had no loss")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        longest = max(ex.length for ex in self.examples)
        self.bucket_lengths = tuple(sorted(bucket_lengths or bucket_lengths_for(longest)))
        if self.bucket_lengths[-1] < longest:
            raise ValueError(
                f"the longest example has {longest} tokens, more than the largest bucket {self.bucket_lengths[-1]}"
            )  # noqa: E501
        self.batches_per_epoch = num_batches(self.examples, batch_size, self.bucket_lengths)

    def _tensors(self):
        import tensorflow as tf

        tokens = tf.RaggedTensor.from_row_lengths(
            np.concatenate([ex.tokens for ex in self.examples]), [len(ex.tokens) for ex in self.examples]
        )
        weights = tf.RaggedTensor.from_row_lengths(
            np.concatenate([ex.weights for ex in self.examples]), [ex.length for ex in self.examples]
        )
        return tokens, weights

    def _epoch(self, tokens, weights, epoch, skip_batches, shuffle: bool):
        """The batches of one epoch (epoch may be a tensor); `skip_batches` drops its first ones."""
        import tensorflow as tf

        n = len(self.examples)
        if shuffle:
            seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(epoch, tf.int64)])
            order = tf.argsort(tf.random.stateless_uniform([n], seed=seed))
        else:
            order = tf.range(n)

        def example(i):
            seq, w = tokens[i], weights[i]
            return {"input_ids": seq[:-1], "attention_mask": tf.ones_like(w, tf.int32), "labels": seq[1:], "weights": w}

        ds = tf.data.Dataset.from_tensor_slices(order).map(example)
        ds = ds.bucket_by_sequence_length(
            element_length_func=lambda e: tf.shape(e["weights"])[0],
            bucket_boundaries=[length + 1 for length in self.bucket_lengths],
            bucket_batch_sizes=[self.batch_size] * (len(self.bucket_lengths) + 1),
            padding_values={
                "input_ids": self.pad_token_id,
                "attention_mask": 0,
                "labels": self.pad_token_id,
                "weights": 0.0,
            },
            pad_to_bucket_boundary=True,
        )
        ds = ds.map(self._fill_batch)
        return ds.skip(tf.cast(skip_batches, tf.int64))

    def _fill_batch(self, batch):
        import tensorflow as tf

        missing = self.batch_size - tf.shape(batch["weights"])[0]
        batch = {k: tf.pad(v, [[0, missing], [0, 0]], constant_values=0) for k, v in batch.items()}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return inputs, batch["labels"], batch["weights"]

    @staticmethod
    def _finish(ds, cardinality: int):
        import tensorflow as tf

        options = tf.data.Options()
        options.deterministic = True
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.apply(tf.data.experimental.assert_cardinality(cardinality))
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    def train_dataset(self, start_epoch: int = 0, end_epoch: int | None = None, skip_batches: int = 0):
        """Epochs `start_epoch .. end_epoch - 1` back to back, shuffled, the first one without
        its first `skip_batches` batches (for resuming a killed run)."""
        import tensorflow as tf

        end_epoch = start_epoch + 1 if end_epoch is None else end_epoch
        if not 0 <= skip_batches < self.batches_per_epoch:
            raise ValueError(f"skip_batches must be in [0, {self.batches_per_epoch}), got {skip_batches}")
        tokens, weights = self._tensors()
        epochs = tf.data.Dataset.range(start_epoch, end_epoch)
        ds = epochs.flat_map(
            lambda e: self._epoch(tokens, weights, e, tf.where(e == start_epoch, skip_batches, 0), shuffle=True)
        )
        return self._finish(ds, (end_epoch - start_epoch) * self.batches_per_epoch - skip_batches)

    def eval_dataset(self):
        """One pass in file order (bucketed), for `evaluate` and validation."""
        tokens, weights = self._tensors()
        return self._finish(self._epoch(tokens, weights, 0, 0, shuffle=False), self.batches_per_epoch)
