"""The compression cache's keys and round trip, on fakeredis."""

from __future__ import annotations

import fakeredis

from athena_client.contract.payloads import CompressRequest
from athena_inference.workers.compression_cache import CompressionCache
from athena_inference.workers.compressor import Compression


def cache(ttl: int = 60) -> tuple[CompressionCache, fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    return CompressionCache(client, ttl_s=ttl), client


def test_identical_requests_share_a_key():
    store, _ = cache()
    request = CompressRequest(context="a long memory", rate=0.5)
    assert store.key(request, "perplexity", "m") == store.key(CompressRequest(context="a long memory", rate=0.5), "perplexity", "m")


def test_key_changes_with_rate_method_model_and_force_tokens():
    store, _ = cache()
    base = CompressRequest(context="a long memory", rate=0.5)
    keys = {
        store.key(base, "perplexity", "m"),
        store.key(CompressRequest(context="a long memory", rate=0.4), "perplexity", "m"),
        store.key(base, "llmlingua2", "m"),
        store.key(base, "perplexity", "other"),
        store.key(CompressRequest(context="a long memory", rate=0.5, force_tokens=["memory"]), "perplexity", "m"),
        store.key(CompressRequest(context="a long memory", instruction="Summarise.", rate=0.5), "perplexity", "m"),
    }
    assert len(keys) == 6


def test_default_rate_and_explicit_half_are_the_same_request():
    store, _ = cache()
    assert store.key(CompressRequest(context="x"), None, None) == store.key(CompressRequest(context="x", rate=0.5), None, None)


def test_put_then_get_round_trips_with_ttl():
    store, client = cache(ttl=120)
    value = Compression(prompt="short", original_tokens=10, compressed_tokens=5)
    store.put("k", value)
    assert store.get("k") == value
    assert 0 < client.ttl("k") <= 120


def test_ttl_zero_disables_the_cache():
    store, client = cache(ttl=0)
    store.put("k", Compression(prompt="short", original_tokens=10, compressed_tokens=5))
    assert store.get("k") is None and not client.exists("k")
