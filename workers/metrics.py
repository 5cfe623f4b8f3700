"""The seam to the metrics store: every worker process records each call here.

`MetricsSink` is what a task's base class records into. The workers record into
a `MetricsBuffer`, which holds a process's calls for a fraction of a second and
writes them to the `MetricsStore` in Redis together. A result adds figures of
its own kind by offering `metric_totals()` (`AddsTotals`) or `metric_samples()`
(`AddsSamples`).

The layout, reading it and writing it (`MetricsStore`) live in
`athena_client.shared_redis.metrics`, so that the client (Athena's performance
monitor) reads the same figures the workers write, and records its own.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional, Protocol, Sequence, runtime_checkable

import redis

from athena_client.shared_redis.metrics import (
    CallRecord,
    KindStats,
    LatencyHistogram,
    LatencyStats,
    MetricsStore,
    latency_stats,
    percentile,
)

__all__ = [
    "AddsSamples",
    "AddsTotals",
    "CallRecord",
    "KindStats",
    "LatencyHistogram",
    "LatencyStats",
    "MetricsBuffer",
    "MetricsSink",
    "MetricsStore",
    "latency_stats",
    "percentile",
]


class MetricsSink(Protocol):
    """Where each call of a kind is recorded: its outcome and latency, and on
    success its tokens, its rate and the kind's own sums and samples; a failure
    may be a call whose deadline passed before it started (`expired`) or one a
    caller cancelled (`cancelled`)."""

    def record(
        self,
        kind: str,
        *,
        ok: bool,
        latency_ms: float,
        prompt_tokens: int = 0,
        output_tokens: int = 0,
        tokens_per_second: Optional[float] = None,
        totals: Optional[dict[str, float]] = None,
        samples: Optional[dict[str, float]] = None,
        at: Optional[float] = None,
        expired: bool = False,
        cancelled: bool = False,
    ) -> None: ...

    def sample(self, kind: str, name: str, value: float) -> None:
        """One value of a kind's sample, apart from a call's record."""
        ...

    def recent(self, kind: str, sample: str, count: int) -> list[float]:
        """The last `count` values of a kind's sample, newest first."""
        ...


log = logging.getLogger(__name__)


class MetricsBuffer(MetricsStore):
    """A worker process's `MetricsSink`: the store, holding the calls recorded for up to
    `flush_s` seconds and then writing them in one round trip (`MetricsStore.record_many`).

    One record a call was one Redis transaction of a dozen commands, about an eighth of
    an embedding worker's CPU for each embed (bench/queue_cpu.py). Written together, the
    calls of a quarter second cost one. The figures reach Redis up to `flush_s` late, and a
    process killed outright loses its last `flush_s` of them: they are a side channel,
    never a task's result. A process that stops normally writes what it holds (`close`).
    With `flush_s` 0 every call is written as it is recorded."""

    def __init__(self, client: redis.Redis, *, flush_s: float, window: int = 10000) -> None:
        super().__init__(client, window=window)
        self.flush_s = flush_s
        self._start()

    def _start(self) -> None:
        # Also the reset in a forked child: the parent's lock may have been held at the
        # fork, its thread is not the child's, and the calls it held are the parent's to write.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._held: list[CallRecord] = []
        self._closed = threading.Event()
        self._writer: Optional[threading.Thread] = None

    def record_many(self, calls: Sequence[CallRecord]) -> None:
        """Hold `calls`, to be written with the others of this interval."""
        if self.flush_s <= 0:
            super().record_many(calls)
            return
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            self._held.extend(calls)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_every_interval, name="metrics-writer", daemon=True)
                self._writer.start()

    def recent(self, kind: str, sample: str, count: int) -> list[float]:
        # This process's own calls first: a stage reads what the one before it recorded.
        self.flush()
        return super().recent(kind, sample, count)

    def flush(self) -> None:
        """Write every call held now."""
        if self._pid != os.getpid():
            return
        with self._lock:
            held, self._held = self._held, []
        if held:
            try:
                super().record_many(held)
            except Exception:  # noqa: BLE001 - a side channel: losing figures never fails a task
                log.warning("could not write the metrics of %d calls", len(held), exc_info=True)

    def close(self) -> None:
        self._closed.set()
        self.flush()

    def _write_every_interval(self) -> None:
        while not self._closed.wait(self.flush_s):
            self.flush()


@runtime_checkable
class AddsTotals(Protocol):
    """A result that adds to its kind's running sums (tokens saved, texts embedded)."""

    def metric_totals(self) -> dict[str, float]: ...


@runtime_checkable
class AddsSamples(Protocol):
    """A result whose values join its kind's window of samples (vector size, compression ratio)."""

    def metric_samples(self) -> dict[str, float]: ...
