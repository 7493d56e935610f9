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

import sys

from tfdialogpt.serving.batching import Batcher, batch_key
from tfdialogpt.serving.grpc_services import ModelServer, serve
from tfdialogpt.serving.servables import ModelVersions, Servable, ServingError
from tfdialogpt.serving.server_options import (
    add_arguments,
    build_parser,
    main,
    read_batching_parameters,
    read_model_config,
    server_from_args,
)

# The modules behind this one: servables (versions), batching, grpc_services, server_options.
__all__ = [
    "Batcher",
    "ModelServer",
    "ModelVersions",
    "Servable",
    "ServingError",
    "add_arguments",
    "batch_key",
    "build_parser",
    "main",
    "read_batching_parameters",
    "read_model_config",
    "serve",
    "server_from_args",
]

if __name__ == "__main__":
    sys.exit(main())
