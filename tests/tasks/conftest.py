"""Tasks run in-process against fake seams: metrics in fakeredis, servers behind MockTransport."""

from __future__ import annotations

import fakeredis
import pytest

from athena_inference.tasks import seams
from athena_inference.workers.metrics import MetricsStore


@pytest.fixture
def metrics():
    """A metrics store in fakeredis, in place of the worker's; every seam is forgotten afterwards."""
    store = MetricsStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    seams.use_metrics(store)
    yield store
    seams.reset()
