"""A gRPC model server speaking TF Serving's API, for machines without `tensorflow_model_server`.

It serves the exports of `tfdialogpt.serving.export` (or any SavedModel in TF Serving's layout
`BASE/<version>/saved_model.pb`) through the official services, built on `grpcio` and the
`tensorflow-serving-api` servicers:
- `PredictionService.Predict` and `PredictionService.GetModelMetadata`;
- `ModelService.GetModelStatus`.

Behaviour follows TF Serving's where it has one:
- Versions: the base directory is polled; the newest `num_versions` versions are served and a
  request without a version gets the newest. A new version is loaded (and warmed up from its
  `assets.extra/tf_serving_warmup_requests`) beside the old one, then takes over; requests in
  flight finish on the version they started on. A version that fails to load is refused with
  a logged error while the old one keeps serving; it is retried only if its files change.
- Batching: concurrent requests queue; requests that can share a run (same version,
  signature, prompt length and parameters, and deterministic: greedy generate or score) are
  merged up to `max_batch_size` rows. Sampled requests run alone, so a seed gives the same
  tokens whatever else is in flight. A full queue answers RESOURCE_EXHAUSTED; no request is
  dropped silently.
- Bad requests get NOT_FOUND (unknown model or version) or INVALID_ARGUMENT (unknown signature,
  missing or unexpected input, wrong dtype or shape, out-of-range value) with a message naming
  the problem; the server stays up.
- SIGTERM (or SIGINT) stops accepting requests, lets those in flight finish within a grace
  period, then exits with status 0.

Example:
    $ python -m tfdialogpt.serving.server --model-base-path /models/dialogpt --port 8500
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.protos import (
    TensorDecodeError,
    apis,
    to_ndarray,
    to_tensor_proto,
)

log = logging.getLogger("tfdialogpt.serving")

DEFAULT_PORT = 8500
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ServingError(Exception):
    """A request that fails with a gRPC status code and a message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


# ---- one loaded version ----------------------------------------------------------------------


