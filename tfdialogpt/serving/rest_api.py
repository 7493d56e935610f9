"""TF Serving's REST API for `ModelServer`, on `aiohttp`, plus its Prometheus metrics page.

Routes, as TF Serving's `http_rest_api_handler` parses them (paths match case-insensitively):
- `POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`: the body is TF Serving's JSON
  (`rest_json.py`: `instances` -> `predictions`, or `inputs` -> `outputs`);
- `GET /v1/models/{name}[/versions/{v}|/labels/{l}]`: `GetModelStatusResponse` as JSON;
- `GET /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata`: the signatures, as JSON;
- `GET /monitoring/prometheus/metrics`: the server's metrics (`metrics.py`).

A request runs exactly as over gRPC (`ModelServer.predict_arrays`: the same checks, batching,
deadline). Every failure answers `{"error": "..."}` with TF Serving's HTTP status for its gRPC
code (400 INVALID_ARGUMENT, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504
DEADLINE_EXCEEDED, ...); a body over `max_body_bytes` answers 413 before it is parsed. A client
that disconnects cancels its request if it has not started running. The HTTP server runs on
its own event loop thread; the JSON work and the waits run on a thread pool. `aiohttp` is
imported when the server starts, not with this module.

Example:
    >>> rest = RestServer(model_server, host="127.0.0.1", port=0).start()  # doctest: +SKIP
    >>> rest.port, rest.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import re
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

import grpc

from tfdialogpt.serving import metrics as metrics_page
from tfdialogpt.serving import rest_json
from tfdialogpt.serving import signatures as contract
from tfdialogpt.serving.errors import InvalidRequestError, ServingError

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("tfdialogpt.serving")

DEFAULT_PORT = 8501
DEFAULT_TIMEOUT_MS = 30_000  # TF Serving's --rest_api_timeout_in_ms
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # the worst such JSON (700k one-string rows) parses to +70 MB

_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)", re.I)
_MODEL = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.I)

# TF Serving's HTTP status for each gRPC code (model_servers/http_server.cc, ToHTTPStatusCode).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class _Call:
    """What `ModelServer.predict_arrays` needs of a call (as of a gRPC context): the time left
    before the deadline, and callbacks run when the call ends or its client goes away."""

    def __init__(self, timeout: float | None):
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._callbacks: list = []
        self._lock = threading.Lock()
        self._ended = False

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def add_callback(self, callback) -> bool:
        with self._lock:
            if self._ended:
                return False
            self._callbacks.append(callback)
            return True

    def end(self) -> None:
        with self._lock:
            self._ended, callbacks, self._callbacks = True, self._callbacks, []
        for callback in callbacks:
            callback()


class _Answer:
    def __init__(self, status: int, body: bytes, content_type: str = "application/json"):
        self.status, self.body, self.content_type = status, body, content_type


def _json_answer(status: int, value) -> _Answer:
    return _Answer(status, json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8") + b"\n")


def _error(code: grpc.StatusCode, message: str) -> _Answer:
    return _json_answer(HTTP_STATUS.get(code, 500), {"error": message})


class RestServer:
    """TF Serving's REST API over a `ModelServer`'s models.

    Args:
        server: the `grpc_services.ModelServer` whose models, batcher and metrics requests use
            (its `acquire`, `predict_arrays`, `metadata_of`, `status_of` and `metrics`).
        host, port: where to listen; port 0 picks a free one (see `.port` after `start()`).
            The port is bound exclusively: a second server on it fails to start.
        timeout_ms: each request's deadline (TF Serving's `--rest_api_timeout_in_ms`); 0 = none.
        max_body_bytes: larger bodies are refused (413) before they are read whole.
        num_threads: threads for the JSON work and the waits (TF Serving's
            `--rest_api_num_threads`, default 4 per CPU).
    """

    def __init__(
        self,
        server,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        num_threads: int | None = None,
    ):
        self.server, self.host, self.port = server, host, port
        self.timeout = timeout_ms / 1000.0 if timeout_ms > 0 else None
        self.max_body_bytes = max_body_bytes
        self._executor = concurrent.futures.ThreadPoolExecutor(
            num_threads or 4 * (os.cpu_count() or 1), thread_name_prefix="rest"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    def start(self) -> RestServer:
        """Listens. Returns self.

        Raises:
            ServingError: the port is taken (by any process: it is bound exclusively) or invalid.
        """
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest-loop", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(30)
        except BaseException as err:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop = None
            if isinstance(err, OSError):
                raise ServingError(
                    f"cannot listen on {self.host}:{self.port} (REST API): {err.strerror or err}"
                ) from None
            raise
        log.info("REST API on %s:%d", self.host, self.port)
        return self

    async def _listen(self) -> None:
        from aiohttp import web  # here, not at import: the command line starts without it

        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_port=False)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the bound port, when 0 was asked

    def stop(self, grace: float = 10.0) -> None:
        """Stops listening; requests in flight get up to `grace` seconds."""
        if self._loop is None:
            return
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                future.result(grace + 5)
            except Exception:  # a slow or failed cleanup must not stop the shutdown
                log.warning("REST API cleanup did not finish cleanly")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._loop = None

    # ---- requests ----
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        started = time.perf_counter()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            answer = _json_answer(413, {"error": f"the request body exceeds {self.max_body_bytes} bytes"})
            return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)
        call = _Call(self.timeout)
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, self._answer, request.method, request.path, body, call, started
        )
        try:
            answer = await work
        finally:
            call.end()  # a client that left cancels its queued request
        return web.Response(body=answer.body, status=answer.status, content_type=answer.content_type)

    def _answer(self, method: str, path: str, body: bytes, call: _Call, started: float) -> _Answer:
        """Routes one request and answers it; never raises."""
        if method == "GET" and path == metrics_page.PATH:
            return _Answer(200, self.server.metrics.exposition(), "text/plain")
        api, model, signature, code = "unknown", "", "", grpc.StatusCode.OK
        try:
            answer = None
            predict = _PREDICT.fullmatch(path) if method == "POST" else None
            status = _MODEL.fullmatch(path) if method == "GET" else None
            if predict:
                name, version, label, verb = predict.groups()
                api = verb.lower()
                if api != "predict":
                    raise ServingError(
                        f"{api} is not served: these models have no {api} signature; use :predict",
                        grpc.StatusCode.UNIMPLEMENTED,
                    )
                model = unquote(name)
                signature, answer = self._predict(model, _version(version), label and unquote(label), body, call)
            elif status and status.group(1):
                name, version, label, subresource = status.groups()
                model, api = unquote(name), "metadata" if subresource else "status"
                spec = _model_spec(model, _version(version), label and unquote(label))
                response = self.server.metadata_of(spec) if subresource else self.server.status_of(spec)
                answer = _Answer(200, _proto_json(response, metadata=bool(subresource)))
            elif path.lower().startswith("/v1/"):
                raise InvalidRequestError(f"Malformed request: {method} {path}")
            else:
                raise ServingError(
                    f"no such path: {method} {path} (the REST API is under /v1/models/, metrics at "
                    f"{metrics_page.PATH})",
                    grpc.StatusCode.NOT_FOUND,
                )
            return answer
        except ServingError as err:
            code = err.code
            return _error(err.code, err.details)
        except rest_json.RestFormatError as err:
            code = grpc.StatusCode.INVALID_ARGUMENT
            return _error(code, str(err))
        except concurrent.futures.CancelledError:
            code = grpc.StatusCode.CANCELLED
            return _error(code, "the request was cancelled")
        except Exception as err:  # a bug must cost one request, not the server
            log.exception("REST %s %s failed", method, path)
            code = grpc.StatusCode.INTERNAL
            return _error(code, f"{type(err).__name__}: {err}")
        finally:
            if api != "unknown":
                self.server.metrics.record(api, "rest", model, signature, code.name, time.perf_counter() - started)

    def _predict(self, model: str, version, label, body: bytes, call: _Call) -> tuple[str, _Answer]:
        spec = _model_spec(model, version, label)
        servable = self.server.acquire(spec)
        try:

            def input_dtypes(name: str) -> dict[str, int]:
                name = name or contract.DEFAULT_SIGNATURE
                if name not in servable.signature_defs:
                    raise InvalidRequestError(f'Serving signature name: "{name}" not found in signature def')
                return {key: info.dtype for key, info in servable.signature_defs[name].inputs.items()}

            request = rest_json.parse_predict_request(body, input_dtypes, self.server.request_limits.check_shape)
            signature = request.signature_name or contract.DEFAULT_SIGNATURE
            outputs = self.server.predict_arrays(servable, signature, request.inputs, call)
        finally:
            servable.release()
        return signature, _json_answer(200, rest_json.format_predict_response(outputs, request.format))


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    if int(text) >= 2**63:
        raise InvalidRequestError(f"Failed to convert version: {text} to numeric.")
    return int(text)


def _model_spec(name: str, version: int | None, label: str | None):
    from tfdialogpt.serving.protos import apis

    spec = apis().model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    if label:
        spec.version_label = label
    return spec


def _proto_json(message, metadata: bool) -> bytes:
    """A response proto as TF Serving's REST API writes it (all fields, proto field names)."""
    from google.protobuf import json_format

    if not metadata:
        value = json_format.MessageToDict(
            message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        )
        return json.dumps(value, indent=1).encode() + b"\n"
    from tfdialogpt.serving.protos import apis

    signature_map = apis().get_model_metadata_pb2.SignatureDefMap()
    message.metadata["signature_def"].Unpack(signature_map)
    value = {
        "model_spec": json_format.MessageToDict(
            message.model_spec, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
        ),
        "metadata": {
            "signature_def": json_format.MessageToDict(
                signature_map, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
            )
        },
    }
    return json.dumps(value, indent=1).encode() + b"\n"
