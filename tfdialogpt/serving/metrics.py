"""The model server's Prometheus metrics, served on the REST port at `/monitoring/prometheus/metrics`
(TF Serving's path), through `prometheus_client` with one registry per server.

- `tfdialogpt_requests_total{model, signature, api, entrypoint, status}`: requests answered,
  `status` the gRPC status code's name (`OK`, `INVALID_ARGUMENT`, ...);
- `tfdialogpt_request_latency_seconds{model, signature, api, entrypoint}`: a histogram of the
  time from a request's arrival to its answer;
- `tfdialogpt_batch_rows{model, signature}`: a histogram of the rows in each run of a signature
  (merged requests count together);
- `tfdialogpt_model_version_available{model, version}`: 1 for each version being served.

Labels take only names the server knows (its models, their signatures): a request naming
anything else is counted under `model="<unknown>"` or `signature="<unknown>"`, so hostile names
cannot grow the registry.

Example:
    >>> metrics = ServerMetrics(lambda: {})
    >>> metrics.record("predict", "grpc", "dialogpt", "chat", "OK", 0.25)
    >>> b'tfdialogpt_requests_total{api="predict"' in metrics.exposition()
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

PATH = "/monitoring/prometheus/metrics"
UNKNOWN = "<unknown>"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, float("inf"))


class _Versions:
    """Collects the available versions of each model at scrape time (no state to go stale)."""

    def __init__(self, models: Callable[[], Mapping]):
        self._models = models

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "tfdialogpt_model_version_available", "1 for each model version being served", labels=["model", "version"]
        )
        for name, model in sorted(self._models().items()):
            for version in model.available_versions():
                family.add_metric([name, str(version)], 1.0)
        yield family


class ServerMetrics:
    """The metrics of one model server.

    Args:
        models: returns the server's models by name (`ModelVersions`, each with
            `available_versions()` and, once loaded, signature names via `known_signatures`).
    """

    def __init__(self, models: Callable[[], Mapping]):
        from prometheus_client import CollectorRegistry, Counter, Histogram  # here: the CLI starts without it

        self._models = models
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "tfdialogpt_requests",
            "Requests answered, by model, signature, API method, entry point and gRPC status code",
            ["model", "signature", "api", "entrypoint", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "tfdialogpt_request_latency_seconds",
            "Seconds from a request's arrival to its answer",
            ["model", "signature", "api", "entrypoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._rows = Histogram(
            "tfdialogpt_batch_rows",
            "Rows in each run of a signature (merged requests together)",
            ["model", "signature"],
            buckets=_ROW_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Versions(models))

    def _labels(self, model: str, signature: str) -> tuple[str, str]:
        versions = self._models().get(model)
        if versions is None:
            return UNKNOWN, UNKNOWN if signature else ""
        if signature and signature not in versions.known_signatures():
            return model, UNKNOWN
        return model, signature

    def record(self, api: str, entrypoint: str, model: str, signature: str, status: str, seconds: float) -> None:
        """One answered request (`status` e.g. "OK" or "INVALID_ARGUMENT")."""
        model, signature = self._labels(model, signature)
        self._requests.labels(model, signature, api, entrypoint, status).inc()
        self._latency.labels(model, signature, api, entrypoint).observe(seconds)

    def record_run(self, model: str, signature: str, rows: int) -> None:
        """One run of a signature on `rows` rows."""
        self._rows.labels(*self._labels(model, signature)).observe(rows)

    def exposition(self) -> bytes:
        """The text exposition format of every metric."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
