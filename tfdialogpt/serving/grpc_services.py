"""TF Serving's gRPC API, for machines without `tensorflow_model_server`.

`ModelServer` serves the exports of `tfdialogpt.serving.export` (or any SavedModel in TF
Serving's layout `BASE/<version>/saved_model.pb`) through the official services, built on
`grpcio` and the `tensorflow-serving-api` servicers:
- `PredictionService.Predict` and `PredictionService.GetModelMetadata`;
- `ModelService.GetModelStatus`;
- `grpc.health.v1.Health` (`Check`, `Watch`): service `""` is SERVING while every model has a
  version available, each model name while it has one; NOT_SERVING during shutdown.

The port is bound exclusively (no SO_REUSEPORT): a second server on it fails to start.

Behaviour follows TF Serving's where it has one:
- Versions: see `servables.ModelVersions` (newest `num_versions` served, new versions warmed up
  beside the old one, a version that fails to load refused while the old one keeps serving).
- Batching: see `batching.Batcher` (compatible deterministic requests merged up to
  `max_batch_size` rows; a full queue answers RESOURCE_EXHAUSTED).
- Bad requests get NOT_FOUND (unknown model or version) or INVALID_ARGUMENT (unknown signature,
  missing or unexpected input, wrong dtype or shape, out-of-range value) with a message naming
  the problem; the server stays up. Each failure is an `errors.ServingError` whose code and
  details the services answer with (`_answer`), counted in the metrics (`metrics.py`).
- SIGTERM (or SIGINT) stops accepting requests, lets those in flight finish within a grace
  period, then exits with status 0 (`serve`).

The command line (`python -m tfdialogpt.serving.server`, `tfdialogpt serve`) is in
`server_options.py`.

Example:
    >>> server = ModelServer("/models/dialogpt", port=0).start()  # doctest: +SKIP
    >>> server.port, server.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

import grpc

from tfdialogpt._quiet import native_stderr_collected
from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.batching import Batcher, _Task, batch_key
from tfdialogpt.serving.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ServingError,
    ServingTimeoutError,
)
from tfdialogpt.serving.limits import RequestLimits
from tfdialogpt.serving.metrics import ServerMetrics
from tfdialogpt.serving.protos import TensorDecodeError, apis, to_ndarray, to_tensor_proto
from tfdialogpt.serving.request_checks import positions_per_row
from tfdialogpt.serving.servables import ModelVersions, Servable

log = logging.getLogger("tfdialogpt.serving")

DEFAULT_PORT = 8500
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def _answer(api: str):
    """A servicer method that answers a `ServingError` with its status and message, and records
    each request in the server's metrics."""

    def decorate(method):
        def wrapper(self, request, context):
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                return method(self, request, context)
            except ServingError as err:
                code = err.code
                log.info("%s: %s: %s", method.__name__, err.code.name, err.details)
                context.abort(err.code, err.details)
            except concurrent.futures.CancelledError:
                code = grpc.StatusCode.CANCELLED
                context.abort(code, "the request was cancelled")
            except Exception as err:  # a bug must cost one request, not the server
                code = grpc.StatusCode.INTERNAL
                log.exception("%s failed", method.__name__)
                context.abort(code, f"{type(err).__name__}: {err}")
            finally:
                spec = request.model_spec
                signature = (spec.signature_name or contract.DEFAULT_SIGNATURE) if api == "predict" else ""
                self.server.metrics.record(api, "grpc", spec.name, signature, code.name, time.perf_counter() - started)

        wrapper.__name__ = method.__name__
        return wrapper

    return decorate


