"""The seam to the metrics store: every worker process records each call here.

`MetricsSink` is what a task's base class records into, and `MetricsStore`,
in Redis, the one the workers use. A result adds figures of its own kind by
offering `metric_totals()` (`AddsTotals`) or `metric_samples()` (`AddsSamples`).

The layout, and reading it, live in `athena_client.shared_redis.metrics`, so that the
client (Athena's performance monitor) reads the same figures the workers write.
"""

from __future__ import annotations

import math
import time
from typing import Optional, Protocol, runtime_checkable

from athena_client.shared_redis.metrics import LATENCY_BUCKETS_MS, KindStats, LatencyHistogram, LatencyStats, MetricsReader, latency_stats, percentile

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


@runtime_checkable
class AddsTotals(Protocol):
    """A result that adds to its kind's running sums (tokens saved, texts embedded)."""

    def metric_totals(self) -> dict[str, float]: ...


@runtime_checkable
class AddsSamples(Protocol):
    """A result whose values join its kind's window of samples (vector size, compression ratio)."""

    def metric_samples(self) -> dict[str, float]: ...


class MetricsStore(MetricsReader):
    """Reads and writes the metrics (a `MetricsSink`); `client` is any redis-py client (fakeredis in unit tests)."""

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
    ) -> None:
        at = time.time() if at is None else at
        counters = self._key(kind)
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(self._key("kinds"), kind)
        pipe.hincrby(counters, "count", 1)
        pipe.hsetnx(counters, "first_at", at)
        pipe.hset(counters, "last_at", at)
        if ok:
            pipe.hincrby(counters, "success", 1)
            pipe.hincrby(counters, "prompt_tokens", prompt_tokens)
            pipe.hincrby(counters, "output_tokens", output_tokens)
            for name, amount in (totals or {}).items():
                pipe.hincrbyfloat(counters, f"total:{name}", amount)
            bound = next((b for b in LATENCY_BUCKETS_MS if latency_ms <= b), math.inf)
            pipe.hincrby(self._key(kind, "histogram"), str(bound), 1)
            pipe.hincrbyfloat(counters, "latency_sum_ms", latency_ms)
            self._push(pipe, self._key(kind, "latency"), latency_ms)
            if tokens_per_second is not None:
                self._push(pipe, self._key(kind, "tps"), tokens_per_second)
            for name, value in (samples or {}).items():
                pipe.sadd(self._key(kind, "samples"), name)
                self._push(pipe, self._key(kind, f"sample:{name}"), value)
        else:
            pipe.hincrby(counters, "failures", 1)
            if expired:
                pipe.hincrby(counters, "expired", 1)
            if cancelled:
                pipe.hincrby(counters, "cancelled", 1)
        pipe.execute()

    def _push(self, pipe, key: str, value: float) -> None:
        pipe.lpush(key, value)
        pipe.ltrim(key, 0, self._window - 1)

    def reset(self, kinds: Optional[list[str]] = None) -> None:
        """Forget the figures of `kinds` (default: every kind)."""
        for kind in kinds if kinds is not None else self.kinds():
            samples = [self._key(kind, f"sample:{n.decode() if isinstance(n, bytes) else n}") for n in self._redis.smembers(self._key(kind, "samples"))]
            self._redis.delete(
                self._key(kind), self._key(kind, "latency"), self._key(kind, "tps"), self._key(kind, "histogram"),
                self._key(kind, "samples"), *samples,
            )
            self._redis.srem(self._key("kinds"), kind)
