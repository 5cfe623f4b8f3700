"""The compression gate: a consolidation compresses its events only where the compressor's
time is less than the reasoning prompt time it saves, both measured (metrics in fakeredis)."""

from __future__ import annotations

import fakeredis
import httpx
import pytest

from athena_client.contract.payloads import ServerTiming
from athena_client.contract.routes import Queue
from athena_inference.tasks import compression_gate, seams
from athena_inference.tasks.reasoning import reason
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.tasks.compression_gate import COMPRESSOR_SAMPLE, PROMPT_SAMPLE, decide, note_compressor_run, note_prompt
from athena_inference.workers.metrics import MetricsStore

# 8,000 characters, 2,000 reasoning tokens, half of them removed at rate 0.5.
EVENTS = dict(event_chars=8_000, event_tokens=2_000, rate=0.5)


@pytest.fixture
def store() -> MetricsStore:
    return MetricsStore(fakeredis.FakeRedis())


def measured(store: MetricsStore, *, compressor_ms_per_kchar: float, prompt_ms_per_token: float) -> MetricsStore:
    store.sample("athena.compress_prompt", COMPRESSOR_SAMPLE, compressor_ms_per_kchar)
    store.sample("athena.reason", PROMPT_SAMPLE, prompt_ms_per_token)
    return store


def test_auto_compresses_when_the_compressor_is_faster_than_the_prompt_it_saves(store):
    # A 7B model reading 30 tokens/s on a CPU, and LLMLingua-2 at 20 ms per 1,000 characters.
    gate = decide("auto", metrics=measured(store, compressor_ms_per_kchar=20, prompt_ms_per_token=33), **EVENTS)
    assert gate.compress is True
    assert gate.expected_compress_ms == pytest.approx(160) and gate.saved_prompt_ms == pytest.approx(33_000)
    assert "saves about 33000 ms" in gate.reason


def test_auto_skips_a_compressor_slower_than_the_prompt_it_saves(store):
    # The small models this stack embeds: a torch compressor, a fast server.
    gate = decide("auto", metrics=measured(store, compressor_ms_per_kchar=2_500, prompt_ms_per_token=4), **EVENTS)
    assert gate.compress is False
    assert gate.expected_compress_ms == pytest.approx(20_000) and gate.saved_prompt_ms == pytest.approx(4_000)
    assert "would take about 20000 ms to save about 4000 ms" in gate.reason


def test_auto_without_measurements_does_not_compress_and_says_why(store):
    assert "no compressor runs measured" in decide("auto", metrics=store, **EVENTS).reason
    store.sample("athena.consolidate.compress", COMPRESSOR_SAMPLE, 20)
    gate = decide("auto", metrics=store, **EVENTS)
    assert gate.compress is False and "no reasoning prompt timings" in gate.reason and gate.compressor_ms_per_kchar == 20


def test_asked_for_or_refused_the_gate_obeys_and_still_shows_its_figures(store):
    measured(store, compressor_ms_per_kchar=2_500, prompt_ms_per_token=4)
    always = decide(True, metrics=store, **EVENTS)
    assert always.compress is True and always.expected_compress_ms == pytest.approx(20_000) and "as asked" in always.reason
    never = decide(False, metrics=measured(store, compressor_ms_per_kchar=1, prompt_ms_per_token=100), **EVENTS)
    assert never.compress is False and never.expected_compress_ms is None


def test_the_median_of_recent_runs_decides_not_one_slow_run(store, monkeypatch):
    monkeypatch.setattr(compression_gate, "RECENT_RUNS", 5)
    for value in [900, 900, 900, 900, 900, 20, 20, 20, 5_000]:
        store.sample("athena.compress_prompt", COMPRESSOR_SAMPLE, value)
    store.sample("athena.reason", PROMPT_SAMPLE, 33)
    # The last five: 20, 20, 20, 5000 and one 900; older ones have aged out.
    assert decide("auto", metrics=store, **EVENTS).compressor_ms_per_kchar == 20


def test_runs_are_noted_per_character_and_per_uncached_prompt_token(store):
    note_compressor_run(store, "athena.compress_prompt", input_chars=4_000, elapsed_ms=100)
    assert store.recent("athena.compress_prompt", COMPRESSOR_SAMPLE, 5) == [25.0]
    note_prompt(store, "athena.reason", ServerTiming(prompt_tokens=500, cached_tokens=100, prompt_ms=800, request_ms=900))
    assert store.recent("athena.reason", PROMPT_SAMPLE, 5) == [2.0]


def test_a_prompt_read_from_the_cache_or_without_timings_or_a_short_compression_is_not_a_rate(store):
    note_prompt(store, "athena.reason", ServerTiming(prompt_tokens=500, cached_tokens=495, prompt_ms=3, request_ms=9))
    note_prompt(store, "athena.reason", ServerTiming(prompt_tokens=500, request_ms=9))
    # A short text is mostly the model's fixed cost per call, not a rate per character.
    note_compressor_run(store, "athena.compress_prompt", input_chars=400, elapsed_ms=900)
    assert store.recent("athena.reason", PROMPT_SAMPLE, 5) == [] and store.recent("athena.compress_prompt", COMPRESSOR_SAMPLE, 5) == []


def test_a_metrics_store_that_fails_never_fails_the_task(caplog):
    class Broken:
        def sample(self, *args):
            raise ConnectionError("redis is away")

    note_compressor_run(Broken(), "athena.compress_prompt", input_chars=2_000, elapsed_ms=1)
    note_prompt(Broken(), "athena.reason", ServerTiming(prompt_tokens=100, prompt_ms=50, request_ms=60))
    assert [r.message.split(" for ")[0] for r in caplog.records] == ["could not record the compressor's rate", "could not record the prompt rate"]


def test_a_reasoning_call_carries_its_prompt_rate_in_its_own_record(metrics):
    # In the one pipelined write of the call's metrics, not a second round trip to Redis.
    timings = {"prompt_n": 400, "prompt_ms": 800.0, "predicted_n": 3, "predicted_ms": 30.0, "cache_n": 100}
    reply = {
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "timings": timings,
        "usage": {"prompt_tokens": 500, "completion_tokens": 3},
    }
    seams.use_llama(Queue.REASONING, LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(lambda r: httpx.Response(200, json=reply))))
    reason(prompt="Why?", max_tokens=3)
    assert metrics.recent("athena.reason", PROMPT_SAMPLE, 5) == [2.0]
    # A prompt the server read from its cache leaves no rate, and nothing else is written for it.
    reply["usage"]["prompt_tokens"] = 105
    reason(prompt="Why?", max_tokens=3)
    assert metrics.recent("athena.reason", PROMPT_SAMPLE, 5) == [2.0]
