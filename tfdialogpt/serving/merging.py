"""How requests to one signature become one run, and its outputs their answers again (numpy only).

A row's answer never depends on what else is in the run: every setting is one value per row
(`signatures.py`), sampled rows draw from their own seed streams, and prompt padding does not
change what the model computes (positions come from the mask). So the batcher may merge any
requests to the same signature of the same version, whatever their settings and lengths:

- generate: each request's settings are spread over its rows, its prompts re-padded on the
  left to the bucket of the longest prompt in the run (`padding.padded_length`, as
  `model.generate` pads). A client that sends an odd width gets the bucket too, so it cannot
  make the XLA signature compile a new shape.
- chat: the `turns` get `""` slots up to the widest request (the graph pads the prompts itself).
- score: right-padded rows, padded further on the right with masked columns.
- XLA signatures also get their rows padded to an allowed batch size (`row_bucket`: TF
  Serving's `allowed_batch_sizes`, else powers of two) with copies of the first row that stop
  after one token, so a run compiles once per (rows, width) bucket.

Each answer is cut back to its own rows and its own `max_new_tokens` columns, so it equals the
request sent alone.

Example:
    >>> run = merge("generate", [inputs_a, inputs_b], limits)  # doctest: +SKIP
    >>> answers = run.split(servable.run("generate", run.inputs))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from tfdialogpt import padding
from tfdialogpt.serving import signatures as contract


def row_bucket(rows: int, allowed_batch_sizes: Sequence[int] = ()) -> int:
    """The batch size an XLA signature runs `rows` rows with: the smallest allowed size that
    holds them, else the power of two >= rows (a request may have more rows than a merged run)."""
    fitting = [size for size in allowed_batch_sizes if size >= rows]
    return min(fitting) if fitting else 1 << max(0, int(rows) - 1).bit_length()


def check_allowed_batch_sizes(sizes: Sequence[int], max_batch_size: int) -> tuple[int, ...]:
    """`sizes` as TF Serving requires them: increasing, positive, the last `max_batch_size`."""
    sizes = tuple(int(size) for size in sizes)
    if not sizes:
        return sizes
    if any(size < 1 for size in sizes) or list(sizes) != sorted(set(sizes)):
        raise ValueError(f"allowed_batch_sizes {list(sizes)} must be positive and increasing")
    if sizes[-1] != max_batch_size:
        raise ValueError(f"the last of allowed_batch_sizes {list(sizes)} must equal max_batch_size {max_batch_size}")
    return sizes


@dataclasses.dataclass
class Run:
    """The merged inputs of one run and where each request's answer lies in its outputs."""

    inputs: dict[str, np.ndarray]
    spans: list[tuple[int, int]]  # each request's rows [start, stop)
    widths: list[int | None]  # each request's output columns (its largest max_new_tokens)

    def split(self, outputs: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        answers = []
        for (start, stop), width in zip(self.spans, self.widths, strict=True):
            answer = {}
            for key, value in outputs.items():
                value = value[start:stop]
                if width is not None and key == "sequences":
                    value = value[:, :width]
                answer[key] = value
            answers.append(answer)
        return answers


def rows_of(inputs: Mapping[str, np.ndarray]) -> int:
    first = inputs["turns"] if "turns" in inputs else inputs["input_ids"]
    return int(first.shape[0])


def _spread_settings(inputs: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """The request with each setting ([1] or [rows]) as one value per row."""
    return {
        key: np.broadcast_to(value, (rows,)).copy() if key in contract.PARAMETERS else value
        for key, value in inputs.items()
    }


def _pad_rows(inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """`rows` rows: copies of row 0 appended, greedy and stopping after one new token."""
    have = rows_of(inputs)
    if rows <= have:
        return inputs
    extra = rows - have
    out = {}
    for key, value in inputs.items():
        filler = np.repeat(value[:1], extra, axis=0)
        if key == "max_new_tokens":
            filler[:] = 1
        elif key == "do_sample":
            filler[:] = False
        out[key] = np.concatenate([value, filler])
    return out


def merge(
    signature: str,
    requests: Sequence[Mapping[str, np.ndarray]],
    limits: contract.Limits | None,
    pad_rows: bool = False,
    allowed_batch_sizes: Sequence[int] = (),
) -> Run:
    """One run of `signature` for checked `requests` (with their defaults filled in).

    Args:
        signature: the contract's signature name (`generate`, `chat_xla`, `score`, ...).
        requests: each request's inputs.
        limits: the export's limits (the pad id and positions for re-padding prompts).
        pad_rows: pad the rows to `row_bucket` (for XLA signatures).
        allowed_batch_sizes: the sizes `row_bucket` pads to.
    """
    sig = contract.signature(signature)
    rows = [rows_of(inputs) for inputs in requests]
    spans, start = [], 0
    for count in rows:
        spans.append((start, start + count))
        start += count
    requests = [_spread_settings(inputs, count) for inputs, count in zip(requests, rows, strict=True)]
    widths = [int(inputs["max_new_tokens"].max()) if "max_new_tokens" in inputs else None for inputs in requests]
    first = sig.inputs[0].name
    if first == "turns":
        slots = max(inputs["turns"].shape[1] for inputs in requests)
        parts = [{**inputs, "turns": _pad_columns(inputs["turns"], slots, b"", side="right")} for inputs in requests]
    elif sig.name == contract.SCORE_SIGNATURE:
        width = max(inputs["input_ids"].shape[1] for inputs in requests)
        pad = 0 if limits is None else limits.pad_token_id
        parts = [
            {
                key: _pad_columns(value, width, pad if key == "input_ids" else 0, side="right")
                for key, value in inputs.items()
            }
            for inputs in requests
        ]
    else:
        parts = _repad_prompts(requests, limits)
    merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    if pad_rows:
        merged = _pad_rows(merged, row_bucket(start, allowed_batch_sizes))
    return Run(merged, spans, widths if sig.name != contract.SCORE_SIGNATURE else [None] * len(rows))


def _pad_columns(value: np.ndarray, width: int, fill, side: str) -> np.ndarray:
    missing = width - value.shape[1]
    if missing <= 0:
        return value
    filler = np.full((value.shape[0], missing), fill, value.dtype)
    return np.concatenate([value, filler] if side == "right" else [filler, value], axis=1)


def _repad_prompts(requests: Sequence[dict[str, np.ndarray]], limits: contract.Limits | None) -> list[dict]:
    """Every request's prompts left-padded to one bucket: the one `model.generate` would use for
    the longest prompt and the largest `max_new_tokens` of the run."""
    longest = max(int(inputs["attention_mask"].sum(axis=1).max()) for inputs in requests)
    new = max(int(inputs["max_new_tokens"].max()) for inputs in requests)
    if limits is None:
        width = max(inputs["input_ids"].shape[1] for inputs in requests)
        pad = 0
    else:
        width, pad = padding.padded_length(longest, new, limits.max_positions), limits.pad_token_id
    parts = []
    for inputs in requests:
        ids, mask, _ = padding.repad_left(inputs["input_ids"], inputs["attention_mask"], pad, width)
        parts.append({**inputs, "input_ids": ids, "attention_mask": mask})
    return parts
