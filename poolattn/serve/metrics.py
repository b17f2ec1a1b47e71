"""Prometheus metrics of the server, in a registry of its own (so several apps in one process do not clash)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("poolattn_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("poolattn_request_seconds", "request latency, received to answered",
                                         ["route"], buckets=_LATENCY, registry=r)
        self.queue_seconds = Histogram("poolattn_queue_seconds", "time an input waited before its batch started",
                                       buckets=_LATENCY, registry=r)
        self.batch_seconds = Histogram("poolattn_batch_seconds", "time to encode one batch", buckets=_LATENCY,
                                       registry=r)
        self.batch_size = Histogram("poolattn_batch_size", "inputs per encoded batch", buckets=_SIZES, registry=r)
        self.batch_padded_tokens = Histogram("poolattn_batch_padded_tokens", "inputs x longest input per batch",
                                             buckets=_TOKENS, registry=r)
        self.tokens = Counter("poolattn_tokens", "tokens encoded (no padding)", registry=r)
        self.inputs = Counter("poolattn_inputs", "inputs encoded", registry=r)
        self.queue_depth = Gauge("poolattn_queue_depth", "inputs waiting or being encoded", registry=r)

    def observe_batch(self, *, batch: int, padded: int, tokens: int, queue_s: list[float], seconds: float) -> None:
        self.batch_size.observe(batch)
        self.batch_padded_tokens.observe(padded)
        self.batch_seconds.observe(seconds)
        self.tokens.inc(tokens)
        self.inputs.inc(batch)
        for q in queue_s:
            self.queue_seconds.observe(q)
