"""Prometheus metrics of one app, in its own :class:`~prometheus_client.CollectorRegistry`.

Served at ``GET /metrics`` in the Prometheus text format. The ``model`` label only takes the served
model ids (or ``-`` when a request named none that is served), so its cardinality is bounded.

Example:
    >>> m = ServeMetrics()
    >>> m.requests.labels(model="M:coca", status="200").inc()
    >>> b"vlmshield_requests_total" in m.render()
    True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """Every metric the server exports (names start with ``vlmshield_``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "vlmshield_requests",
            "Chat completion requests by model id and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.errors = Counter(
            "vlmshield_errors", "Error responses by model id and error code.", ["model", "code"], registry=r
        )
        self.latency = Histogram(
            "vlmshield_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ["model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "vlmshield_time_to_first_token_seconds",
            "Streaming requests: time from request to the first text.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vlmshield_queue_wait_seconds",
            "Time a request waited for its batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("vlmshield_queue_depth", "Requests waiting for a batch.", registry=r)
        self.in_flight = Gauge("vlmshield_batch_in_flight", "Requests in the running batch.", registry=r)
        self.batch_size = Histogram(
            "vlmshield_batch_size",
            "Requests per generate batch.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "vlmshield_batch_duration_seconds",
            "Wall time of one batch (the defense's whole generate).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vlmshield_prompt_tokens", "Prompt tokens of answered requests.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "vlmshield_completion_tokens", "Tokens of returned answers.", ["model"], registry=r
        )
        self.flagged = Counter(
            "vlmshield_defense_flagged",
            "Answers a defense's check flagged (ECSO's flag).",
            ["model"],
            registry=r,
        )
        self.disconnects = Counter(
            "vlmshield_client_disconnects", "Clients that left before their answer.", ["model"], registry=r
        )
        self.aborted_batches = Counter(
            "vlmshield_aborted_batches",
            "Batches stopped early because every request in them was cancelled.",
            ["model"],
            registry=r,
        )
        self.stream_mismatches = Counter(
            "vlmshield_stream_mismatches",
            "Streams whose sent text was not a prefix of the final answer (should stay 0).",
            ["model"],
            registry=r,
        )

    def set_queue(self, depth: int, in_flight: int) -> None:
        self.queue_depth.set(depth)
        self.in_flight.set(in_flight)

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model=model).observe(size)
        self.batch_duration.labels(model=model).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