class Servable:
    """One loaded SavedModel version: its signatures, limits and warm-up state.

    Use it inside `with servable.in_flight():` so an unload waits for running requests.
    """

    def __init__(self, model_name: str, version: int, path: str):
        import tensorflow as tf

        self.model_name, self.version, self.path = model_name, version, path
        saved_model = apis().saved_model_pb2.SavedModel()
        with open(os.path.join(path, contract.SAVED_MODEL_FILE), "rb") as f:
            saved_model.ParseFromString(f.read())
        graphs = [g for g in saved_model.meta_graphs if contract.SERVING_TAG in g.meta_info_def.tags]
        if not graphs:
            raise ValueError(f"saved_model.pb has no MetaGraph tagged {contract.SERVING_TAG!r}")
        self.signature_defs = graphs[0].signature_def
        self._loaded = tf.saved_model.load(path, tags=[contract.SERVING_TAG])
        self.functions = dict(self._loaded.signatures)
        if not self.functions:
            raise ValueError("the SavedModel has no signatures")
        self.signatures = {name: self._signature_of(name, fn) for name, fn in self.functions.items()}
        self.limits = self._read_limits()
        self._in_flight = 0
        self._idle = threading.Condition()

    def _signature_of(self, name: str, fn) -> contract.Signature:
        """The contract's signature when it matches the loaded one; else one read from the model."""
        specs = fn.structured_input_signature[1]
        loaded = {key: (spec.dtype.as_numpy_dtype().dtype.name, spec.shape.rank) for key, spec in specs.items()}
        if name in contract.SIGNATURES:
            sig = contract.SIGNATURES[name]
            expected = {s.name: (s.dtype, s.rank) for s in sig.inputs}
            if loaded != expected:
                raise ValueError(
                    f"signature {name!r} takes {_describe_specs(loaded)}; the contract expects "
                    f"{_describe_specs(expected)}"
                )
            return sig
        inputs = tuple(
            contract.TensorSpec(key, dtype, tuple(f"d{i}" for i in range(rank or 0)), "")
            for key, (dtype, rank) in sorted(loaded.items())
        )
        outputs = tuple(contract.TensorSpec(key, "float32", (), "") for key in sorted(fn.structured_outputs))
        return contract.Signature(name, inputs, outputs, "")

    def _read_limits(self) -> contract.Limits | None:
        path = os.path.join(self.path, contract.ASSETS_EXTRA_DIR, contract.METADATA_FILE)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return contract.Limits.from_json_dict(json.load(f))

    def warmup(self) -> int:
        """Runs the warmup records, as TF Serving does before a version becomes available."""
        import tensorflow as tf

        path = os.path.join(self.path, contract.ASSETS_EXTRA_DIR, contract.WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(contract.MAX_WARMUP_RECORDS):
            entry = apis().prediction_log_pb2.PredictionLog.FromString(record.numpy())
            request = entry.predict_log.request
            name = request.model_spec.signature_name or contract.DEFAULT_SIGNATURE
            inputs = {key: to_ndarray(proto) for key, proto in request.inputs.items()}
            self.run(name, inputs)
            count += 1
        return count

    def check(self, name: str, inputs: Mapping[str, np.ndarray]) -> contract.Signature:
        """The signature `name` after checking `inputs` against it; raises `ServingError`."""
        name = name or contract.DEFAULT_SIGNATURE
        if name not in self.functions:
            raise _invalid(
                f"signature {name!r} not found in model {self.model_name!r} version {self.version}; "
                f"it has {', '.join(sorted(self.functions))}"
            )
        sig = self.signatures[name]
        try:
            contract.check_inputs(sig, inputs, self.limits)
        except contract.ContractError as err:
            raise _invalid(str(err)) from None
        return sig

    def run(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs a signature on numpy inputs; graph errors become INVALID_ARGUMENT or INTERNAL."""
        import tensorflow as tf

        fn = self.functions[name]
        try:
            outputs = fn(**{key: tf.constant(value) for key, value in inputs.items()})
        except tf.errors.InvalidArgumentError as err:
            raise _invalid(f"signature {name!r} rejected the request: {err.message}") from None
        except (tf.errors.OpError, ValueError, TypeError) as err:
            raise ServingError(grpc.StatusCode.INTERNAL, f"signature {name!r} failed: {err}") from None
        return {key: value.numpy() for key, value in outputs.items()}

    # In-flight accounting, so an unloaded version is released only when idle.
    def acquire(self) -> None:
        with self._idle:
            self._in_flight += 1

    def release(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)


def _describe_specs(specs: Mapping[str, tuple[str, int]]) -> str:
    return ", ".join(f"{k} ({d}, rank {r})" for k, (d, r) in sorted(specs.items()))


# ---- the versions of one model ---------------------------------------------------------------

State = collections.namedtuple("State", "state error_code error_message")
START, LOADING, AVAILABLE, UNLOADING, END = 10, 20, 30, 40, 50
_UNKNOWN_ERROR = 2  # tensorflow.error.Code UNKNOWN, reported for a version that failed to load


def _fingerprint(path: str) -> tuple:
    """What changes when a version directory's files change (names, sizes, mtimes)."""
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            entries.append((os.path.relpath(os.path.join(root, name), path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


class ModelVersions:
    """Loads, serves and unloads the versions found under a model's base path.

    Args:
        name: the model name requests must use.
        base_path: the directory holding `<version>/saved_model.pb`.
        num_versions: how many of the newest versions to keep serving (TF Serving's `latest`
            version policy).
        warmup: run each version's warmup records before it serves.
    """

    def __init__(self, name: str, base_path: str, num_versions: int = 1, warmup: bool = True):
        if num_versions < 1:
            raise ValueError(f"num_versions must be at least 1, got {num_versions}")
        self.name, self.base_path = name, os.path.abspath(base_path)
        self.num_versions, self.warmup = num_versions, warmup
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._servables: dict[int, Servable] = {}
        self._states: dict[int, State] = {}
        self._failed: dict[int, tuple] = {}  # version -> fingerprint of the files that failed

    def _on_disk(self) -> dict[int, str]:
        try:
            names = os.listdir(self.base_path)
        except FileNotFoundError:
            return {}
        found = {}
        for entry in names:
            path = os.path.join(self.base_path, entry)
            if entry.isdigit() and os.path.isdir(path):
                found[int(entry)] = path
        return found

    def poll(self) -> None:
        """One pass: loads new versions, unloads those the policy no longer keeps."""
        with self._poll_lock:
            on_disk = self._on_disk()
            for version, fingerprint in list(self._failed.items()):
                if version not in on_disk or _fingerprint(on_disk[version]) != fingerprint:
                    del self._failed[version]  # changed or gone: may be retried
            with self._lock:
                loaded = set(self._servables)
            candidates = sorted((v for v in on_disk if v not in self._failed), reverse=True)
            for version in candidates[: self.num_versions]:
                if version not in loaded:
                    self._load(version, on_disk[version])
            with self._lock:
                available = sorted(self._servables, reverse=True)
                keep = set(available[: self.num_versions]) & set(on_disk)
                dropped = [self._servables.pop(v) for v in available if v not in keep]
                for servable in dropped:
                    self._states[servable.version] = State(UNLOADING, 0, "")
            for servable in dropped:
                threading.Thread(target=self._unload, args=(servable,), daemon=True).start()

    def _load(self, version: int, path: str) -> None:
        with self._lock:
            self._states[version] = State(LOADING, 0, "")
        log.info("loading version %d of model %r from %s", version, self.name, path)
        started = time.perf_counter()
        try:
            if not os.path.exists(os.path.join(path, contract.SAVED_MODEL_FILE)):
                raise FileNotFoundError(f"no {contract.SAVED_MODEL_FILE} in {path}")
            servable = Servable(self.name, version, path)
            warmed = servable.warmup() if self.warmup else 0
        except Exception as err:  # any failure refuses this version; the old one keeps serving
            message = f"{type(err).__name__}: {err}".strip()
            self._failed[version] = _fingerprint(path)
            with self._lock:
                self._states[version] = State(END, _UNKNOWN_ERROR, message[:2000])
            log.error(
                "refused version %d of model %r at %s: %s (still serving %s)",
                version,
                self.name,
                path,
                message.splitlines()[0] if message else type(err).__name__,
                self.available_versions() or "nothing",
            )
            return
        with self._lock:
            self._servables[version] = servable
            self._states[version] = State(AVAILABLE, 0, "")
        log.info(
            "version %d of model %r is available (%.1f s, %d warmup requests)",
            version,
            self.name,
            time.perf_counter() - started,
            warmed,
        )

    def _unload(self, servable: Servable) -> None:
        servable.wait_idle()
        with self._lock:
            self._states[servable.version] = State(END, 0, "")
        log.info("unloaded version %d of model %r", servable.version, self.name)

    def available_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._servables)

    def acquire(self, version: int | None = None) -> Servable:
        """The servable for `version` (newest if None), marked in flight; call `release()`.

        Raises:
            ServingError: NOT_FOUND if the version is not being served.
        """
        with self._lock:
            if not self._servables:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {self.name!r} has no version available yet (base path {self.base_path})",
                )
            if version is None:
                version = max(self._servables)
            servable = self._servables.get(version)
            if servable is None:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"version {version} of model {self.name!r} is not being served; available: "
                    f"{sorted(self._servables)}",
                )
            servable.acquire()
            return servable

    def states(self, version: int | None = None) -> dict[int, State]:
        with self._lock:
            if version is None:
                return dict(self._states)
            if version not in self._states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"version {version} of model {self.name!r} was never seen; known: {sorted(self._states)}",
                )
            return {version: self._states[version]}


# ---- batching --------------------------------------------------------------------------------


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
    if sig.name not in contract.SIGNATURES:
        return None
    scalars = tuple((name, inputs[name].tobytes()) for name in sig.input_names if inputs[name].ndim == 0 and name != "seed")
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
    """

    def __init__(self, max_batch_size: int = 8, batch_timeout: float = 0.002, num_threads: int = 2, max_queued: int = 1024):
        self.max_batch_size, self.batch_timeout, self.max_queued = max_batch_size, batch_timeout, max_queued
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
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            if len(self._queue) >= self.max_queued:
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
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


# ---- the gRPC services -----------------------------------------------------------------------


def _abort_on_error(method):
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except ServingError as err:
            log.info("%s: %s: %s", method.__name__, err.code.name, err.message)
            context.abort(err.code, err.message)
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the request was cancelled")
        except Exception as err:  # a bug must cost one request, not the server
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")

    wrapper.__name__ = method.__name__
    return wrapper


class ModelServer:
    """TF Serving's gRPC API over the SavedModel versions under one base path.

    Args:
        base_path: `BASE/<version>/saved_model.pb` directories.
        model_name: the name requests must use.
        host, port: where to listen; port 0 picks a free one (see `.port` after `start()`).
        poll_interval: seconds between scans of the base path for new versions.
        num_versions: newest versions served at once.
        max_batch_size, batch_timeout, num_batch_threads, max_queued: see `Batcher`.
        warmup: run each version's warmup records before serving it.

    Example:
        >>> server = ModelServer("/models/dialogpt", port=0).start()  # doctest: +SKIP
        >>> server.port, server.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        base_path: str | None,
        model_name: str = "dialogpt",
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        poll_interval: float = 1.0,
        num_versions: int = 1,
        max_batch_size: int = 8,
        batch_timeout: float = 0.002,
        num_batch_threads: int = 2,
        max_queued: int = 1024,
        max_workers: int = 64,
        warmup: bool = True,
        models: Sequence[ModelVersions] = (),
    ):
        self.model_name = model_name
        self.models = {m.name: m for m in models}
        if base_path is not None:
            self.models[model_name] = ModelVersions(model_name, base_path, num_versions, warmup)
        if not self.models:
            raise ValueError("nothing to serve: give base_path or models")
        self.host, self.port = host, port
        self.poll_interval = poll_interval
        self.batcher = Batcher(max_batch_size, batch_timeout, num_batch_threads, max_queued)
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        api = apis()
        api.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), self._server)
        api.model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), self._server)
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)

    def model(self, name: str) -> ModelVersions:
        if name not in self.models:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"model {name!r} not found; this server serves {', '.join(repr(m) for m in self.models)}",
            )
        return self.models[name]

    def start(self) -> ModelServer:
        """Loads the current versions, then listens. Returns self."""
        for model in self.models.values():
            model.poll()
            if not model.available_versions():
                log.warning("model %r has no loadable version under %s yet; polling", model.name, model.base_path)
        self.port = self._server.add_insecure_port(f"{self.host}:{self.port}")
        if not self.port:
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        self._server.start()
        self._poller.start()
        log.info("serving %s on %s:%d", ", ".join(repr(m) for m in self.models), self.host, self.port)
        return self

    def _poll_loop(self) -> None:
        while not self._stop_polling.wait(self.poll_interval):
            for model in self.models.values():
                try:
                    model.poll()
                except Exception:  # keep polling whatever one pass hit
                    log.exception("polling %s failed", model.base_path)

    def stop(self, grace: float = 10.0) -> None:
        """Stops taking requests, lets those in flight finish (up to `grace` s), then stops."""
        log.info("stopping: finishing requests in flight (grace %.1f s)", grace)
        self._server.stop(grace).wait(grace + 5)
        self._stop_polling.set()
        self.batcher.stop()
        if self._poller.is_alive():
            self._poller.join(self.poll_interval + 5)
        log.info("stopped")

    # ---- request handling (shared by the servicers) ----
    def predict(self, request, context):
        spec = request.model_spec
        model = self.model(spec.name)
        if spec.version_label:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"version label {spec.version_label!r} of model {spec.name!r} is not defined; "
                "this server has no labels, ask by version number",
            )
        version = spec.version.value if spec.HasField("version") else None
        inputs = {}
        for key, proto in request.inputs.items():
            try:
                inputs[key] = to_ndarray(proto)
            except TensorDecodeError as err:
                raise _invalid(f"input {key!r}: {err}") from None
        servable = model.acquire(version)
        try:
            name = spec.signature_name or contract.DEFAULT_SIGNATURE
            sig = servable.check(name, inputs)
            unknown = sorted(set(request.output_filter) - set(servable.functions[name].structured_outputs))
            if unknown:
                raise _invalid(f"output_filter names {unknown[0]!r}, which signature {name!r} does not produce")
            rows = int(inputs[sig.input_names[0]].shape[0]) if inputs[sig.input_names[0]].ndim else 1
            task = _Task(servable, name, inputs, batch_key(servable, sig, inputs), rows)
            future = self.batcher.submit(task)
            if not context.add_callback(future.cancel):  # a client that goes away frees its slot
                future.cancel()
            timeout = context.time_remaining()
            try:
                outputs = future.result(timeout=None if timeout is None else max(timeout, 0.0))
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while the request was queued or running") from None
        finally:
            servable.release()
        response = apis().predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        wanted = set(request.output_filter) or set(outputs)
        for key, value in outputs.items():
            if key in wanted:
                to_tensor_proto(value, response.outputs[key])
        return response

    def metadata(self, request, context):
        model = self.model(request.model_spec.name)
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise _invalid(f"metadata_field must be ['signature_def'] (the only one served); got {fields}")
        version = request.model_spec.version.value if request.model_spec.HasField("version") else None
        servable = model.acquire(version)
        try:
            api = apis()
            response = api.get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = model.name
            response.model_spec.version.value = servable.version
            signature_map = api.get_model_metadata_pb2.SignatureDefMap()
            for key, value in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(signature_map)
            return response
        finally:
            servable.release()

    def status(self, request, context):
        model = self.model(request.model_spec.name)
        version = request.model_spec.version.value if request.model_spec.HasField("version") else None
        response = apis().get_model_status_pb2.GetModelStatusResponse()
        for number, state in sorted(model.states(version).items()):
            entry = response.model_version_status.add(version=number, state=state.state)
            entry.status.error_code = state.error_code
            entry.status.error_message = state.error_message
        return response


