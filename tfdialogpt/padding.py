"""Batches of id rows: left padding, shape buckets and score batches, with numpy only.

One home for what the engine, the chat, the tokenizer, the scorer and the TF-free serving
client all need, so a client pads exactly as `model.generate` does.

XLA compiles one program per input shape. Prompt lengths and `max_new_tokens` are therefore
rounded up to a few bucket sizes (prompts are left padded to the bucket; the requested number
of new tokens is a run-time input that stops the loop early), so a new length inside a bucket
reuses the compiled program.

    >>> ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[1, 2, 3], [0, 0, 4]], [[1, 1, 1], [0, 0, 1]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Powers of two: few buckets, and at most 2x padding.
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024)
NEW_TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024)


def round_up(length: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    """The smallest bucket >= `length` (or `length` itself beyond the largest bucket).

    >>> round_up(17), round_up(5000)
    (32, 5000)
    """
    return next((size for size in buckets if size >= length), length)


def bucket_shapes(prompt_length: int, max_new_tokens: int, max_positions: int) -> tuple[int, int]:
    """(padded prompt length T, output width N) for a request, with T + N <= max_positions.

    The caller has checked `prompt_length + max_new_tokens <= max_positions`; a bucket that
    would overflow the position table is clipped back (to a size that still fits the request).

        >>> bucket_shapes(40, 50, 1024)
        (64, 64)
        >>> bucket_shapes(1000, 20, 1024)
        (1000, 24)
    """
    new = min(round_up(max_new_tokens, NEW_TOKEN_BUCKETS), max_positions - prompt_length)
    prompt = min(round_up(prompt_length, PROMPT_BUCKETS), max_positions - new)
    return prompt, new


def padded_length(length: int, max_new_tokens: int, max_positions: int) -> int:
    """The prompt width `length` tokens are left-padded to (`bucket_shapes`' T).

    >>> padded_length(20, 32, 1024), padded_length(1000, 20, 1024)
    (32, 1000)
    """
    return bucket_shapes(length, max_new_tokens, max_positions)[0]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None, side: str = "left"):
    """Pads id rows into `(input_ids, attention_mask)`, both int32 [B, width].

    Left padding is what generation needs: every history then ends at the last column, where
    the reply starts. `side="right"` pads the other way. `width` defaults to the longest row.

    Raises:
        ValueError: a bad `side`, or a row longer than `width`.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max((len(row) for row in rows), default=0)
    width = longest if width is None else int(width)
    if longest > width:
        raise ValueError(f"a row of {longest} tokens does not fit a width of {width}")
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        if len(row):
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, span] = row
            mask[i, span] = 1
    return ids, mask


def repad_left(input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int, width: int | None = None):
    """Re-pads a batch to the left: returns (ids [B, width], mask [B, width], real lengths [B]);
    `width` defaults to the longest row's real length.

    Each row's real tokens (mask 1) keep their order; padding on either side (or holes) moves
    to the left, where the decode loop needs it. Positions come from the mask, so this does
    not change what the model computes for any row.

        >>> ids, mask, lengths = repad_left(np.array([[5, 6, 0]]), np.array([[1, 1, 0]]), 0, width=3)
        >>> ids.tolist(), lengths.tolist()
        ([[0, 5, 6]], [2])
    """
    rows = [ids[m.astype(bool)] for ids, m in zip(input_ids, attention_mask, strict=True)]
    ids, mask = left_pad(rows, pad_id, width)
    return ids, mask, mask.sum(axis=1).astype(np.int32)


def score_batch(contexts: Sequence[Sequence[int]], replies: Sequence[Sequence[int]], pad_id: int):
    """Right-padded `context + reply` rows: (input_ids, attention_mask, target_mask), each
    int32 [B, T]; `target_mask` marks the reply tokens whose log-probabilities are summed.

    Raises:
        ValueError: the lists differ in length, or a context or a reply is empty.

        >>> ids, mask, target = score_batch([[1, 2]], [[3]], pad_id=0)
        >>> ids.tolist(), target.tolist()
        ([[1, 2, 3]], [[0, 0, 1]])
    """
    if len(contexts) != len(replies):
        raise ValueError(f"got {len(contexts)} contexts but {len(replies)} replies")
    if not len(contexts):
        raise ValueError("nothing to score: no contexts given")
    for i, (context, reply) in enumerate(zip(contexts, replies, strict=True)):
        if not len(context) or not len(reply):
            raise ValueError(f"row {i}: context and reply must both be non-empty")
    rows = [list(c) + list(r) for c, r in zip(contexts, replies, strict=True)]
    ids, mask = left_pad(rows, pad_id, side="right")
    target = np.zeros_like(ids)
    for i, (context, row) in enumerate(zip(contexts, rows, strict=True)):
        target[i, len(context) : len(row)] = 1
    return ids, mask, target
