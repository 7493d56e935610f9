"""Our request batcher: a queue served by worker threads that merges compatible requests.

Requests that can share a run (same version, signature, prompt length and parameters, and
deterministic: greedy generate or score; see `batch_key`) are concatenated along the batch axis
up to `max_batch_size` rows, run once, and split again. Sampled requests run alone, so a seed
gives the same tokens whatever else is in flight. A full queue answers RESOURCE_EXHAUSTED; no
request is dropped silently.

Example:
    >>> batcher = Batcher(max_batch_size=8, batch_timeout=0.002)  # doctest: +SKIP
    >>> task = _Task(servable, "generate", inputs, batch_key(servable, sig, inputs), rows=1)  # doctest: +SKIP
    >>> batcher.submit(task).result()["sequences"]  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.errors import ResourceExhaustedError, ServerUnavailableError, ServingError

if TYPE_CHECKING:
    from tfdialogpt.serving.servables import Servable


@dataclasses.dataclass(eq=False)
class _Task:
    servable: Servable
    signature: str
    inputs: dict[str, np.ndarray]
    key: tuple | None  # requests with equal keys may share a run; None runs alone
    rows: int
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)


def batch_key(servable: Servable, sig: contract.Signature, inputs: Mapping[str, np.ndarray]) -> tuple | None:
    """Requests with the same key can be concatenated along the batch axis and split after."""
    if sig.name not in contract.SIGNATURES or "input_ids" not in inputs:
        return None  # chat requests run alone for now: merging would re-pad a row's prompt
    scalars = tuple(
        (name, inputs[name].tobytes()) for name in sig.input_names if inputs[name].ndim == 0 and name != "seed"
    )
    if sig.name != contract.SCORE_SIGNATURE and bool(inputs["do_sample"]):
        return None  # sampling: a row's draws depend on the batch shape, so run it alone
    return (servable.version, id(servable), sig.name, inputs["input_ids"].shape[1], scalars)


class Batcher:
    """A request queue served by worker threads, merging compatible requests into one run.

    Args:
        max_batch_size: most rows in one merged run (1 turns merging off; requests still queue).
        batch_timeout: seconds the first request of a run waits for company.
        num_threads: runs in parallel.
        max_queued: requests waiting at most; more get RESOURCE_EXHAUSTED.
        on_run: called with (servable, signature, rows) before each run (for the metrics).
    """

    def __init__(
        self,
        max_batch_size: int = 8,
        batch_timeout: float = 0.002,
        num_threads: int = 2,
        max_queued: int = 1024,
        on_run: Callable[[Servable, str, int], None] | None = None,
    ):
        self.max_batch_size, self.batch_timeout, self.max_queued = max_batch_size, batch_timeout, max_queued
        self._on_run = on_run
        self._queue: collections.deque[_Task] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.runs = 0  # merged runs so far (for tests and logs)
        self.merged_requests = 0  # requests that shared a run with another
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True) for i in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, task: _Task) -> concurrent.futures.Future:
        with self._cond:
            if self._stopping:
                raise ServerUnavailableError("the server is shutting down")
            if len(self._queue) >= self.max_queued:
                raise ResourceExhaustedError(
                    f"{len(self._queue)} requests are queued (max_queued={self.max_queued}); retry later",
                )
            self._queue.append(task)
            self._cond.notify()
        return task.future

    def _take(self) -> list[_Task] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait(0.5)
            first = self._queue.popleft()
            batch = [first]
            if first.key is None or self.max_batch_size <= 1:
                return batch
            deadline = time.monotonic() + self.batch_timeout
            rows = first.rows
            while True:
                for task in list(self._queue):
                    if task.key == first.key and rows + task.rows <= self.max_batch_size:
                        self._queue.remove(task)
                        batch.append(task)
                        rows += task.rows
                remaining = deadline - time.monotonic()
                if rows >= self.max_batch_size or remaining <= 0 or self._stopping:
                    return batch
                self._cond.wait(remaining)

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [task for task in batch if task.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                self._run(batch)
            except Exception as err:  # never let a worker die: fail the batch, keep serving
                for task in batch:
                    if not task.future.done():
                        task.future.set_exception(err)

    def _run(self, batch: list[_Task]) -> None:
        first = batch[0]
        if self._on_run is not None:
            self._on_run(first.servable, first.signature, sum(task.rows for task in batch))
        if len(batch) == 1:
            try:
                first.future.set_result(first.servable.run(first.signature, first.inputs))
            except ServingError as err:
                first.future.set_exception(err)
            return
        merged = {
            name: value if value.ndim == 0 else np.concatenate([t.inputs[name] for t in batch])
            for name, value in first.inputs.items()
        }
        try:
            outputs = first.servable.run(first.signature, merged)
        except ServingError:
            for task in batch:  # one bad request must not fail the others: run each alone
                try:
                    task.future.set_result(task.servable.run(task.signature, task.inputs))
                except ServingError as err:
                    task.future.set_exception(err)
            return
        self.runs += 1
        self.merged_requests += len(batch)
        start = 0
        for task in batch:
            task.future.set_result({k: v[start : start + task.rows] for k, v in outputs.items()})
            start += task.rows

    def stop(self, timeout: float = 10.0) -> None:
        """Finishes what is queued, then stops the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
