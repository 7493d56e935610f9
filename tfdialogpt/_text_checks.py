"""Checks of what a caller hands the tokenizer: texts and token ids, with errors that name the
argument and the position."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class TokenizerError(ValueError):
    """Tokenizer files are missing or unusable (local directory or hub repository), or a text
    cannot be tokenized (e.g. undecodable bytes in it)."""


def check_ids(ids: Iterable[int] | np.ndarray, vocab_size: int, name: str) -> list[int]:
    """`ids` as a list of ints in [0, vocab_size); `TypeError` / `ValueError` naming the position."""
    if hasattr(ids, "numpy") and not isinstance(ids, np.ndarray):  # a TF / torch tensor
        ids = np.asarray(ids.numpy())
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{name} must be a 1-D integer array, got {ids.ndim}-D {ids.dtype}")
        ids = ids.tolist()
    elif isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be a sequence of ints, got {type(ids).__name__}")
    else:
        ids = list(ids)
        for position, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
                raise TypeError(f"{name}[{position}] is a {type(token).__name__}; expected an int id")
        ids = [int(token) for token in ids]
    for position, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise ValueError(f"{name}[{position}] = {token} is outside [0, {vocab_size})")
    return ids


def check_str(text: object, name: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates: undecodable bytes let through as text
        raise TokenizerError(
            f"{name} is not valid text: {text[err.start]!r} at position {err.start} (undecodable input "
            "bytes?); decode bytes with errors='replace' first"
        ) from None


def check_str_list(texts: object, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}")
    for position, text in enumerate(texts):
        check_str(text, f"{name}[{position}]")
    return list(texts)
