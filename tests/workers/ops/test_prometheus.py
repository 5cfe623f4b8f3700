"""The exporter's figures, rendered by prometheus_client from a metrics store."""

from __future__ import annotations

import fakeredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from athena_inference.workers.metrics import MetricsStore
from athena_inference.workers.ops.exporter import AthenaCollector


def scrape(store: MetricsStore, depths: dict[str, int]) -> dict[str, dict]:
    registry = CollectorRegistry()
    registry.register(AthenaCollector(store, lambda: depths))
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_latency_histogram_counts_every_successful_call_in_its_bucket():
    store = MetricsStore(fakeredis.FakeRedis())
    for ms in (3, 20, 20, 700, 400_000):
        store.record("athena.embed", ok=True, latency_ms=ms, prompt_tokens=5, tokens_per_second=100.0)
    store.record("athena.embed", ok=False, latency_ms=1)
    out = scrape(store, {})
    buckets = out["athena_task_latency_seconds_bucket"]
    assert buckets[(("kind", "athena.embed"), ("le", "0.005"))] == 1
    assert buckets[(("kind", "athena.embed"), ("le", "0.025"))] == 3
    assert buckets[(("kind", "athena.embed"), ("le", "1"))] == 4
    assert buckets[(("kind", "athena.embed"), ("le", "+Inf"))] == 5
    assert out["athena_task_latency_seconds_count"][(("kind", "athena.embed"),)] == 5
    assert abs(out["athena_task_latency_seconds_sum"][(("kind", "athena.embed"),)] - 400.743) < 1e-6
    assert out["athena_task_calls_total"][(("kind", "athena.embed"), ("outcome", "failure"))] == 1
    assert out["athena_task_tokens_total"][(("kind", "athena.embed"),)] == 25
    assert out["athena_task_tokens_per_second"][(("kind", "athena.embed"),)] == 100.0


def test_compression_savings_and_queue_depths_are_exported():
    store = MetricsStore(fakeredis.FakeRedis())
    store.record("athena.compress_prompt", ok=True, latency_ms=900, totals={"tokens_saved": 120, "money_saved_usd": 0.00036})
    out = scrape(store, {"embeddings": 0, "reasoning": 7})
    assert out["athena_tokens_saved_total"][(("kind", "athena.compress_prompt"),)] == 120
    assert out["athena_money_saved_usd_total"][(("kind", "athena.compress_prompt"),)] == 0.00036
    assert out["athena_queue_depth"] == {(("queue", "embeddings"),): 0, (("queue", "reasoning"),): 7}
