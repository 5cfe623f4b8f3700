"""Tasks run in-process against fake seams: metrics in fakeredis, servers behind MockTransport."""

from __future__ import annotations

import fakeredis
import pytest

from athena_client.shared_redis.cancel_requests import CancelRequests
from athena_inference.tasks import seams
from athena_inference.workers.metrics import MetricsStore


@pytest.fixture(autouse=True)
def cancel_requests(monkeypatch):
    """Cancel requests in fakeredis: a task run as a worker runs it looks for one before it starts."""
    requests = CancelRequests(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    monkeypatch.setattr(seams, "_cancel_requests", requests)
    return requests


@pytest.fixture
def metrics():
    """A metrics store in fakeredis, in place of the worker's; every seam is forgotten afterwards."""
    store = MetricsStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    seams.use_metrics(store)
    yield store
    seams.reset()
