"""What counts as healthy, for `athena-inference health` and container healthchecks."""

from __future__ import annotations

from athena_client.contract.health import HealthReport, QueueHealth
from athena_client.contract.payloads import CompressorStatus


def report(**queues: QueueHealth) -> HealthReport:
    base = {q: QueueHealth(queue=q, workers=[f"{q}@h"]) for q in ("embeddings", "compression", "jobs")}
    return HealthReport(queues={**base, **queues}, compression=CompressorStatus(ready=True, method="perplexity"))


def test_workers_and_ready_servers_are_healthy():
    assert report(embeddings=QueueHealth(queue="embeddings", workers=["e@h"], server_ready=True)).healthy()


def test_a_server_that_is_not_ready_makes_its_queue_unhealthy_but_not_the_others():
    down = report(embeddings=QueueHealth(queue="embeddings", workers=["e@h"], server_ready=False))
    assert not down.healthy() and not down.healthy(["embeddings"])
    assert down.healthy(["jobs"])


def test_a_queue_without_workers_is_unhealthy():
    assert not report(jobs=QueueHealth(queue="jobs", workers=[])).healthy(["jobs"])


def test_compression_needs_its_model_loaded():
    loading = report()
    loading.compression = CompressorStatus(ready=False, reason="loading")
    assert not loading.healthy(["compression"]) and loading.healthy(["jobs"])


def test_an_unreachable_broker_is_unhealthy_whatever_else_is_known():
    down = report()
    down.broker_ok = False
    assert not down.healthy(["jobs"])
