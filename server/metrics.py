"""Prometheus metrics of one app instance (its own registry: several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Per-task request counts and latency, per-stage time (decode, detector, trunk, head), cache hits."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "twelve_requests",
            "HTTP requests by route, task and status",
            ["route", "task", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "twelve_request_seconds",
            "HTTP request latency by route and task",
            ["route", "task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "twelve_stage_seconds",
            "time per pipeline stage: decode, detector, trunk, head",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "twelve_region_cache", "region-feature lookups by result", ["result"], registry=r
        )
        self.rejected = Counter("twelve_rejected", "requests refused before running", ["reason"], registry=r)
        self.in_flight = Gauge("twelve_in_flight", "requests admitted and not finished", registry=r)

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage).observe(time.perf_counter() - start)

    def render(self) -> bytes:
        return generate_latest(self.registry)
