"""Per-kind call metrics in Redis, shared by every worker process.

Counters (count, failures, sums) are kept forever; latencies and tokens/s of
the last `window` successful calls are kept in capped lists, from which min,
p50, p95 and max are computed when asked. Failed calls count, but their
latency (often an instant validation error) is kept out of the distribution.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import redis
from pydantic import BaseModel

PREFIX = "athena:metrics"
# Upper bounds (ms) of the latency histogram's buckets, from a short embed to a long generation.
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000)


class LatencyHistogram(BaseModel):
    """Cumulative counts per upper bound in ms (the last is +Inf), as Prometheus wants them."""

    buckets: list[tuple[float, int]]
    sum_ms: float
    count: int


class LatencyStats(BaseModel):
    min: Optional[float] = None
    avg: Optional[float] = None
    p50: Optional[float] = None
    p95: Optional[float] = None
    max: Optional[float] = None


class KindStats(BaseModel):
    kind: str
    count: int
    success: int
    failures: int
    success_rate: Optional[float]
    # Calls per second between the first and the last recorded call.
    rate_per_s: Optional[float]
    latency_ms: LatencyStats
    tokens_per_second: Optional[float]
    tokens: int
    # Sums a kind adds of its own, e.g. compression's tokens_saved and money_saved_usd.
    totals: dict[str, float] = {}
    window: int


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_stats(values: list[float]) -> LatencyStats:
    if not values:
        return LatencyStats()
    ordered = sorted(values)
    return LatencyStats(
        min=ordered[0],
        avg=sum(ordered) / len(ordered),
        p50=percentile(ordered, 0.50),
        p95=percentile(ordered, 0.95),
        max=ordered[-1],
    )


class MetricsStore:
    """Reads and writes the metrics; `client` is any redis-py client (fakeredis in unit tests)."""

    def __init__(self, client: redis.Redis, *, window: int = 10000, prefix: str = PREFIX) -> None:
        self._redis = client
        self._window = window
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, window: int = 10000) -> "MetricsStore":
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), window=window)

    def _key(self, kind: str, part: str = "") -> str:
        return f"{self._prefix}:{kind}{':' + part if part else ''}"

    def record(
        self,
        kind: str,
        *,
        ok: bool,
        latency_ms: float,
        tokens: int = 0,
        tokens_per_second: Optional[float] = None,
        totals: Optional[dict[str, float]] = None,
        at: Optional[float] = None,
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
            pipe.hincrby(counters, "tokens", tokens)
            for name, amount in (totals or {}).items():
                pipe.hincrbyfloat(counters, f"total:{name}", amount)
            bound = next((b for b in LATENCY_BUCKETS_MS if latency_ms <= b), math.inf)
            pipe.hincrby(self._key(kind, "histogram"), str(bound), 1)
            pipe.hincrbyfloat(counters, "latency_sum_ms", latency_ms)
            pipe.lpush(self._key(kind, "latency"), latency_ms)
            pipe.ltrim(self._key(kind, "latency"), 0, self._window - 1)
            if tokens_per_second is not None:
                pipe.lpush(self._key(kind, "tps"), tokens_per_second)
                pipe.ltrim(self._key(kind, "tps"), 0, self._window - 1)
        else:
            pipe.hincrby(counters, "failures", 1)
        pipe.execute()

    def kinds(self) -> list[str]:
        return sorted(k.decode() if isinstance(k, bytes) else k for k in self._redis.smembers(self._key("kinds")))

    def stats(self, kind: str) -> KindStats:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._key(kind))
        pipe.lrange(self._key(kind, "latency"), 0, -1)
        pipe.lrange(self._key(kind, "tps"), 0, -1)
        raw_counters, raw_latencies, raw_tps = pipe.execute()
        counters = {_text(k): float(v) for k, v in raw_counters.items()}
        count = int(counters.get("count", 0))
        success = int(counters.get("success", 0))
        span = counters.get("last_at", 0.0) - counters.get("first_at", 0.0)
        tps = [float(v) for v in raw_tps]
        return KindStats(
            kind=kind,
            count=count,
            success=success,
            failures=int(counters.get("failures", 0)),
            success_rate=success / count if count else None,
            rate_per_s=(count - 1) / span if count > 1 and span > 0 else None,
            latency_ms=latency_stats([float(v) for v in raw_latencies]),
            tokens_per_second=sum(tps) / len(tps) if tps else None,
            tokens=int(counters.get("tokens", 0)),
            totals={k[len("total:"):]: v for k, v in counters.items() if k.startswith("total:")},
            window=self._window,
        )

    def histogram(self, kind: str) -> LatencyHistogram:
        """Every successful call since the last reset, not only the window."""
        raw = {float(_text(k)): int(v) for k, v in self._redis.hgetall(self._key(kind, "histogram")).items()}
        running, buckets = 0, []
        for bound in (*LATENCY_BUCKETS_MS, math.inf):
            running += raw.get(float(bound), 0)
            buckets.append((float(bound), running))
        total = self._redis.hget(self._key(kind), "latency_sum_ms")
        return LatencyHistogram(buckets=buckets, sum_ms=float(total or 0), count=running)

    def get_all_stats(self) -> dict[str, KindStats]:
        """Every kind's figures; the name Athena's in-process metrics object used."""
        return {kind: self.stats(kind) for kind in self.kinds()}

    def reset(self) -> None:
        for kind in self.kinds():
            self._redis.delete(
                self._key(kind), self._key(kind, "latency"), self._key(kind, "tps"), self._key(kind, "histogram")
            )
        self._redis.delete(self._key("kinds"))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