def _servicer_base(module: str, name: str):
    return getattr(getattr(apis(), module), name)


class _PredictionService(_servicer_base("prediction_service_pb2_grpc", "PredictionServiceServicer")):
    def __init__(self, server: ModelServer):
        self.server = server

    @_abort_on_error
    def Predict(self, request, context):  # noqa: N802 (gRPC's method names)
        return self.server.predict(request, context)

    @_abort_on_error
    def GetModelMetadata(self, request, context):  # noqa: N802
        return self.server.metadata(request, context)


class _ModelService(_servicer_base("model_service_pb2_grpc", "ModelServiceServicer")):
    def __init__(self, server: ModelServer):
        self.server = server

    @_abort_on_error
    def GetModelStatus(self, request, context):  # noqa: N802
        return self.server.status(request, context)


# ---- entry point -----------------------------------------------------------------------------


def serve(server: ModelServer, grace: float = 10.0) -> int:
    """Starts `server` and blocks until SIGTERM or SIGINT, then stops it cleanly. Returns 0."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        while not stop.wait(0.5):
            pass
        server.stop(grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def read_model_config(path: str, warmup: bool = True) -> list[ModelVersions]:
    """The models of a TF Serving `--model_config_file` (`ModelServerConfig` text proto).

    Relative base paths are taken from the config file's directory. Version policies
    `latest` and `all` are supported.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    with open(path, encoding="utf-8") as f:
        text_format.Parse(f.read(), config)
    models = []
    for entry in config.model_config_list.config:
        policy = entry.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "specific":
            raise ValueError(f"{path}: model {entry.name!r} uses a 'specific' version policy; this server supports 'latest' and 'all'")
        num_versions = 1_000_000 if kind == "all" else (policy.latest.num_versions or 1)
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), entry.base_path)
        models.append(ModelVersions(entry.name, base_path, num_versions, warmup))
    if not models:
        raise ValueError(f"{path} lists no model (model_config_list {{ config {{ ... }} }})")
    return models


