"""Prometheus metrics: the HTTP counters here; every part's own collector registered beside."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.registry import Collector

# `_created` series double every counter and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The registry served at /metrics; one per app, never the global default."""

    def __init__(self, version: str, collectors: Iterable[Collector]) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "cairn_http_requests",
            "HTTP requests answered.",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "cairn_http_request_duration_seconds",
            "HTTP request handling time.",
            ["route"],
            registry=self.registry,
        )
        self.model_requests = Counter(
            "cairn_model_requests",
            "Inference requests answered, by model.",
            ["model", "route", "code"],
            registry=self.registry,
        )
        # Whole-request time as the client sees it (a stream counts until its last byte).
        self.model_duration = Histogram(
            "cairn_model_request_duration_seconds",
            "Inference request time, by model.",
            ["model", "route"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        Info("cairn_build", "Supervisor build.", registry=self.registry).info({"version": version})
        ProcessCollector(namespace="cairn", registry=self.registry)
        for collector in collectors:  # each reads its part at scrape time
            self.registry.register(collector)
