"""The front's metrics: each model's state and engine counters, and the requests passed on."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cairn.inference.front import Inference
from cairn.inference.types import EngineStats, ModelState


class InferenceCollector(Collector):
    """Reads the front's models at scrape time."""

    def __init__(self, inference: Inference) -> None:
        self.inference = inference

    def collect(self) -> Iterator[Metric]:
        """Per model: its state, load time and engine counters; then the forwarded requests."""
        state = GaugeMetricFamily(
            "cairn_model_state", "1 for the model's current state.", labels=["model", "state"]
        )
        stats: list[tuple[GaugeMetricFamily, Callable[[EngineStats], float | None]]] = [
            (
                GaugeMetricFamily(
                    "cairn_model_queue_depth", "Requests waiting for a slot.", labels=["model"]
                ),
                lambda s: s.queued,
            ),
            (
                GaugeMetricFamily(
                    "cairn_model_active_slots", "Slots decoding a request.", labels=["model"]
                ),
                lambda s: s.active,
            ),
            (
                GaugeMetricFamily("cairn_model_slots", "Slots configured.", labels=["model"]),
                lambda s: s.slots,
            ),
            (
                GaugeMetricFamily(
                    "cairn_model_tokens_per_second", "Recent generation rate.", labels=["model"]
                ),
                lambda s: s.tokens_per_second,
            ),
        ]
        # Prompt tokens in all, and those taken from a slot's KV cache instead of decoded.
        counters: list[tuple[CounterMetricFamily, Callable[[EngineStats], float | None]]] = [
            (
                CounterMetricFamily(
                    "cairn_model_prompt_tokens", "Prompt tokens of requests.", labels=["model"]
                ),
                lambda s: s.prompt_tokens_total,
            ),
            (
                CounterMetricFamily(
                    "cairn_model_cached_prompt_tokens",
                    "Prompt tokens reused from the KV cache, not decoded again.",
                    labels=["model"],
                ),
                lambda s: s.cached_tokens_total,
            ),
        ]
        load = GaugeMetricFamily(
            "cairn_model_load_seconds",
            "How long the worker took to load its model.",
            labels=["model"],
        )
        for name, m in self.inference.view().items():
            for st in ModelState:
                state.add_metric([name, st], 1.0 if m.state is st else 0.0)
            for fam, read in stats:
                if (value := read(m.stats)) is not None:
                    fam.add_metric([name], float(value))
            for counter, read in counters:
                if (value := read(m.stats)) is not None:
                    counter.add_metric([name], float(value))
            if m.load_seconds is not None:
                load.add_metric([name], m.load_seconds)
        yield state
        yield load
        yield from (fam for fam, _ in stats)
        yield from (fam for fam, _ in counters)
        fwd = CounterMetricFamily(
            "cairn_requests_forwarded", "Requests this node passed on to a peer's front."
        )
        fwd.add_metric([], self.inference.forwarded)
        yield fwd
