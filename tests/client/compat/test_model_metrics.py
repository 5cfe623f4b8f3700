"""Athena's performance monitor over the workers' shared metrics: Athena's keys, every
worker's calls, Athena's own records in every form it writes them, and a
clear_history that leaves the shared figures alone."""

from __future__ import annotations

import fakeredis
import pytest

from athena_client.compat.model_metrics import ModelPerformanceMonitor, ReasoningMetrics
from athena_inference.workers.metrics import MetricsStore

EMBEDDING_KEYS = {"total_operations", "successful", "failed", "success_rate", "avg_latency_ms", "min_latency_ms",
                  "max_latency_ms", "total_tokens_processed", "avg_dimension"}
REASONING_KEYS = {"total_operations", "successful", "failed", "success_rate", "avg_latency_ms", "min_latency_ms",
                  "max_latency_ms", "total_prompt_tokens", "total_output_tokens", "avg_output_tokens", "avg_tokens_per_sec"}
COMPRESSION_KEYS = {"total_operations", "successful", "failed", "success_rate", "avg_compression_ratio", "min_compression_ratio",
                    "max_compression_ratio", "avg_latency_ms", "total_tokens_saved", "avg_tokens_saved_per_operation"}


@pytest.fixture
def store():
    return MetricsStore(fakeredis.FakeRedis())


@pytest.fixture
def monitor(store):
    return ModelPerformanceMonitor(reader=store)


def worker_calls(store: MetricsStore) -> None:
    """What two worker processes record for a few calls."""
    store.record("athena.embed", ok=True, latency_ms=10.0, prompt_tokens=5, samples={"dimension": 384})
    store.record("athena.embed_batch", ok=True, latency_ms=30.0, prompt_tokens=40, samples={"dimension": 384})
    store.record("athena.embed", ok=False, latency_ms=1.0)
    store.record("athena.reason", ok=True, latency_ms=800.0, prompt_tokens=50, output_tokens=20, tokens_per_second=60.0)
    store.record("athena.reason", ok=True, latency_ms=400.0, prompt_tokens=30, output_tokens=10, tokens_per_second=80.0)
    for ratio, saved in ((0.5, 100), (0.4, 60)):
        store.record("athena.compress_prompt", ok=True, latency_ms=2000.0, totals={"tokens_saved": saved}, samples={"compression_ratio": ratio})


def test_with_no_calls_every_kind_is_an_empty_dict_as_in_athena(monitor):
    stats = monitor.get_all_stats()
    assert (stats["embedding"], stats["reasoning"], stats["compression"]) == ({}, {}, {})
    assert "timestamp" in stats


def test_embedding_stats_have_athenas_keys_over_embed_and_embed_batch(store, monitor):
    worker_calls(store)
    stats = monitor.get_embedding_stats()
    assert set(stats) == EMBEDDING_KEYS
    assert (stats["total_operations"], stats["successful"], stats["failed"]) == (3, 2, 1)
    assert (stats["min_latency_ms"], stats["max_latency_ms"], stats["avg_latency_ms"]) == (10.0, 30.0, 20.0)
    assert (stats["total_tokens_processed"], stats["avg_dimension"]) == (45, 384)


def test_reasoning_stats_keep_prompt_and_output_tokens_apart(store, monitor):
    worker_calls(store)
    stats = monitor.get_reasoning_stats()
    assert set(stats) == REASONING_KEYS
    assert (stats["total_prompt_tokens"], stats["total_output_tokens"], stats["avg_output_tokens"]) == (80, 30, 15.0)
    assert stats["avg_tokens_per_sec"] == pytest.approx(70.0)


def test_compression_stats_give_the_ratio_range_and_the_tokens_saved(store, monitor):
    worker_calls(store)
    stats = monitor.get_compression_stats()
    assert set(stats) == COMPRESSION_KEYS
    assert (stats["min_compression_ratio"], stats["max_compression_ratio"]) == (0.4, 0.5)
    assert stats["avg_compression_ratio"] == pytest.approx(0.45)
    assert (stats["total_tokens_saved"], stats["avg_tokens_saved_per_operation"]) == (160, 80.0)


def test_only_failures_give_athenas_short_dict(store, monitor):
    store.record("athena.reason", ok=False, latency_ms=1.0)
    assert monitor.get_reasoning_stats() == {"total_operations": 1, "successful": 0, "failed": 1, "success_rate": 0.0}


