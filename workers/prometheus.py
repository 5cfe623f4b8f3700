"""`athena-inference exporter`: our own figures in Prometheus' format.

Flower exports Celery's view (tasks by state, worker liveness). This adds what
only we know, read from the shared metrics store and the broker at each
scrape: per-kind latency histograms, calls and tokens, mean tokens/s, each
kind's own totals (compression's tokens and money saved), and queue depths.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

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
