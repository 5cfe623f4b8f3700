"""Metrics written by the worker processes, read from Python and from the CLI."""

from __future__ import annotations

import json
import subprocess

from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import TaskName
from athena_inference.workers.metrics import MetricsStore
from tests.harness import CLI, recorded, side_url


def test_metrics_are_shared_in_redis_and_readable_from_cli(sender, stack):
    for text in ("one", "two", "three"):
        sender.call(TaskName.EMBED, EmbedRequest(text=text))
    failed = sender.app.send_task(TaskName.EMBED.value, kwargs={"text": ""}, queue="embeddings")
    failed.get(timeout=30, propagate=False)

    store = MetricsStore.from_url(side_url(stack.env))
    embed = recorded(store, "athena.embed", lambda stats: stats.success >= 3 and stats.failures >= 1)
    assert store.get_all_stats()["athena.embed"].count >= embed.count
    assert embed.latency_ms.min <= embed.latency_ms.p50 <= embed.latency_ms.p95 <= embed.latency_ms.max
    assert embed.tokens_per_second > 0

    printed = subprocess.run([*CLI, "metrics", "--json"], env=stack.env, capture_output=True, text=True, check=True)
    from_cli = json.loads(printed.stdout)["athena.embed"]
    assert from_cli["count"] >= embed.count
    table = subprocess.run([*CLI, "metrics"], env=stack.env, capture_output=True, text=True, check=True).stdout
    assert "athena.embed" in table and "p95" in table