def test_clear_history_counts_afresh_for_this_monitor_and_leaves_the_shared_figures(store, monitor):
    worker_calls(store)
    monitor.clear_history()
    assert monitor.get_reasoning_stats() == {}
    store.record("athena.reason", ok=True, latency_ms=100.0, prompt_tokens=3, output_tokens=4, tokens_per_second=40.0)
    stats = monitor.get_reasoning_stats()
    assert (stats["total_operations"], stats["max_latency_ms"], stats["total_output_tokens"]) == (1, 100.0, 4)
    assert ModelPerformanceMonitor(reader=store).get_reasoning_stats()["total_operations"] == 3


def test_athenas_own_records_are_kept_in_this_process_and_returned(store, monitor):
    metric = monitor.record_reasoning(latency_ms=12.0, prompt_tokens=8, output_tokens=4, temperature=0.5, status="success")
    assert isinstance(metric, ReasoningMetrics) and metric.total_tokens == 12
    assert monitor.reasoning_metrics == [metric]


def test_the_call_athenas_docs_write_is_recorded_and_counted_in_the_stats(monitor):
    monitor.record_embedding(latency_ms=85.5, dimension=768, tokens=50)
    stats = monitor.get_all_stats()["embedding"]
    assert set(stats) == EMBEDDING_KEYS
    assert (stats["total_operations"], stats["avg_latency_ms"], stats["total_tokens_processed"], stats["avg_dimension"]) == (1, 85.5, 50, 768)
    assert monitor.embedding_metrics[0].tokens_processed == 50


def test_positional_calls_in_athenas_order_are_recorded_for_every_kind(store, monitor):
    monitor.record_embedding(85.5, 768, 50, "success")
    monitor.record_reasoning(120.0, 40, 12, 0.5)
    monitor.record_compression(30.0, 1000, 400)
    stats = monitor.get_all_stats()
    assert stats["embedding"]["total_tokens_processed"] == 50
    reasoning = stats["reasoning"]
    assert (reasoning["total_prompt_tokens"], reasoning["total_output_tokens"]) == (40, 12)
    assert reasoning["avg_tokens_per_sec"] == pytest.approx(100.0)
    compression = stats["compression"]
    assert (compression["avg_compression_ratio"], compression["total_tokens_saved"]) == (0.4, 600)
    # Every reader of the shared figures sees them, not this monitor alone.
    assert ModelPerformanceMonitor(reader=store).get_compression_stats()["total_operations"] == 1


def test_the_other_names_athena_writes_are_the_same_arguments(monitor):
    monitor.record_embedding(latency=10.0, dimension=384, tokens_processed=7)
    monitor.record_reasoning(latency=50.0, prompt_tokens=3, output_tokens=2)
    monitor.record_compression(latency=5.0, original_tokens=10, compressed_tokens=5)
    assert monitor.embedding_metrics[0].latency_ms == 10.0 and monitor.embedding_metrics[0].tokens_processed == 7
    assert monitor.get_reasoning_stats()["total_operations"] == 1


def test_a_failed_call_counts_as_a_failure(monitor):
    monitor.record_embedding(3.0, 768, 0, "error", "server down")
    assert monitor.get_embedding_stats() == {"total_operations": 1, "successful": 0, "failed": 1, "success_rate": 0.0}


def test_one_argument_under_two_names_or_a_missing_one_is_a_type_error(monitor):
    with pytest.raises(TypeError, match="tokens and tokens_processed"):
        monitor.record_embedding(85.5, 768, tokens=1, tokens_processed=2)
    with pytest.raises(TypeError, match="latency_ms and latency"):
        monitor.record_reasoning(1.0, 2, 3, latency=4.0)
    with pytest.raises(TypeError, match="missing its dimension argument"):
        monitor.record_embedding(latency_ms=85.5, tokens=50)
    assert monitor.embedding_metrics == []


def test_a_metrics_store_that_cannot_be_reached_never_fails_athenas_call(monitor):
    class Away(MetricsStore):
        def record(self, *args, **kwargs):
            raise ConnectionError("Redis is restarting")

    away = ModelPerformanceMonitor(reader=Away(fakeredis.FakeRedis()))
    assert away.record_embedding(latency_ms=85.5, dimension=768, tokens=50).latency_ms == 85.5
