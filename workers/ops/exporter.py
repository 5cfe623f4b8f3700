"""`athena-inference exporter`: our own figures in Prometheus' format.

Flower exports Celery's view (tasks by state, worker liveness). This adds what
only we know, read from the shared metrics store and the broker at each
scrape: per-kind latency histograms, calls and tokens, mean tokens/s, each
kind's own totals (compression's tokens and money saved), and queue depths.
"""

from __future__ import annotations

import math
import re
import time
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from athena_inference.config.registry import LANES
from athena_inference.config.settings import Settings
from athena_inference.workers.broker import queue_depth
from athena_inference.workers.metrics import MetricsStore


def _metric_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


class AthenaCollector(Collector):
    def __init__(self, metrics: MetricsStore, queue_depths: Callable[[], dict[str, int]]) -> None:
        self.metrics = metrics
        self.queue_depths = queue_depths

    def collect(self) -> Iterator:
        latency = HistogramMetricFamily(
            "athena_task_latency_seconds", "Run time of successful tasks, per task name", labels=["kind"]
        )
        calls = CounterMetricFamily("athena_task_calls", "Tasks finished, per task name and outcome", labels=["kind", "outcome"])
        tokens = CounterMetricFamily("athena_task_tokens", "Prompt plus generated tokens, per task name", labels=["kind"])
        speed = GaugeMetricFamily(
            "athena_task_tokens_per_second", "Mean tokens/s over the metrics window, per task name", labels=["kind"]
        )
        totals: dict[str, CounterMetricFamily] = {}
        for kind in self.metrics.kinds():
            stats = self.metrics.stats(kind)
            hist = self.metrics.histogram(kind)
            buckets = [("+Inf" if math.isinf(le) else f"{le / 1000:g}", count) for le, count in hist.buckets]
            latency.add_metric([kind], buckets, hist.sum_ms / 1000)
            calls.add_metric([kind, "success"], stats.success)
            calls.add_metric([kind, "failure"], stats.failures)
            tokens.add_metric([kind], stats.tokens)
            if stats.tokens_per_second is not None:
                speed.add_metric([kind], stats.tokens_per_second)
            for name, value in stats.totals.items():
                family = totals.setdefault(
                    name, CounterMetricFamily(f"athena_{_metric_name(name)}", f"Sum of {name}, per task name", labels=["kind"])
                )
                family.add_metric([kind], value)
        yield from (latency, calls, tokens, speed, *totals.values())
        depth = GaugeMetricFamily("athena_queue_depth", "Messages waiting in each queue", labels=["queue"])
        for queue, waiting in self.queue_depths().items():
            depth.add_metric([queue], waiting)
        yield depth


def serve_exporter(settings: Settings) -> None:
    """Serve /metrics until killed."""
    from athena_inference.config.celery import app

    connection = app.connection_for_read()
    registry = CollectorRegistry()
    registry.register(
        AthenaCollector(
            MetricsStore.from_url(settings.metrics_redis_url, window=settings.metrics_window),
            lambda: {row.queue.value: queue_depth(connection, row.queue.value) for row in LANES},
        )
    )
    start_http_server(settings.exporter_port, settings.exporter_address, registry=registry)
    print(f"athena exporter: http://{settings.exporter_address}:{settings.exporter_port}/metrics", flush=True)
    while True:
        time.sleep(3600)
