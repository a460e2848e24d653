"""Prometheus metrics for GET /metrics, under vLLM's names with an `llmcore:` prefix.

Engine-wide gauges and counters are read from LLMEngine.get_stats() at scrape time, so they are
exactly the engine's own counts (no second bookkeeping that could drift). Per-request latency
histograms and finished-request counts are observed by the server when a request finishes, from
RequestOutput.metrics (wall-clock seconds since the epoch). Each app owns its CollectorRegistry,
so several servers can live in one process.
"""

from __future__ import annotations

from typing import Iterable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..outputs import RequestOutput

PREFIX = "llmcore:"

# Seconds; the buckets vLLM uses for the same histograms.
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0)
_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class _EngineStatsCollector(Collector):
    """Gauges and counters straight from the engine's counters at each scrape."""

    def __init__(self, engine, model_name: str) -> None:
        self._engine = engine
        self._model_name = model_name

    def collect(self) -> Iterable[Metric]:
        s = self._engine.get_stats()
        labels = ["model_name"]
        values = [self._model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
            g.add_metric(values, float(value))
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            # CounterMetricFamily appends the `_total` suffix on exposition.
            c = CounterMetricFamily(PREFIX + name, doc, labels=labels)
            c.add_metric(values, float(value))
            return c

        yield gauge("num_requests_running", "Number of requests in model execution batches.", s["num_running"])
        yield gauge("num_requests_waiting", "Number of requests waiting to be processed.", s["num_waiting"])
        yield gauge("kv_cache_usage_perc", "KV-cache usage: 1 means 100 percent of the blocks are in use.",
                    s["kv_cache_usage"])
        yield counter("num_preemptions", "Cumulative number of preemptions by the engine.", s["num_preemptions"])
        yield counter("prefix_cache_queries", "Prefix-cache queries, in tokens.", s["prefix_cache_queries"])
        yield counter("prefix_cache_hits", "Prefix-cache hits, in tokens.", s["prefix_cache_hits"])
        yield counter("prompt_tokens", "Number of prefill tokens processed.", s["num_prompt_tokens"])
        yield counter("generation_tokens", "Number of generation tokens processed.", s["num_generation_tokens"])


class ServerMetrics:
    """The /metrics registry of one app."""

    def __init__(self, engine, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineStatsCollector(engine, model_name))
        labels = ["model_name"]
        self._model_name = model_name
        self.request_success = Counter(
            PREFIX + "request_success", "Count of successfully finished sequences, by finish reason.",
            labelnames=labels + ["finished_reason"], registry=self.registry)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Time to first token, per request.",
                              labelnames=labels, buckets=_TTFT_BUCKETS, registry=self.registry)
        self.tpot = Histogram(PREFIX + "time_per_output_token_seconds",
                              "Mean time per output token after the first, per request with 2+ tokens.",
                              labelnames=labels, buckets=_TPOT_BUCKETS, registry=self.registry)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds", "End-to-end request latency.",
                             labelnames=labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_time = Histogram(PREFIX + "request_queue_time_seconds",
                                    "Time from arrival to first scheduling, per request.",
                                    labelnames=labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        # Series exist (at 0) from the start, as vLLM's do, so dashboards see them before traffic.
        for h in (self.ttft, self.tpot, self.e2e, self.queue_time):
            h.labels(model_name)
        for reason in ("stop", "length"):
            self.request_success.labels(model_name, reason)

    def observe_finished(self, out: RequestOutput) -> None:
        """Records one finished engine request (each of its n sequences counts once by reason)."""
        for o in out.outputs:
            if o.finish_reason is not None:
                self.request_success.labels(self._model_name, o.finish_reason).inc()
        m = out.metrics
        if m is None:
            return
        arrival = m.arrival_time
        if m.first_scheduled_time is not None:
            self.queue_time.labels(self._model_name).observe(max(m.first_scheduled_time - arrival, 0.0))
        if m.first_token_time is not None:
            self.ttft.labels(self._model_name).observe(max(m.first_token_time - arrival, 0.0))
        if m.finished_time is not None:
            self.e2e.labels(self._model_name).observe(max(m.finished_time - arrival, 0.0))
        longest = max((len(o.token_ids) for o in out.outputs), default=0)
        end: Optional[float] = m.finished_time if m.finished_time is not None else m.last_token_time
        if longest >= 2 and m.first_token_time is not None and end is not None:
            self.tpot.labels(self._model_name).observe(max(end - m.first_token_time, 0.0) / (longest - 1))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    content_type = CONTENT_TYPE_LATEST
