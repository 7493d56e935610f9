"""DialoGPT's training example: a tokenized dialogue laid out as one sequence with a loss
weight per label (NumPy only, no TensorFlow).

A dialogue becomes one training example as in DialoGPT's `prepro.py`: the turns joined and
closed by `<|endoftext|>`, inputs = tokens[:-1], labels = tokens[1:]. The first turn is context
only; every later turn carries its weight on its own tokens and on the EOS that closes it, so
a 0.0 turn adds no loss. Oldest turns are dropped until the input fits `max_seq_len`.

Kept apart from the `tf.data` pipeline (`pipeline.py`) so that examples can be built where
TensorFlow is not loaded, e.g. in the processes that tokenize a corpus in parallel.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from tfdialogpt.training.dialogues import MAX_LISTED, Dialogue

logger = logging.getLogger("tfdialogpt.training")


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
    ]
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
        shown = "; ".join(f"{src}: {why}" for src, why in self.skipped[:MAX_LISTED])
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


def encode(dialogues: Sequence[Dialogue], tokenizer, max_seq_len: int, what: str) -> EncodedDialogues:
    """`encode_dialogues`, logging a warning that lists the dialogues that give no example."""
    encoded = encode_dialogues(dialogues, tokenizer, max_seq_len)
    if encoded.skipped:
        logger.warning("%s: %s", what, encoded.describe_skipped())
    return encoded
