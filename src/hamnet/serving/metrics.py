"""The serving app's Prometheus metrics: requests, latency, batch sizes, errors, model versions."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hamnet.serving.models import ModelInfo

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The app's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hamnet_requests", "Prediction requests by arm and HTTP status.",
            ["arm", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "hamnet_request_latency_seconds", "Time from arrival to response of /predict.",
            ["arm"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "hamnet_batch_size", "Rows per inference call (after dynamic batching).",
            ["arm"], buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "hamnet_errors", "Failed requests by arm and kind (validation, inference).",
            ["arm", "kind"], registry=self.registry,
        )  # fmt: skip
        self.samples = Counter(
            "hamnet_samples", "Samples predicted.", ["arm"], registry=self.registry
        )
        self.model = Gauge(
            "hamnet_model_info", "The model version each arm serves (value 1).",
            ["arm", "name", "version", "runtime"], registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter(
            "hamnet_reloads", "Times an arm switched to a new model version.", ["arm"],
            registry=self.registry,
        )  # fmt: skip

    def set_model(self, arm: str, info: ModelInfo, previous: ModelInfo | None = None) -> None:
        """Point the ``hamnet_model_info`` gauge of ``arm`` at ``info``."""
        if previous is not None:
            with contextlib.suppress(KeyError):
                self.model.remove(arm, previous.name, previous.version, previous.runtime)
        self.model.labels(arm, info.name, info.version, info.runtime).set(1)

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))
