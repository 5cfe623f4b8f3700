"""BatchingConsumer: a worker's buffered task events flushed a tenth of a second after the first."""

from __future__ import annotations

from athena_inference.workers.task_events import BATCH_S, BatchingConsumer


class Hub:
    """The worker's event loop, as far as the consumer uses it: callbacks to run later."""

    def __init__(self) -> None:
        self.later: list[tuple[float, object]] = []

    def call_later(self, delay: float, callback) -> None:
        self.later.append((delay, callback))


def consumer(hub) -> tuple[BatchingConsumer, list[str]]:
    made = BatchingConsumer.__new__(BatchingConsumer)
    flushed: list[str] = []
    made.hub = hub
    made._flush_events = lambda: flushed.append("flush")
    return made, flushed


def test_events_buffered_together_are_flushed_once_a_batch_interval_after_the_first():
    hub = Hub()
    made, flushed = consumer(hub)
    for _ in range(5):
        made.on_send_event_buffered()
    assert [delay for delay, _ in hub.later] == [BATCH_S] and flushed == []
    hub.later.pop()[1]()
    assert flushed == ["flush"]


def test_an_event_after_a_flush_starts_the_next_batch():
    hub = Hub()
    made, flushed = consumer(hub)
    made.on_send_event_buffered()
    hub.later.pop()[1]()
    made.on_send_event_buffered()
    assert len(hub.later) == 1 and flushed == ["flush"]


def test_a_consumer_with_no_event_loop_leaves_the_buffer_to_celery():
    made, flushed = consumer(None)
    made.on_send_event_buffered()
    assert flushed == []
