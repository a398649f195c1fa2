"""Prometheus metrics of one server (its own registry, so several apps in one process, as in
the tests, never share counters)."""

from __future__ import annotations

__all__ = ["Metrics"]


class Metrics:
    """Requests by endpoint and outcome, queue depth, rows per model call, generated tokens
    (a counter, and the tokens/s of the last text batch), request latency and model-call
    time."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("reverie_requests", "Requests by endpoint, model and outcome",
                                ["endpoint", "model", "status"], registry=r)
        self.queue_depth = Gauge("reverie_queue_depth", "Requests waiting for a model call",
                                 registry=r)
        self.batch_rows = Histogram("reverie_batch_rows", "Rows (samples) per model call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_requests = Histogram("reverie_batch_requests", "Requests per model call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.tokens = Counter("reverie_generated_tokens", "Completion tokens generated",
                              registry=r)
        self.tokens_per_second = Gauge("reverie_tokens_per_second",
                                       "Completion tokens per second of the last text batch",
                                       registry=r)
        self.latency = Histogram("reverie_request_latency_seconds",
                                 "Request latency, arrival to last byte", ["endpoint"],
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                                          60), registry=r)
        self.call_seconds = Histogram("reverie_model_call_seconds", "Time of one model call",
                                      buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                               10, 30), registry=r)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
