"""`python -m tfdialogpt.serving.server`: the gRPC model server speaking TF Serving's API.

The server lives in smaller modules; this one keeps the entry point and the old import path:
- `servables.py`: the versions of a model (`Servable`, `ModelVersions`);
- `batching.py`: the request batcher (`Batcher`, `batch_key`);
- `grpc_services.py`: `ModelServer` (Predict, GetModelMetadata, GetModelStatus) and `serve`;
- `server_options.py`: the command line and TF Serving's config files (`main`);
- `errors.py`: `ServingError` and its subclasses, shared with the client.

Example:
    $ python -m tfdialogpt.serving.server --model-base-path /models/dialogpt --port 8500
"""

from __future__ import annotations

import sys

from tfdialogpt.serving.grpc_services import ModelServer, serve
from tfdialogpt.serving.server_options import main

__all__ = ["ModelServer", "main", "serve"]

if __name__ == "__main__":
    sys.exit(main())