_BATCHING_KEYS = ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches")


def read_batching_parameters(path: str) -> dict[str, int]:
    """The `name { value: N }` entries of a TF Serving batching parameters file we use."""
    import re

    with open(path, encoding="utf-8") as f:
        text = "\n".join(line.split("#", 1)[0] for line in f)
    values = {}
    for key, body in re.findall(r"(\w+)\s*\{([^}]*)\}", text):
        number = re.fullmatch(r"\s*value\s*:\s*(\d+)\s*", body)
        if key not in _BATCHING_KEYS or number is None:
            raise ValueError(f"{path}: cannot use {key} {{{body.strip()}}}; expected one of {', '.join(_BATCHING_KEYS)} with a value")
        values[key] = int(number.group(1))
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfdialogpt.serving.server",
        description="Serve SavedModel exports over TF Serving's gRPC API (where tensorflow_model_server is absent).",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options, shared with `tfdialogpt serve`."""
    parser.add_argument("--model-base-path", help="directory holding <version>/saved_model.pb")
    parser.add_argument("--model-config-file", help="TF Serving models.config instead of --model-base-path")
    parser.add_argument("--batching-parameters-file", help="TF Serving batching parameters (overrides the batch options)")
    parser.add_argument("--model-name", default="dialogpt", help="name clients put in model_spec.name")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (127.0.0.1 for local only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port; 0 picks a free one")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between scans for new versions")
    parser.add_argument("--num-versions", type=int, default=1, help="newest versions served at once")
    parser.add_argument("--max-batch-size", type=int, default=8, help="rows merged into one run; 1 disables merging")
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0, help="how long a run waits for more requests")
    parser.add_argument("--num-batch-threads", type=int, default=2, help="runs executed in parallel")
    parser.add_argument("--max-queued", type=int, default=1024, help="queued requests before RESOURCE_EXHAUSTED")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests get on shutdown")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warmup records")


def server_from_args(args: argparse.Namespace) -> ModelServer:
    if (args.model_base_path is None) == (args.model_config_file is None):
        raise ValueError("give exactly one of --model-base-path and --model-config-file")
    if args.batching_parameters_file:
        batching = read_batching_parameters(args.batching_parameters_file)
        args.max_batch_size = batching.get("max_batch_size", args.max_batch_size)
        args.batch_timeout_ms = batching.get("batch_timeout_micros", args.batch_timeout_ms * 1000) / 1000.0
        args.num_batch_threads = batching.get("num_batch_threads", args.num_batch_threads)
        if "max_enqueued_batches" in batching:
            args.max_queued = batching["max_enqueued_batches"] * args.max_batch_size
    models = read_model_config(args.model_config_file, not args.no_warmup) if args.model_config_file else ()
    return ModelServer(
        args.model_base_path,
        model_name=args.model_name,
        host=args.host,
        port=args.port,
        poll_interval=args.poll_interval,
        num_versions=args.num_versions,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_ms / 1000.0,
        num_batch_threads=args.num_batch_threads,
        max_queued=args.max_queued,
        warmup=not args.no_warmup,
        models=models,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.model_base_path is None) == (args.model_config_file is None):
        parser.error("give exactly one of --model-base-path and --model-config-file")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return serve(server_from_args(args), grace=args.grace)


if __name__ == "__main__":
    sys.exit(main())
