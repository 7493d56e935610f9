"""Serving: SavedModel export in TF Serving's layout, a gRPC server with TF Serving's API, a client.

    >>> from tfdialogpt.serving import Client
    >>> Client("localhost:8500", "dialogpt").generate([[15496, 50256]])  # doctest: +SKIP

Names are imported lazily: `Client` needs neither TensorFlow nor a model, while `ModelServer`
loads TensorFlow. The exporter is `tfdialogpt.serving.export.export` (the submodule `export`
has the function's name, so it is not re-exported here).
"""

from __future__ import annotations

from tfdialogpt._lazy import lazy_names

_PUBLIC = {
    "Client": "tfdialogpt.serving.client",
    "Generation": "tfdialogpt.serving.client",
    "Scores": "tfdialogpt.serving.client",
    "ModelSpec": "tfdialogpt.serving.client",
    "ServingError": "tfdialogpt.serving.errors",
    "InvalidRequestError": "tfdialogpt.serving.errors",
    "ModelNotFoundError": "tfdialogpt.serving.errors",
    "ServerUnavailableError": "tfdialogpt.serving.errors",
    "ResourceExhaustedError": "tfdialogpt.serving.errors",
    "ServingTimeoutError": "tfdialogpt.serving.errors",
    "ModelServer": "tfdialogpt.serving.grpc_services",
}

__all__ = sorted(_PUBLIC)


__getattr__, __dir__ = lazy_names(__name__, globals(), _PUBLIC)
