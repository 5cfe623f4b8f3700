"""The job lease: one runner at a time, renewed and released only by its holder."""

from __future__ import annotations

import fakeredis
import pytest

from athena_inference.workers.reembedding.lease import JobLeases


@pytest.fixture
def leases():
    return JobLeases(fakeredis.FakeRedis())


def test_only_the_holder_renews_the_lease(leases):
    assert leases.acquire("j", "a", 30)
    assert not leases.acquire("j", "b", 30)
    assert leases.renew("j", "a", 30) and not leases.renew("j", "b", 30)
    leases.release("j", "b")
    assert leases.holder("j") == "a"
    leases.release("j", "a")
    assert leases.holder("j") is None and leases.acquire("j", "b", 30)
