"""Our request batcher: a queue served by worker threads that merges concurrent requests.

Requests to the same signature of the same version share a run, whatever their settings and
prompt lengths (`merging.py` re-pads them to a shared bucket; every setting is one value per
row, so each row decodes as if alone, sampled rows from their own seeds), up to
`max_batch_size` rows; the run's outputs are split back into each request's answer. A run
starts when full, or when no request has joined it for `batch_timeout`, and, unless full, not
while a run of the same signature is going on (so closed-loop clients end up in full runs
rather than in two half-full ones that share the cores; see `Batcher._take`). Prompts
are padded to the buckets and, for XLA signatures, rows to a power of two, so no client can
make the server compile a new shape. A full queue answers RESOURCE_EXHAUSTED; no request is
dropped silently. A request whose client goes away (`_Task.abandon`) leaves the queue; a run
whose every request has gone is stopped at its next decode step (`cancellation.py`; an XLA
signature's run finishes, bounded by the request limits).

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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tfdialogpt.serving import cancellation, merging
from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.errors import (
    RequestCancelledError,
    ResourceExhaustedError,
    ServerUnavailableError,
    ServingError,
)

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
    gone: bool = False  # its client went away or its deadline passed
    running: _Running | None = None  # the run it is part of, once taken from the queue

    def abandon(self) -> None:
        """Its client went away: a queued task is dropped; a running one is marked, and its run
        stopped once every task in it is gone (`_Running.check`)."""
        if self.future.cancel():
            return
        self.gone = True
        running = self.running
        if running is not None:
            running.check()


class _Running:
    """The tasks of one run and the handle that stops it."""

    def __init__(self, tasks: list[_Task]):
        self.tasks, self.control = tasks, cancellation.Run()
        for task in tasks:
            task.running = self
        self.check()  # a task abandoned before it was marked as running

    def check(self) -> None:
        if not self.control.cancelled and all(task.gone for task in self.tasks):
            self.control.cancel()


def batch_key(servable: Servable, sig: contract.Signature, inputs: Mapping[str, np.ndarray]) -> tuple | None:
    """Requests with the same key share a run: the same signature of the same loaded version.
    A signature outside the contract (a foreign export's) runs alone, as it came."""
    if contract.SIGNATURES.get(sig.name) is not sig:
        return None
    return (servable.version, id(servable), sig.name)


class Batcher:
    """A request queue served by worker threads, merging compatible requests into one run.

    Args:
        max_batch_size: most rows in one merged run (1 turns merging off; requests still queue).
        batch_timeout: seconds a run waits for company after its last request joined.
        num_threads: runs in parallel.
        max_queued: requests waiting at most; more get RESOURCE_EXHAUSTED.
        allowed_batch_sizes: the row counts XLA signatures run with (TF Serving's option of the
            same name; increasing, the last one `max_batch_size`); a run is padded up to the
            next one. Empty: powers of two.
        on_run: called with (servable, signature, rows) before each run (for the metrics).
        rejoin_timeout: seconds a run that waited behind another waits, once that one has
            answered, for the requests its clients send next (a round trip, not a decode).
    """

    def __init__(
        self,
        max_batch_size: int = 8,
        batch_timeout: float = 0.002,
        num_threads: int = 2,
        max_queued: int = 1024,
        allowed_batch_sizes: Sequence[int] = (),
        on_run: Callable[[Servable, str, int], None] | None = None,
        rejoin_timeout: float = 0.05,
    ):
        self.max_batch_size, self.batch_timeout, self.max_queued = max_batch_size, batch_timeout, max_queued
        self.rejoin_timeout = max(rejoin_timeout, batch_timeout)
        self.allowed_batch_sizes = merging.check_allowed_batch_sizes(allowed_batch_sizes, max_batch_size)
        self._on_run = on_run
        self._queue: collections.deque[_Task] = collections.deque()
        self._cond = threading.Condition()
        self._collecting: set[tuple] = set()  # keys a worker is gathering a run for
        self._in_flight: collections.Counter[tuple] = collections.Counter()  # runs going on, by key
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
            self._cond.notify_all()  # the worker gathering this key's run must see it
        return task.future

    def _take(self) -> list[_Task] | None:
        """The next run's tasks. A run starts once it is full, or once `batch_timeout` has passed
        without a new request for it (a burst is taken whole: at most `max_batch_size` waits),
        but never, unless full, while another run of the same key is going on: the cores are
        busy then, so waiting costs no throughput, and the requests its clients send next join
        this run instead of two half-full runs sharing the cores. One worker gathers per key."""
        with self._cond:
            while True:
                first = next((t for t in self._queue if t.key is None or t.key not in self._collecting), None)
                if first is not None:
                    break
                if self._stopping and not self._queue:
                    return None
                self._cond.wait(0.5)
            self._queue.remove(first)
            batch = [first]
            if first.key is not None and self.max_batch_size > 1:
                self._collecting.add(first.key)
                try:
                    batch = self._gather(batch)
                finally:
                    self._collecting.discard(first.key)
            self._in_flight[first.key] += 1  # before the lock is let go: `_work` ends it
            return batch

    def _gather(self, batch: list[_Task]) -> list[_Task]:
        """`batch` (its first task taken) filled from the queue as `_take` says; under `_cond`."""
        key, rows = batch[0].key, batch[0].rows
        deadline, behind = time.monotonic() + self.batch_timeout, False
        while True:
            for task in list(self._queue):
                if task.key == key and rows + task.rows <= self.max_batch_size:
                    self._queue.remove(task)
                    batch.append(task)
                    rows += task.rows
                    deadline = max(deadline, time.monotonic() + self.batch_timeout)
            if rows >= self.max_batch_size or self._stopping:
                return batch
            if self._in_flight[key]:
                behind = True
                self._cond.wait(0.5)  # woken by a new request or the end of that run
                continue
            if behind:  # that run has just answered: give its clients time to send again
                behind, deadline = False, max(deadline, time.monotonic() + self.rejoin_timeout)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return batch
            self._cond.wait(remaining)

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            key = batch[0].key
            batch = [task for task in batch if task.future.set_running_or_notify_cancel()]
            try:
                if batch:
                    self._run(batch)
            except Exception as err:  # never let a worker die: fail the batch, keep serving
                for task in batch:
                    if not task.future.done():
                        task.future.set_exception(err)
            finally:
                with self._cond:
                    self._in_flight[key] -= 1
                    self._cond.notify_all()  # a run gathering behind this one may start

    def _run(self, batch: list[_Task]) -> None:
        first, running = batch[0], _Running(batch)
        if self._on_run is not None:
            self._on_run(first.servable, first.signature, sum(task.rows for task in batch))
        if first.key is None:
            self._run_alone(first, running.control)
            return
        try:
            answers = self._run_merged(first, [task.inputs for task in batch], running.control)
        except ServingError as err:
            if len(batch) == 1 or isinstance(err, RequestCancelledError):
                for task in batch:
                    task.future.set_exception(err)
                return
            for task in batch:  # one bad request must not fail the others: run each alone
                self._run_alone(task, _Running([task]).control)
            return
        if len(batch) > 1:
            self.runs += 1
            self.merged_requests += len(batch)
        for task, answer in zip(batch, answers, strict=True):
            task.future.set_result(answer)

    def _run_merged(self, first: _Task, requests: list[dict[str, np.ndarray]], control: cancellation.Run) -> list[dict]:
        """One run of `first`'s signature for `requests`, padded as `merging.merge` pads (XLA
        signatures to the allowed batch sizes), split back into their answers."""
        run = merging.merge(
            first.signature,
            requests,
            first.servable.limits,
            pad_rows=contract.signature(first.signature).jit_compile,
            allowed_batch_sizes=self.allowed_batch_sizes,
        )
        return run.split(first.servable.run(first.signature, run.inputs, control))

    def _run_alone(self, task: _Task, control: cancellation.Run) -> None:
        try:
            if task.key is None:
                task.future.set_result(task.servable.run(task.signature, task.inputs, control))
            else:  # padded like a merged run, so a retry alone compiles no new shape either
                task.future.set_result(self._run_merged(task, [task.inputs], control)[0])
        except ServingError as err:
            task.future.set_exception(err)

    def stop(self, timeout: float = 10.0) -> None:
        """Finishes what is queued, then stops the workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
