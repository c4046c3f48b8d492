"""What `GET /metrics` exposes, in Prometheus' text format, per priority class where it applies.

Latencies are the server's own view: from the moment a request was received to its first and
last token. Gauges are the engine's state, refreshed by the engine thread as it changes. Names
follow vLLM's (`vllm:time_to_first_token_seconds` is `qllm:time_to_first_token_seconds`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qllm.events import EngineStats
from qllm.request import PRIORITY_CLASSES

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
PREFIX = "qllm:"
STATS_GAUGES = {  # qllm.events.EngineStats field -> (metric name, description)
    "num_running_batches": ("num_running_batches", "Batches in a forward pass (0 or 1)."),
    "num_suspended_batches": ("num_suspended_batches", "Batches preempted mid forward pass."),
    "kv_allocated_bytes": ("kv_cache_allocated_bytes", "KV cache blocks held by sequences."),
    "kv_reserved_bytes": ("kv_cache_reserved_bytes", "KV cache the admitted sequences may grow to."),
    "suspended_bytes": ("suspended_pass_bytes", "Tensors kept by preempted forward passes."),
}


class ServerMetrics:
    """One registry per server, so several servers (tests) never share a counter."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        by_class = ["priority_class"]

        def metric(kind, name: str, description: str, labels=(), **kwargs):
            return kind(PREFIX + name, description, list(labels), registry=self.registry, **kwargs)

        self.ttft = metric(Histogram, "time_to_first_token_seconds", "Time from receipt to the first token.",
                           by_class, buckets=LATENCY_BUCKETS_S)  # fmt: skip
        self.e2e = metric(Histogram, "e2e_request_latency_seconds", "Time from receipt to the last token.",
                          by_class, buckets=LATENCY_BUCKETS_S)  # fmt: skip
        self.requests = metric(Counter, "requests", "Requests that ended, by status: finished, stopped "
                               "(end-of-sequence token), aborted (client gone), rejected, failed.",
                               [*by_class, "status"])  # fmt: skip
        self.generation_tokens = metric(Counter, "generation_tokens", "Tokens the engine generated, for any request.")
        self.preemptions = metric(Counter, "preemptions", "Sequences whose work was set aside.", by_class)
        self.waiting_requests = metric(Gauge, "num_requests_waiting", "Requests waiting for memory or a batch.", by_class)
        # One gauge per EngineStats field the server shows: field -> (metric name, description).
        self.gauges = {field: metric(Gauge, name, description) for field, (name, description) in STATS_GAUGES.items()}
        for priority_class in PRIORITY_CLASSES:  # every series exists from the start, at 0
            self.waiting_requests.labels(priority_class).set(0)
            self.preemptions.labels(priority_class)

    def observe(self, stats: EngineStats) -> None:
        """Refresh the gauges from the engine's stats (on the engine thread, between steps)."""
        for priority_class, count in stats.num_waiting_by_class.items():
            self.waiting_requests.labels(priority_class).set(count)
        for field, gauge in self.gauges.items():
            gauge.set(getattr(stats, field))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
