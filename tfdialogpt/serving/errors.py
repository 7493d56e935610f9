"""The serving errors, one hierarchy for both sides of the wire; needs neither TensorFlow nor numpy.

Each class stands for gRPC status codes (`grpc.StatusCode`):
- on the server (`grpc_services`, `servables`, `batching`) a request that fails raises one,
  and the service answers with its `code` and `details`;
- on the client (`client.Client`) a failed call raises the class of the status it got
  (`ERROR_CLASSES`), with the server's message in `details`.

Example:
    >>> err = InvalidRequestError("input 'top_p' must be in (0, 1], got 1.5")
    >>> err.code.name, err.details
    ('INVALID_ARGUMENT', "input 'top_p' must be in (0, 1], got 1.5")
    >>> isinstance(err, ValueError)
    True
"""

from __future__ import annotations

import grpc


class ServingError(RuntimeError):
    """A call to the model server failed, or (on the server) a request cannot be answered.

    Args:
        message: what went wrong, for the reader of the exception.
        code: the gRPC status code; the class's own (`UNKNOWN` for this base class) if None.
        details: the message the server sends or sent; `message` itself if None.

    Attributes:
        code: the gRPC status code (`grpc.StatusCode`).
        details: the server's message.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None, details: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = message if details is None else details


class InvalidRequestError(ServingError, ValueError):
    """INVALID_ARGUMENT: the server refused the request (the message says what is wrong)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(ServingError, LookupError):
    """NOT_FOUND: no such model or version on the server."""

    code = grpc.StatusCode.NOT_FOUND


class ServerUnavailableError(ServingError, ConnectionError):
    """UNAVAILABLE / RESOURCE_EXHAUSTED: the server is not reachable or is shedding load."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhaustedError(ServerUnavailableError):
    """RESOURCE_EXHAUSTED: the server's request queue is full; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServingTimeoutError(ServingError, TimeoutError):
    """DEADLINE_EXCEEDED: no answer within the call's timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RequestCancelledError(ServingError):
    """CANCELLED: the request was stopped because its client went away or its deadline passed."""

    code = grpc.StatusCode.CANCELLED


# The class a client raises for each status code; codes not listed raise `ServingError`.
ERROR_CLASSES: dict[grpc.StatusCode, type[ServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServingTimeoutError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
}
