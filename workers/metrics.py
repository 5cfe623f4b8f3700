"""The seam to the metrics store: every worker process records each call here.

`MetricsSink` is what a task's base class records into, and `MetricsStore`,
in Redis, the one the workers use. A result adds figures of its own kind by
offering `metric_totals()` (`AddsTotals`) or `metric_samples()` (`AddsSamples`).

The layout, reading it and writing it (`MetricsStore`) live in
`athena_client.shared_redis.metrics`, so that the client (Athena's performance
monitor) reads the same figures the workers write, and records its own.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from athena_client.shared_redis.metrics import (
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
    "KindStats",
    "LatencyHistogram",
    "LatencyStats",
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


@runtime_checkable
class AddsTotals(Protocol):
    """A result that adds to its kind's running sums (tokens saved, texts embedded)."""

    def metric_totals(self) -> dict[str, float]: ...


@runtime_checkable
class AddsSamples(Protocol):
    """A result whose values join its kind's window of samples (vector size, compression ratio)."""

    def metric_samples(self) -> dict[str, float]: ...
