"""How a worker sends Flower its task events: a tenth of a second's worth at a time.

Celery's worker already collects task events in a buffer, but flushes it at
the next turn of its event loop, so a lone embed's task-received and
task-succeeded events went out as two messages, each encoded, published to
Redis and decoded by Flower on its own: a sixth of the embeddings worker's
CPU for each embed (bench/queue_cpu.py). This consumer flushes the buffer
`BATCH_S` after the first event put in it instead, so those events, and those
of every task done meanwhile, go out as one message (Celery's `task.multi`,
which Flower reads as the list it is). Flower shows a task up to `BATCH_S`
later; Celery still flushes at once when the buffer holds its limit (24
events), and at shutdown.
"""

from __future__ import annotations

from celery.worker.consumer import Consumer

BATCH_S = 0.1


class BatchingConsumer(Consumer):
    """Celery's consumer, with its buffered task events flushed `BATCH_S` after the first."""

    _flush_due = False

    def on_send_event_buffered(self) -> None:
        if self.hub is None:
            return
        if not self._flush_due:
            self._flush_due = True
            self.hub.call_later(BATCH_S, self._flush_batch)

    def _flush_batch(self) -> None:
        self._flush_due = False
        self._flush_events()
