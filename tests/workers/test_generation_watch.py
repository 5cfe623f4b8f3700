"""The watcher of running generations, over cancel requests in fakeredis: what it stops, and why."""

from __future__ import annotations

import threading
import time

import fakeredis

from athena_client.shared_redis.cancel_requests import CancelRequests
from athena_inference.workers.generation_watch import CANCELLED, TIMED_OUT, Generation, GenerationWatch


def requests() -> CancelRequests:
    return CancelRequests(fakeredis.FakeRedis(server=fakeredis.FakeServer()))


def test_a_cancelled_generation_is_stopped_through_the_abort_its_seam_attached():
    cancels = requests()
    watch = GenerationWatch(cancels, poll_s=0.005)
    aborted = threading.Event()
    with watch.watching("t1") as generation:
        generation.attach(aborted.set)
        cancels.request("t1")
        assert aborted.wait(2)
    assert generation.stopped == CANCELLED


def test_only_the_cancelled_one_of_two_running_generations_stops():
    cancels = requests()
    watch = GenerationWatch(cancels, poll_s=0.005)
    with watch.watching("t1") as first, watch.watching("t2") as second:
        cancels.request("t2")
        deadline = time.monotonic() + 2
        while second.stopped is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.03)
    assert (first.stopped, second.stopped) == (None, CANCELLED)


def test_a_generation_past_its_time_is_stopped_as_timed_out():
    watch = GenerationWatch(requests(), poll_s=0.005)
    aborted = threading.Event()
    with watch.watching("t1", timeout_s=0.05) as generation:
        generation.attach(aborted.set)
        assert aborted.wait(2)
    assert generation.stopped == TIMED_OUT


def test_a_cancel_that_came_before_the_request_opened_aborts_it_as_soon_as_it_is_attached():
    generation = Generation("t1", deadline=None)
    generation.stop(CANCELLED)
    aborted: list[bool] = []
    generation.attach(lambda: aborted.append(True))
    assert aborted == [True]


def test_a_generation_that_ended_is_no_longer_watched_and_its_abort_is_not_called():
    cancels = requests()
    watch = GenerationWatch(cancels, poll_s=0.005)
    aborted: list[bool] = []
    with watch.watching("t1") as generation:
        generation.attach(lambda: aborted.append(True))
    cancels.request("t1")
    watch.look({})
    generation.stop(CANCELLED)
    assert aborted == []


def test_redis_away_leaves_the_generations_running():
    class Away(CancelRequests):
        def which(self, task_ids):
            raise ConnectionError("Redis is restarting")

    watch = GenerationWatch(Away(fakeredis.FakeRedis()), poll_s=0.005)
    generation = Generation("t1", deadline=None)
    watch.look({"t1": generation})
    assert generation.stopped is None
