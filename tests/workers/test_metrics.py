"""MetricsStore on fakeredis, the buffer the workers record into, and the pure percentile / latency_stats helpers."""

import time

import fakeredis
import pytest
import redis

from athena_inference.workers.metrics import CallRecord, LatencyStats, MetricsBuffer, MetricsStore, latency_stats, percentile
from athena_inference.workers.ops.polling import poll_until

KIND = "athena.embed"


@pytest.fixture
def redis_client():
    # A server of its own per test: FakeRedis instances otherwise share state.
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def store(redis_client):
    return MetricsStore(redis_client, window=1000)


# --- pure functions ---


def test_percentile_of_empty_values_raises_value_error():
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0


def test_percentile_rounds_rank_up():
    values = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    # 0.95 * 10 = 9.5 -> rank 10; 0.5 * 10 = 5 -> rank 5; 0.51 * 10 = 5.1 -> rank 6
    assert percentile(values, 0.95) == 100.0
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.51) == 60.0


def test_percentile_of_zero_fraction_is_the_smallest_value():
    assert percentile([3.0, 7.0, 9.0], 0.0) == 3.0


def test_percentile_of_single_value_is_that_value():
    assert percentile([42.0], 0.5) == 42.0
    assert percentile([42.0], 0.95) == 42.0


def test_latency_stats_of_no_values_is_all_none():
    assert latency_stats([]) == LatencyStats()
    assert latency_stats([]).p95 is None


def test_latency_stats_arithmetic_on_unsorted_values():
    stats = latency_stats([50.0, 10.0, 40.0, 20.0, 30.0])
    assert stats.min == 10.0
    assert stats.max == 50.0
    assert stats.avg == pytest.approx(30.0)
    assert stats.p50 == 30.0
    assert stats.p95 == 50.0


def test_latency_stats_p95_of_twenty_values_is_the_nineteenth():
    stats = latency_stats([float(v) for v in range(20, 0, -1)])
    assert stats.p50 == 10.0
    assert stats.p95 == 19.0
    assert stats.avg == pytest.approx(10.5)


# --- MetricsStore ---


def test_unknown_kind_has_zero_counts_and_no_rates(store):
    stats = store.stats("athena.nothing")
    assert stats.count == 0
    assert stats.success == 0
    assert stats.failures == 0
    assert stats.success_rate is None
    assert stats.rate_per_s is None
    assert stats.tokens_per_second is None
    assert stats.latency_ms == LatencyStats()


def test_record_counts_successes_and_failures(store):
    for _ in range(3):
        store.record(KIND, ok=True, latency_ms=10.0)
    store.record(KIND, ok=False, latency_ms=1.0)
    stats = store.stats(KIND)
    assert stats.count == 4
    assert stats.success == 3
    assert stats.failures == 1


def test_success_rate_is_successes_over_count(store):
    for ok in (True, True, True, False):
        store.record(KIND, ok=ok, latency_ms=5.0)
    assert store.stats(KIND).success_rate == pytest.approx(0.75)


def test_only_failures_gives_zero_success_rate_and_no_latency(store):
    store.record(KIND, ok=False, latency_ms=3.0)
    stats = store.stats(KIND)
    assert stats.success_rate == 0.0
    assert stats.latency_ms.min is None


def test_failed_call_latency_is_kept_out_of_the_distribution(store):
    store.record(KIND, ok=True, latency_ms=100.0)
    store.record(KIND, ok=False, latency_ms=0.1)
    latency = store.stats(KIND).latency_ms
    assert latency.min == 100.0
    assert latency.max == 100.0


def test_latency_min_avg_p50_p95_max_on_known_values(store):
    for value in [30.0, 10.0, 100.0, 50.0, 20.0, 90.0, 40.0, 80.0, 60.0, 70.0]:
        store.record(KIND, ok=True, latency_ms=value)
    latency = store.stats(KIND).latency_ms
    assert latency.min == 10.0
    assert latency.avg == pytest.approx(55.0)
    assert latency.p50 == 50.0
    assert latency.p95 == 100.0
    assert latency.max == 100.0


def test_window_keeps_only_the_last_calls_latencies(redis_client):
    store = MetricsStore(redis_client, window=10)
    for value in range(1, 16):
        store.record(KIND, ok=True, latency_ms=float(value), tokens_per_second=float(value))
    stats = store.stats(KIND)
    assert stats.window == 10
    assert stats.count == 15
    assert stats.latency_ms.min == 6.0
    assert stats.latency_ms.max == 15.0
    assert stats.latency_ms.avg == pytest.approx(10.5)
    assert stats.tokens_per_second == pytest.approx(10.5)
    assert redis_client.llen("athena:metrics:athena.embed:latency") == 10


def test_tokens_are_summed_over_successful_calls_only(store):
    store.record(KIND, ok=True, latency_ms=1.0, prompt_tokens=12)
    store.record(KIND, ok=True, latency_ms=1.0, prompt_tokens=20, output_tokens=10)
    store.record(KIND, ok=False, latency_ms=1.0, prompt_tokens=99)
    assert store.stats(KIND).tokens == 42


