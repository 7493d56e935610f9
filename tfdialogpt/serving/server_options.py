"""The model server's command line: options, TF Serving's config files, the entry point.

`python -m tfdialogpt.serving.server` and `tfdialogpt serve` share `add_arguments`; both
accept TF Serving's own files, so a deployment's `models.config` and batching parameters run
here unchanged: `--model-config-file` (`read_model_config`) and `--batching-parameters-file`
(`read_batching_parameters`).

Example:
    $ python -m tfdialogpt.serving.server --model-base-path /models/dialogpt --port 8500
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tfdialogpt.serving import rest_api
from tfdialogpt.serving.grpc_services import DEFAULT_PORT, ModelServer, serve
from tfdialogpt.serving.limits import RequestLimits
from tfdialogpt.serving.servables import ModelVersions
from tfdialogpt.serving.tls import read_ssl_config


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
            raise ValueError(
                f"{path}: model {entry.name!r} uses a 'specific' version policy; this server supports "
                "'latest' and 'all'"
            )
        num_versions = 1_000_000 if kind == "all" else (policy.latest.num_versions or 1)
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), entry.base_path)
        models.append(ModelVersions(entry.name, base_path, num_versions, warmup))
    if not models:
        raise ValueError(f"{path} lists no model (model_config_list {{ config {{ ... }} }})")
    return models


_BATCHING_KEYS = ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches")


def read_batching_parameters(path: str) -> dict:
    """The entries of a TF Serving batching parameters file (text `BatchingParameters`) we use:
    `name { value: N }` for the keys above, `allowed_batch_sizes: N` (repeated) and
    `pad_variable_length_inputs: false` (our prompts are left-padded: padding on the right, as
    TF Serving pads, would break them)."""
    import re

    with open(path, encoding="utf-8") as f:
        text = "\n".join(line.split("#", 1)[0] for line in f)
    values: dict = {}
    for key, body in re.findall(r"(\w+)\s*\{([^}]*)\}", text):
        number = re.fullmatch(r"\s*value\s*:\s*(\d+)\s*", body)
        if key not in _BATCHING_KEYS or number is None:
            raise ValueError(
                f"{path}: cannot use {key} {{{body.strip()}}}; expected one of {', '.join(_BATCHING_KEYS)} with a value"
            )
        values[key] = int(number.group(1))
    rest = re.sub(r"(\w+)\s*\{([^}]*)\}", " ", text)
    sizes = []
    for key, value in re.findall(r"(\w+)\s*:\s*(\S+)", rest):
        if key == "allowed_batch_sizes" and value.isdigit():
            sizes.append(int(value))
        elif key == "pad_variable_length_inputs" and value == "false":
            values[key] = False
        else:
            raise ValueError(
                f"{path}: cannot use {key}: {value}; expected allowed_batch_sizes: N or "
                "pad_variable_length_inputs: false"
            )
    if sizes:
        values["allowed_batch_sizes"] = tuple(sizes)
    return values


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m tfdialogpt.serving.server`."""
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
    parser.add_argument(
        "--batching-parameters-file", help="TF Serving batching parameters (overrides the batch options)"
    )
    parser.add_argument("--model-name", default="dialogpt", help="name clients put in model_spec.name")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (127.0.0.1 for local only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port; 0 picks a free one")
    parser.add_argument(
        "--rest-api-port",
        type=int,
        default=rest_api.DEFAULT_PORT,
        help="port of TF Serving's REST API and of the metrics (/monitoring/prometheus/metrics); 0 = off",
    )
    parser.add_argument(
        "--rest-api-timeout-ms",
        type=int,
        default=rest_api.DEFAULT_TIMEOUT_MS,
        help="deadline of each REST request in ms (0 = none)",
    )
    parser.add_argument(
        "--rest-api-num-threads", type=int, default=None, help="threads answering REST requests (default 4 per CPU)"
    )
    parser.add_argument(
        "--rest-api-max-body-bytes",
        type=int,
        default=rest_api.DEFAULT_MAX_BODY_BYTES,
        help="larger REST bodies are refused (413) unread",
    )
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between scans for new versions")
    parser.add_argument("--num-versions", type=int, default=1, help="newest versions served at once")
    parser.add_argument("--max-batch-size", type=int, default=8, help="rows merged into one run; 1 disables merging")
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0, help="how long a run waits for more requests")
    parser.add_argument("--num-batch-threads", type=int, default=2, help="runs executed in parallel")
    parser.add_argument("--max-queued", type=int, default=1024, help="queued requests before RESOURCE_EXHAUSTED")
    parser.add_argument(
        "--max-rows-per-request",
        type=int,
        default=RequestLimits.max_rows,
        help="rows one request may send; more are refused (INVALID_ARGUMENT) before decoding",
    )
    parser.add_argument(
        "--max-values-per-input",
        type=int,
        default=RequestLimits.max_values,
        help="values one input tensor may declare; more are refused before decoding",
    )
    parser.add_argument(
        "--max-cache-mb-per-request",
        type=float,
        default=RequestLimits.max_cache_mb,
        help="MiB of KV cache one request may need (rows x (padded prompt + max_new_tokens) x the model's bytes "
        "a position), at least one full-length row; more are refused (INVALID_ARGUMENT) before queueing",
    )
    parser.add_argument(
        "--ssl-config-file",
        help="TLS for the gRPC port: TF Serving's SSLConfig text proto (server_key, server_cert, custom_ca, "
        "client_verify); the REST port stays plain, as in TF Serving",
    )
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests get on shutdown")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warmup records")


def server_from_args(args: argparse.Namespace) -> ModelServer:
    """A `ModelServer` (not started) from parsed `add_arguments` options.

    A batching parameters file overrides the batch options; the model config file's models
    are served beside `--model-base-path`'s.
    """
    if (args.model_base_path is None) == (args.model_config_file is None):
        raise ValueError("give exactly one of --model-base-path and --model-config-file")
    if args.batching_parameters_file:
        batching = read_batching_parameters(args.batching_parameters_file)
        args.max_batch_size = batching.get("max_batch_size", args.max_batch_size)
        args.batch_timeout_ms = batching.get("batch_timeout_micros", args.batch_timeout_ms * 1000) / 1000.0
        args.num_batch_threads = batching.get("num_batch_threads", args.num_batch_threads)
        if "max_enqueued_batches" in batching:
            args.max_queued = batching["max_enqueued_batches"] * args.max_batch_size
        allowed_batch_sizes = batching.get("allowed_batch_sizes", ())
    else:
        allowed_batch_sizes = ()
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
        allowed_batch_sizes=allowed_batch_sizes,
        warmup=not args.no_warmup,
        models=models,
        request_limits=RequestLimits(
            args.max_rows_per_request, args.max_values_per_input, args.max_cache_mb_per_request
        ),
        ssl_config=read_ssl_config(args.ssl_config_file) if args.ssl_config_file else None,
        rest_port=args.rest_api_port or None,
        rest_options=dict(
            timeout_ms=args.rest_api_timeout_ms,
            max_body_bytes=args.rest_api_max_body_bytes,
            num_threads=args.rest_api_num_threads,
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parses `argv`, then serves until SIGTERM or SIGINT (see `serve`); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.model_base_path is None) == (args.model_config_file is None):
        parser.error("give exactly one of --model-base-path and --model-config-file")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return serve(server_from_args(args), grace=args.grace, exit_process=True)