class ModelServer:
    """TF Serving's gRPC API over the SavedModel versions under one base path.

    Args:
        base_path: `BASE/<version>/saved_model.pb` directories.
        model_name: the name requests must use.
        host, port: where to listen; port 0 picks a free one (see `.port` after `start()`).
        poll_interval: seconds between scans of the base path for new versions.
        num_versions: newest versions served at once.
        max_batch_size, batch_timeout, num_batch_threads, max_queued, allowed_batch_sizes:
            see `Batcher`.
        warmup: run each version's warmup records before serving it.
        rest_port, rest_options: TF Serving's REST API on this port (0 picks a free one; None:
            off), with `rest_api.RestServer`'s options.
        request_limits: what one request may send (`limits.RequestLimits`).
        ssl_config: TLS for the gRPC port (`tls.SslConfig`, TF Serving's SSLConfig); None: plain.

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
        allowed_batch_sizes: Sequence[int] = (),
        max_workers: int = 64,
        warmup: bool = True,
        models: Sequence[ModelVersions] = (),
        rest_port: int | None = None,
        rest_options: dict | None = None,
        request_limits: RequestLimits = RequestLimits(),
        ssl_config=None,
    ):
        self.model_name = model_name
        self.models = {m.name: m for m in models}
        if base_path is not None:
            self.models[model_name] = ModelVersions(model_name, base_path, num_versions, warmup)
        if not self.models:
            raise ValueError("nothing to serve: give base_path or models")
        self.host, self.port = host, port
        self.poll_interval = poll_interval
        self.request_limits = request_limits
        self.ssl_config = ssl_config
        self.metrics = ServerMetrics(lambda: self.models)
        self.batcher = Batcher(
            max_batch_size,
            batch_timeout,
            num_batch_threads,
            max_queued,
            allowed_batch_sizes=allowed_batch_sizes,
            on_run=lambda servable, signature, rows: self.metrics.record_run(servable.model_name, signature, rows),
        )
        self.rest = None
        if rest_port is not None:
            from tfdialogpt.serving.rest_api import RestServer

            self.rest = RestServer(self, host, rest_port, **(rest_options or {}))
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # gRPC sets SO_REUSEPORT by default: a second server on the port would start and
                # split the traffic with this one. Off, the second one fails to bind.
                ("grpc.so_reuseport", 0),
            ],
        )
        api = apis()
        api.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), self._server)
        api.model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), self._server)
        from grpc_health.v1 import health, health_pb2_grpc

        self._health = health.HealthServicer()  # grpc.health.v1: "" and each model name
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="version-poller", daemon=True)

    def model(self, name: str) -> ModelVersions:
        if name not in self.models:
            raise ModelNotFoundError(
                f"model {name!r} not found; this server serves {', '.join(repr(m) for m in self.models)}",
            )
        return self.models[name]

    def start(self) -> ModelServer:
        """Binds the ports, loads the current versions, then serves. Returns self.

        Raises:
            ServingError: a port cannot be bound (before any model is loaded).
        """
        address = f"{self.host}:{self.port}"
        with native_stderr_collected() as native:  # gRPC's own log line of a failed bind: ours says it
            try:
                if self.ssl_config is None:
                    bound = self._server.add_insecure_port(address)
                else:
                    from tfdialogpt.serving.tls import server_credentials

                    bound = self._server.add_secure_port(address, server_credentials(self.ssl_config))
            except RuntimeError:
                bound = 0
        if bound and native[0]:
            sys.stderr.write(native[0])
        if not bound:
            raise ServingError(f"cannot listen on {self.host}:{self.port} (gRPC): the address is in use or invalid")
        self.port = bound
        if self.rest is not None:
            self.rest.start()
        for model in self.models.values():
            model.poll()
            if not model.available_versions():
                log.warning("model %r has no loadable version under %s yet; polling", model.name, model.base_path)
        self._update_health()
        self._server.start()
        self._poller.start()
        log.info("serving %s on %s:%d (gRPC)", ", ".join(repr(m) for m in self.models), self.host, self.port)
        return self

    def _poll_loop(self) -> None:
        while not self._stop_polling.wait(self.poll_interval):
            for model in self.models.values():
                try:
                    model.poll()
                except Exception:  # keep polling whatever one pass hit
                    log.exception("polling %s failed", model.base_path)
            self._update_health()

    def _update_health(self) -> None:
        """Each model SERVING while it has a version available; "" (the server) while all do."""
        from grpc_health.v1 import health_pb2

        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        states = {name: bool(model.available_versions()) for name, model in self.models.items()}
        for name, up in states.items():
            self._health.set(name, serving if up else not_serving)
        self._health.set("", serving if all(states.values()) else not_serving)

    def stop(self, grace: float = 10.0) -> None:
        """Stops taking requests, lets those in flight finish (up to `grace` s), then stops."""
        log.info("stopping: finishing requests in flight (grace %.1f s)", grace)
        self._health.enter_graceful_shutdown()  # health checks answer NOT_SERVING from now on
        stopped = self._server.stop(grace)  # gRPC and REST drain side by side, within one grace
        if self.rest is not None:
            self.rest.stop(grace)
        stopped.wait(grace + 5)
        self._stop_polling.set()
        self.batcher.stop()
        if self._poller.is_alive():
            self._poller.join(self.poll_interval + 5)
        log.info("stopped")

    # ---- request handling (shared by the gRPC servicers and the REST API) ----
    def acquire(self, spec) -> Servable:
        """The servable a `ModelSpec` names (newest version if none), marked in flight: call
        `release()` on it. Raises `ModelNotFoundError` (NOT_FOUND)."""
        model = self.model(spec.name)
        if spec.version_label:
            raise ModelNotFoundError(
                f"version label {spec.version_label!r} of model {spec.name!r} is not defined; "
                "this server has no labels, ask by version number",
            )
        return model.acquire(spec.version.value if spec.HasField("version") else None)

    def predict_arrays(self, servable: Servable, name: str, inputs: dict, call, output_filter=()) -> dict:
        """Checks and runs signature `name` of `servable` on numpy `inputs`, through the batcher.

        `call` is the gRPC context or its REST stand-in: `time_remaining()` is the deadline and
        `add_callback(fn)` registers the cancel of a request whose client goes away.
        """
        for key, value in inputs.items():  # REST's arrays (gRPC's were checked before decoding)
            self.request_limits.check_shape(key, value.shape)
        sig = servable.check(name, inputs)
        rows = int(inputs[sig.input_names[0]].shape[0]) if inputs[sig.input_names[0]].ndim else 1
        if contract.SIGNATURES.get(sig.name) is sig:
            self.request_limits.check_cache(rows, positions_per_row(sig, inputs, servable.limits), servable.limits)
        unknown = sorted(set(output_filter) - set(servable.functions[name].structured_outputs))
        if unknown:
            raise InvalidRequestError(f"output_filter names {unknown[0]!r}, which signature {name!r} does not produce")
        task = _Task(servable, name, inputs, batch_key(servable, sig, inputs), rows)
        future = self.batcher.submit(task)
        if not call.add_callback(task.abandon):  # a client that goes away frees its slot
            task.abandon()
        timeout = call.time_remaining()
        try:
            outputs = future.result(timeout=None if timeout is None else max(timeout, 0.0))
        except concurrent.futures.TimeoutError:
            task.abandon()
            raise ServingTimeoutError("the deadline passed while the request was queued or running") from None
        wanted = set(output_filter) or set(outputs)
        return {key: value for key, value in outputs.items() if key in wanted}

    def predict(self, request, context):
        spec = request.model_spec
        inputs = {}
        servable = self.acquire(spec)
        try:
            for key, proto in request.inputs.items():
                # The declared shape first: decoding allocates it (values may be left out).
                self.request_limits.check_shape(key, [dim.size for dim in proto.tensor_shape.dim])
                try:
                    inputs[key] = to_ndarray(proto)
                except TensorDecodeError as err:
                    raise InvalidRequestError(f"input {key!r}: {err}") from None
            name = spec.signature_name or contract.DEFAULT_SIGNATURE
            outputs = self.predict_arrays(servable, name, inputs, context, request.output_filter)
        finally:
            servable.release()
        response = apis().predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        for key, value in outputs.items():
            to_tensor_proto(value, response.outputs[key])
        return response

    def metadata(self, request, context):
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise InvalidRequestError(f"metadata_field must be ['signature_def'] (the only one served); got {fields}")
        return self.metadata_of(request.model_spec)

    def metadata_of(self, spec):
        """`GetModelMetadataResponse` (the signatures) of the version `spec` names."""
        servable = self.acquire(spec)
        try:
            api = apis()
            response = api.get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = servable.version
            signature_map = api.get_model_metadata_pb2.SignatureDefMap()
            for key, value in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(value)
            response.metadata["signature_def"].Pack(signature_map)
            return response
        finally:
            servable.release()

    def status(self, request, context):
        return self.status_of(request.model_spec)

    def status_of(self, spec):
        """`GetModelStatusResponse`: the state of each version (or of the one `spec` names)."""
        model = self.model(spec.name)
        if spec.version_label:
            raise ModelNotFoundError(f"version label {spec.version_label!r} of model {spec.name!r} is not defined")
        version = spec.version.value if spec.HasField("version") else None
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

    @_answer("predict")
    def Predict(self, request, context):  # noqa: N802 (gRPC's method names)
        return self.server.predict(request, context)

    @_answer("metadata")
    def GetModelMetadata(self, request, context):  # noqa: N802
        return self.server.metadata(request, context)


class _ModelService(_servicer_base("model_service_pb2_grpc", "ModelServiceServicer")):
    def __init__(self, server: ModelServer):
        self.server = server

    @_answer("status")
    def GetModelStatus(self, request, context):  # noqa: N802
        return self.server.status(request, context)


# ---- entry point -----------------------------------------------------------------------------


def serve(server: ModelServer, grace: float = 10.0, exit_process: bool = False) -> int:
    """Starts `server` and blocks until SIGTERM or SIGINT, then stops it cleanly. Returns 0.

    `exit_process=True` (the command line's) ends the process once the server has stopped,
    skipping the interpreter's slow teardown of the loaded models, which overran `--grace`
    (benchmarks/hostile.py); every request was answered and every port closed by then."""
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
    if exit_process:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
