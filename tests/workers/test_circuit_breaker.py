"""The circuit breaker every worker process shares per server, over fakeredis and a fake clock."""

import fakeredis
import pytest

from athena_client.contract.errors import ServerUnavailable
from athena_inference.workers.circuit_breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def server():
    return fakeredis.FakeRedis()


def breaker(server, clock, **kwargs) -> CircuitBreaker:
    return CircuitBreaker(server, "http://llama:8001", cooldown_s=1.0, max_cooldown_s=4.0, clock=clock, **kwargs)


def test_a_closed_breaker_lets_every_call_through(server, clock):
    breaker(server, clock).before_call()


def test_after_a_failure_every_process_is_refused_at_once_with_when_to_retry(server, clock):
    breaker(server, clock).failure()
    other_process = breaker(server, clock)
    with pytest.raises(ServerUnavailable, match="circuit is open") as refused:
        other_process.before_call()
    assert refused.value.retry_after == pytest.approx(1.0)


def test_after_the_cooldown_one_process_probes_and_the_others_wait(server, clock):
    breaker(server, clock).failure()
    clock.now += 1.5
    breaker(server, clock).before_call()
    with pytest.raises(ServerUnavailable, match="another worker is probing"):
        breaker(server, clock).before_call()


def test_a_successful_probe_closes_the_breaker_for_everyone(server, clock):
    breaker(server, clock).failure()
    clock.now += 1.5
    prober = breaker(server, clock)
    prober.before_call()
    prober.success()
    breaker(server, clock).before_call()
    assert prober.state() is None


def test_each_failure_in_a_row_doubles_the_cooldown_up_to_its_cap(server, clock):
    cooldowns = [breaker(server, clock).failure() for _ in range(4)]
    assert cooldowns == [1.0, 2.0, 4.0, 4.0]


def test_a_success_seen_only_closed_costs_no_write(server, clock):
    b = breaker(server, clock)
    b.before_call()
    b.success()
    assert server.keys("athena:breaker:*") == []


def test_a_process_that_saw_it_closed_reads_redis_again_only_after_a_while(server, clock):
    healthy = breaker(server, clock)
    healthy.before_call()
    breaker(server, clock).failure()
    # Within recheck_s it still calls: a quarter of a second of calls, not a round trip each.
    healthy.before_call()
    clock.now += 0.3
    with pytest.raises(ServerUnavailable, match="circuit is open"):
        healthy.before_call()


def test_its_own_failure_opens_it_for_this_process_at_once(server, clock):
    b = breaker(server, clock)
    b.before_call()
    b.failure()
    with pytest.raises(ServerUnavailable, match="circuit is open"):
        b.before_call()