def test_tokens_per_second_is_average_of_reported_values(store):
    store.record(KIND, ok=True, latency_ms=1.0, tokens_per_second=100.0)
    store.record(KIND, ok=True, latency_ms=1.0, tokens_per_second=200.0)
    store.record(KIND, ok=True, latency_ms=1.0)  # no rate reported: not averaged in
    assert store.stats(KIND).tokens_per_second == pytest.approx(150.0)


def test_no_reported_tokens_per_second_gives_none(store):
    store.record(KIND, ok=True, latency_ms=1.0)
    assert store.stats(KIND).tokens_per_second is None


def test_rate_per_s_is_calls_between_first_and_last_timestamp(store):
    for at in (1000.0, 1001.0, 1002.0, 1004.0):
        store.record(KIND, ok=True, latency_ms=1.0, at=at)
    # 4 calls -> 3 intervals over 4 seconds
    assert store.stats(KIND).rate_per_s == pytest.approx(0.75)


def test_rate_per_s_counts_failed_calls(store):
    store.record(KIND, ok=True, latency_ms=1.0, at=50.0)
    store.record(KIND, ok=False, latency_ms=1.0, at=52.0)
    assert store.stats(KIND).rate_per_s == pytest.approx(0.5)


def test_rate_per_s_of_a_single_call_is_none(store):
    store.record(KIND, ok=True, latency_ms=1.0, at=1000.0)
    assert store.stats(KIND).rate_per_s is None


def test_rate_per_s_with_zero_time_span_is_none(store):
    store.record(KIND, ok=True, latency_ms=1.0, at=1000.0)
    store.record(KIND, ok=True, latency_ms=1.0, at=1000.0)
    assert store.stats(KIND).rate_per_s is None


def test_kinds_are_kept_apart(store):
    store.record("athena.embed", ok=True, latency_ms=1.0)
    store.record("athena.reason", ok=True, latency_ms=500.0)
    store.record("athena.reason", ok=False, latency_ms=2.0)
    assert store.stats("athena.embed").count == 1
    assert store.stats("athena.reason").count == 2
    assert store.stats("athena.embed").latency_ms.max == 1.0


def test_get_all_stats_is_keyed_by_every_recorded_kind(store):
    store.record("athena.reason", ok=True, latency_ms=1.0)
    store.record("athena.embed", ok=True, latency_ms=1.0)
    store.record("athena.embed_batch", ok=False, latency_ms=1.0)
    all_stats = store.get_all_stats()
    assert set(all_stats) == {"athena.embed", "athena.embed_batch", "athena.reason"}
    assert all(all_stats[kind].kind == kind for kind in all_stats)
    assert store.kinds() == ["athena.embed", "athena.embed_batch", "athena.reason"]


def test_get_all_stats_of_empty_store_is_empty(store):
    assert store.get_all_stats() == {}


def test_reset_removes_every_kind_and_its_figures(store, redis_client):
    store.record("athena.embed", ok=True, latency_ms=1.0, tokens_per_second=5.0)
    store.record("athena.reason", ok=False, latency_ms=1.0)
    store.reset()
    assert store.get_all_stats() == {}
    assert store.stats("athena.embed").count == 0
    assert redis_client.keys("athena:metrics*") == []


def test_stores_with_the_same_redis_share_figures(redis_client):
    MetricsStore(redis_client).record(KIND, ok=True, latency_ms=1.0)
    MetricsStore(redis_client).record(KIND, ok=True, latency_ms=3.0)
    assert MetricsStore(redis_client).stats(KIND).count == 2


def test_prefix_separates_stores_on_one_redis(redis_client):
    MetricsStore(redis_client, prefix="a").record(KIND, ok=True, latency_ms=1.0)
    assert MetricsStore(redis_client, prefix="b").get_all_stats() == {}


def test_prompt_and_output_tokens_are_kept_apart(store):
    store.record("athena.reason", ok=True, latency_ms=1.0, prompt_tokens=40, output_tokens=7)
    store.record("athena.reason", ok=True, latency_ms=1.0, prompt_tokens=10, output_tokens=3)
    stats = store.stats("athena.reason")
    assert (stats.prompt_tokens, stats.output_tokens, stats.tokens) == (50, 10, 60)


def test_a_kinds_own_samples_get_min_avg_and_max_over_the_window(store):
    for ratio in (0.4, 0.5, 0.9):
        store.record("athena.compress_prompt", ok=True, latency_ms=1.0, samples={"compression_ratio": ratio})
    store.record("athena.compress_prompt", ok=False, latency_ms=1.0, samples={"compression_ratio": 0.01})
    ratio = store.stats("athena.compress_prompt").samples["compression_ratio"]
    assert (ratio.min, ratio.max) == (0.4, 0.9)
    assert ratio.avg == pytest.approx(0.6)


