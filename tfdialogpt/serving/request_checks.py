"""A request's tensors checked against its signature and the export's limits (numpy only).

The server runs these before a request reaches the batcher, so a bad one is answered with
INVALID_ARGUMENT and a message naming the input and what was expected; the exported graphs
carry the same checks for stock TF Serving (`serving_module.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tfdialogpt.padding import padded_length
from tfdialogpt.serving.signatures import (
    CHAT_DEFAULT,
    PARAMETERS,
    SCORE_SIGNATURE,
    TF_NAME_OF_NUMPY,
    ContractError,
    Limits,
    Signature,
)


def check_inputs(sig: Signature, inputs: Mapping[str, np.ndarray], limits: Limits | None = None) -> None:
    """Checks a request's tensors against a signature, and values against an export's limits.

    Args:
        sig: the signature asked for.
        inputs: input name to array, as decoded from the request.
        limits: the export's limits; without them only keys, dtypes and shapes are checked.

    Raises:
        ContractError: the first problem found, naming the input and what was expected.
    """
    unexpected = sorted(set(inputs) - set(sig.input_names))
    if unexpected:
        raise ContractError(
            f"unexpected input {unexpected[0]!r} for signature {sig.name!r}; it takes {', '.join(sig.input_names)}"
        )
    for spec in sig.inputs:
        if spec.name not in inputs:
            raise ContractError(
                f"missing input {spec.name!r} for signature {sig.name!r} ({spec.describe()}: {spec.doc})"
            )
        value = inputs[spec.name]
        if value.dtype != spec.np_dtype:
            got = TF_NAME_OF_NUMPY.get(value.dtype.name, value.dtype.name)
            raise ContractError(
                f"input {spec.name!r} has dtype {got}; signature {sig.name!r} expects {spec.dtype_name}"
            )
        if value.ndim != spec.rank:
            raise ContractError(
                f"input {spec.name!r} has shape {list(value.shape)}; signature {sig.name!r} expects "
                f"{spec.describe()} (rank {spec.rank})"
            )
    if sig.inputs[0].name == "turns":
        _check_turns(inputs["turns"])
    else:
        _check_batch(sig, inputs, limits)
    _check_setting_shapes(sig, inputs)
    if limits is None:
        return
    if sig.name == SCORE_SIGNATURE:
        _check_score_values(inputs, limits)
    elif sig.inputs[0].name == "turns":
        if sig is CHAT_DEFAULT:
            return  # no settings: the export's own defaults
        _check_settings(inputs, limits)
        new = int(inputs["max_new_tokens"].max())
        if new >= limits.max_positions:
            raise ContractError(
                f"max_new_tokens {new} leaves no room for a history in the model's {limits.max_positions} positions"
            )
    else:
        _check_generate_values(inputs, limits)


def _check_turns(turns: np.ndarray) -> None:
    if turns.shape[0] < 1 or turns.shape[1] < 1:
        raise ContractError(f"input 'turns' has shape {list(turns.shape)}; expected at least one row and one column")
    empty = [row for row in range(turns.shape[0]) if not any(len(turn) for turn in turns[row])]
    if empty:
        raise ContractError(f'turns row {empty[0]} has no turn (every slot is ""); a dialogue needs at least one')


def _check_setting_shapes(sig: Signature, inputs: Mapping[str, np.ndarray]) -> None:
    rows = inputs[sig.inputs[0].name].shape[0]
    for name in PARAMETERS:
        if name in inputs and inputs[name].shape not in ((rows,), (1,)):
            raise ContractError(
                f"input {name!r} has shape {list(inputs[name].shape)}; expected [{rows}] (one value per row) "
                "or [1] (one for every row)"
            )


def _check_settings(inputs: Mapping[str, np.ndarray], limits: Limits) -> None:
    highs = limits.highs()
    for name, parameter in PARAMETERS.items():
        for value in np.unique(inputs[name]):
            parameter.check(value.item(), highs.get(name))


def _check_batch(sig: Signature, inputs: Mapping[str, np.ndarray], limits: Limits | None) -> None:
    ids = inputs["input_ids"]
    if ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ContractError(f"input 'input_ids' has shape {list(ids.shape)}; expected at least one row and one column")
    for spec in sig.inputs[1:]:
        if spec.rank == 2 and inputs[spec.name].shape != ids.shape:
            raise ContractError(
                f"input {spec.name!r} has shape {list(inputs[spec.name].shape)}; it must equal "
                f"input_ids' shape {list(ids.shape)}"
            )
    if limits is not None:
        bad = np.argwhere((ids < 0) | (ids >= limits.vocab_size))
        if bad.size:
            row, col = bad[0]
            raise ContractError(
                f"input_ids[{row}, {col}] = {ids[row, col]} is out of range; token ids must be in "
                f"[0, {limits.vocab_size})"
            )
    for name in ("attention_mask", "target_mask"):
        if name in inputs:
            bad = np.argwhere((inputs[name] != 0) & (inputs[name] != 1))
            if bad.size:
                row, col = bad[0]
                raise ContractError(f"{name}[{row}, {col}] = {inputs[name][row, col]}; masks hold only 0 and 1")


def _check_generate_values(inputs: Mapping[str, np.ndarray], limits: Limits) -> None:
    mask = inputs["attention_mask"]
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty.size:
        raise ContractError(f"attention_mask row {empty[0]} is all zeros; every prompt needs at least one token")
    right_padded = np.flatnonzero(mask[:, -1] == 0)
    if right_padded.size:
        raise ContractError(
            f"attention_mask[{right_padded[0]}, -1] is 0: prompts must be left-padded, the reply "
            "starts after the last column"
        )
    _check_settings(inputs, limits)
    lengths = mask.sum(axis=1) + np.broadcast_to(inputs["max_new_tokens"], mask.shape[:1])
    over = np.flatnonzero(lengths > limits.max_positions)
    if over.size:
        row = over[0]
        raise ContractError(
            f"row {row}: prompt of {mask[row].sum()} tokens + max_new_tokens "
            f"{lengths[row] - mask[row].sum()} exceeds the model's {limits.max_positions} positions; "
            "shorten the history"
        )


def _check_score_values(inputs: Mapping[str, np.ndarray], limits: Limits) -> None:
    mask, target = inputs["attention_mask"], inputs["target_mask"]
    outside = np.argwhere((target == 1) & (mask == 0))
    if outside.size:
        row, col = outside[0]
        raise ContractError(f"target_mask[{row}, {col}] is 1 on padding (attention_mask is 0 there)")
    first = np.flatnonzero(target[:, 0] == 1)
    if first.size:
        raise ContractError(f"target_mask[{first[0]}, 0] is 1; the first token has no context to be scored after")
    if mask.shape[1] > limits.max_positions:
        raise ContractError(f"rows of {mask.shape[1]} tokens exceed the model's {limits.max_positions} positions")


def positions_per_row(sig: Signature, inputs: Mapping[str, np.ndarray], limits: Limits) -> int:
    """The cache positions a row of this (checked) request can fill: its prompt padded to the
    bucket the run uses, plus the most new tokens any row asks for; at most the model's.

    A chat row's prompt is not tokenized yet: a token is at least one byte, plus one
    end-of-turn token a turn, so its bytes bound it."""
    positions = limits.max_positions
    if sig.name == SCORE_SIGNATURE:
        return min(int(inputs["attention_mask"].shape[1]), positions)
    new = int(inputs["max_new_tokens"].max()) if "max_new_tokens" in inputs else limits.max_new_tokens_cap
    if sig.inputs[0].name == "turns":
        turns = inputs["turns"]
        longest = max(sum(len(turn) + 1 for turn in row if len(turn)) for row in turns)
    else:
        longest = int(inputs["attention_mask"].sum(axis=1).max())
    longest = max(1, min(longest, positions - new))
    return min(padded_length(longest, new, positions) + new, positions)