def test_combined_kinds_add_their_counts_and_pool_their_windows(store):
    store.record("athena.embed", ok=True, latency_ms=10.0, prompt_tokens=3, at=100.0)
    store.record("athena.embed_batch", ok=True, latency_ms=30.0, prompt_tokens=9, at=102.0)
    store.record("athena.embed_batch", ok=False, latency_ms=1.0, at=104.0)
    both = store.combined("embedding", ["athena.embed", "athena.embed_batch"])
    assert (both.kind, both.count, both.success, both.failures, both.prompt_tokens) == ("embedding", 3, 2, 1, 12)
    assert (both.latency_ms.min, both.latency_ms.max) == (10.0, 30.0)
    assert both.rate_per_s == pytest.approx(0.5)


def test_reset_of_some_kinds_keeps_the_others(store):
    store.record("athena.embed", ok=True, latency_ms=1.0, samples={"dimension": 384})
    store.record("athena.reason", ok=True, latency_ms=1.0)
    store.reset(["athena.embed"])
    assert store.kinds() == ["athena.reason"]
    assert store.stats("athena.embed").count == 0 and store.stats("athena.embed").samples == {}


# --- many calls in one write ---


def some_calls(at: float = 1_700_000_000.0) -> list[CallRecord]:
    return [
        CallRecord(kind=KIND, ok=True, latency_ms=4.0, prompt_tokens=7, samples={"dimension": 384}, at=at),
        CallRecord(kind="athena.reason", ok=True, latency_ms=900.0, prompt_tokens=40, output_tokens=20, tokens_per_second=55.0, at=at + 1),
        CallRecord(kind=KIND, ok=False, latency_ms=1.0, expired=True, at=at + 2),
        CallRecord(kind=KIND, ok=True, latency_ms=30.0, prompt_tokens=3, totals={"texts": 2}, samples={"dimension": 256}, at=at + 3),
        CallRecord(kind=KIND, ok=False, latency_ms=2.0, cancelled=True, at=at + 4),
    ]


def test_calls_written_together_read_back_as_if_written_one_by_one():
    alone, together = (MetricsStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()), window=1000) for _ in range(2))
    for call in some_calls():
        alone.record(**call.model_dump())
    together.record_many(some_calls())
    for kind in (KIND, "athena.reason"):
        assert together.stats(kind) == alone.stats(kind)
        assert together.histogram(kind) == alone.histogram(kind)
    assert together.recent(KIND, "dimension", 5) == alone.recent(KIND, "dimension", 5) == [256.0, 384.0]


def test_a_buffer_writes_nothing_until_its_interval_then_everything_in_one_go(redis_client):
    store = MetricsStore(redis_client, window=1000)
    buffer = MetricsBuffer(redis_client, window=1000, flush_s=0.2)
    for call in some_calls(at=time.time()):
        buffer.record(**call.model_dump(exclude={"kind"}), kind=call.kind)
    assert store.kinds() == []
    assert poll_until(lambda: store.stats(KIND).count == 4, 5.0)
    assert store.stats("athena.reason").success == 1
    buffer.close()


def test_a_closed_buffer_has_written_what_it_held(store, redis_client):
    buffer = MetricsBuffer(redis_client, flush_s=60)
    buffer.record(KIND, ok=True, latency_ms=3.0)
    buffer.close()
    assert store.stats(KIND).success == 1


def test_a_buffer_reading_recent_samples_sees_its_own_calls_first(redis_client):
    buffer = MetricsBuffer(redis_client, flush_s=60)
    buffer.record(KIND, ok=True, latency_ms=3.0, samples={"dimension": 384})
    assert buffer.recent(KIND, "dimension", 1) == [384.0]
    buffer.close()


def test_a_buffer_with_no_interval_writes_each_call_at_once(store, redis_client):
    MetricsBuffer(redis_client, flush_s=0).record(KIND, ok=False, latency_ms=1.0)
    assert store.stats(KIND).failures == 1


def test_a_buffer_that_cannot_reach_redis_drops_its_calls_and_goes_on(caplog):
    buffer = MetricsBuffer(redis.Redis(port=1, socket_connect_timeout=0.2), flush_s=60)
    buffer.record(KIND, ok=True, latency_ms=3.0)
    buffer.flush()
    assert "could not write the metrics of 1 calls" in caplog.text
    buffer.flush()  # nothing held any more


def test_the_workers_sink_is_a_buffer_over_the_store(monkeypatch):
    from athena_inference.tasks import seams

    seams.reset()
    monkeypatch.setenv("ATHENA_METRICS_FLUSH_S", "0.5")
    from athena_inference.config.settings import get_settings

    get_settings.cache_clear()
    try:
        sink = seams.metrics()
        assert isinstance(sink, MetricsBuffer) and sink.flush_s == 0.5
    finally:
        seams.reset()
        get_settings.cache_clear()


def test_the_buffer_is_the_store_holding_its_writes():
    assert issubclass(MetricsBuffer, MetricsStore)
