"""Per-kind call metrics in Redis: the layout both sides share, and reading it.

The workers write (`MetricsStore`, through `athena_inference.workers.metrics`),
and so does Athena's monitor for the calls it records itself; anyone with the
Redis URL reads, so the figures cover every worker process. Per kind
(a task name), Redis holds:

    athena:metrics:kinds                 the set of kinds recorded
    athena:metrics:<kind>                counters: count, success, failures,
                                         prompt_tokens, output_tokens,
                                         latency_sum_ms, first_at, last_at,
                                         total:<name> (a kind's own sums)
    athena:metrics:<kind>:latency        the last `window` successful latencies (ms)
    athena:metrics:<kind>:tps            ... and tokens/s, where reported
    athena:metrics:<kind>:sample:<name>  ... and a kind's own values (dimension, ratio)
    athena:metrics:<kind>:samples        the set of those names
    athena:metrics:<kind>:histogram      successful calls per latency bucket

Counters are kept until reset; min, p50, p95 and max come from the windows.
Failed calls count, but their latency (often an instant validation error) is
kept out of the distribution.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

import redis
from pydantic import BaseModel

from athena_client.shared_redis.redis_connect import redis_client

PREFIX = "athena:metrics"
# The result backend's database the metrics and caches live in, apart from the
# broker's and the results': one Redis, three logical databases by default.
SIDE_DATABASE = 2
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
    # Of the failures, the calls whose deadline passed before a worker started them (never run).
    expired: int = 0
    # Of the failures, the calls a caller cancelled (queued: never run; running: stopped).
    cancelled: int = 0
    success_rate: Optional[float]
    # Calls per second between the first and the last recorded call.
    rate_per_s: Optional[float]
    latency_ms: LatencyStats
    tokens_per_second: Optional[float]
    prompt_tokens: int = 0
    output_tokens: int = 0
    # Sums a kind adds of its own, e.g. compression's tokens_saved and money_saved_usd.
    totals: dict[str, float] = {}
    # Values a kind records per call (embedding dimension, compression ratio), over the window.
    samples: dict[str, LatencyStats] = {}
    window: int

    @property
    def tokens(self) -> int:
        """Prompt and output tokens together."""
        return self.prompt_tokens + self.output_tokens


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


class MetricsReader:
    """Reads the metrics; `client` is any redis-py client (fakeredis in unit tests)."""

    def __init__(self, client: redis.Redis, *, window: int = 10000, prefix: str = PREFIX) -> None:
        self._redis = client
        self._window = window
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, window: int = 10000):
        return cls(redis_client(url, socket_timeout=5, socket_connect_timeout=5), window=window)

    def _key(self, kind: str, part: str = "") -> str:
        return f"{self._prefix}:{kind}{':' + part if part else ''}"

    def kinds(self) -> list[str]:
        return sorted(_text(k) for k in self._redis.smembers(self._key("kinds")))

    def _raw(self, kind: str) -> dict[str, Any]:
        """One kind's counters and windows, read in one round trip."""
        names = sorted(_text(k) for k in self._redis.smembers(self._key(kind, "samples")))
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._key(kind))
        pipe.lrange(self._key(kind, "latency"), 0, -1)
        pipe.lrange(self._key(kind, "tps"), 0, -1)
        for name in names:
            pipe.lrange(self._key(kind, f"sample:{name}"), 0, -1)
        counters, latencies, tps, *samples = pipe.execute()
        return {
            "counters": {_text(k): float(v) for k, v in counters.items()},
            "latency": [float(v) for v in latencies],
            "tps": [float(v) for v in tps],
            "samples": {name: [float(v) for v in values] for name, values in zip(names, samples, strict=True)},
        }

    def stats(self, kind: str) -> KindStats:
        return self.combined(kind, [kind])

    def recent(self, kind: str, sample: str, count: int) -> list[float]:
        """The last `count` values of one of a kind's samples, newest first: one round trip, however long the window."""
        return [float(v) for v in self._redis.lrange(self._key(kind, f"sample:{sample}"), 0, count - 1)]

    def snapshot(self, kinds: Sequence[str]) -> dict[str, dict[str, float]]:
        """The counters of `kinds` now, for figures `since` this moment (see `combined`)."""
        return {kind: self._raw(kind)["counters"] for kind in kinds}

    def combined(self, name: str, kinds: Sequence[str], since: Optional[dict[str, dict[str, float]]] = None) -> KindStats:
        """Several kinds' figures as one (e.g. `embed` and `embed_batch` as "embedding").

        With `since` (a `snapshot`), only the calls recorded after it count,
        without touching the shared figures every other reader sees.
        """
        raws = [_after(self._raw(kind), (since or {}).get(kind)) for kind in kinds]

        def total(counter: str) -> float:
            return sum(raw["counters"].get(counter, 0.0) for raw in raws)

        count, success = int(total("count")), int(total("success"))
        firsts = [raw["counters"]["first_at"] for raw in raws if "first_at" in raw["counters"]]
        lasts = [raw["counters"]["last_at"] for raw in raws if "last_at" in raw["counters"]]
        span = max(lasts) - min(firsts) if firsts and lasts else 0.0
        tps = [v for raw in raws for v in raw["tps"]]
        sample_names = sorted({n for raw in raws for n in raw["samples"]})
        total_names = sorted({k for raw in raws for k in raw["counters"] if k.startswith("total:")})
        return KindStats(
            kind=name,
            count=count,
            success=success,
            failures=int(total("failures")),
            expired=int(total("expired")),
            cancelled=int(total("cancelled")),
            success_rate=success / count if count else None,
            rate_per_s=(count - 1) / span if count > 1 and span > 0 else None,
            latency_ms=latency_stats([v for raw in raws for v in raw["latency"]]),
            tokens_per_second=sum(tps) / len(tps) if tps else None,
            prompt_tokens=int(total("prompt_tokens")),
            output_tokens=int(total("output_tokens")),
            totals={k[len("total:"):]: total(k) for k in total_names},
            samples={n: latency_stats([v for raw in raws for v in raw["samples"].get(n, [])]) for n in sample_names},
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


def _after(raw: dict[str, Any], baseline: Optional[dict[str, float]]) -> dict[str, Any]:
    """A kind's figures less those already there at `baseline`.

    Counters subtract; the windows hold the newest values first, and one value
    per successful call, so the calls since are the window's first entries.
    """
    if baseline is None:
        return raw
    counters = dict(raw["counters"])
    for key, value in baseline.items():
        if key not in ("first_at", "last_at"):
            counters[key] = counters.get(key, 0.0) - value
    new = int(counters.get("success", 0))
    if counters.get("count", 0) > 0 and "last_at" in baseline:
        counters["first_at"] = baseline["last_at"]
    elif counters.get("count", 0) <= 0:
        counters.pop("first_at", None)
        counters.pop("last_at", None)
    return {
        "counters": counters,
        "latency": raw["latency"][:new],
        "tps": raw["tps"][:new],
        "samples": {name: values[:new] for name, values in raw["samples"].items()},
    }


def _summed(parts) -> dict[str, float]:
    sums: dict[str, float] = {}
    for part in parts:
        for name, amount in part.items():
            sums[name] = sums.get(name, 0.0) + amount
    return sums


def with_database(url: str, database: int) -> str:
    """A redis:// URL with its database number replaced."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CallRecord(BaseModel):
    """One call of a kind, as it is recorded: its outcome and latency, and on success its
    tokens, its rate and the kind's own sums and samples. A failure may be a call whose
    deadline passed before it started (`expired`) or one a caller cancelled (`cancelled`)."""

    kind: str
    ok: bool
    latency_ms: float
    prompt_tokens: int = 0
    output_tokens: int = 0
    tokens_per_second: Optional[float] = None
    totals: dict[str, float] = {}
    samples: dict[str, float] = {}
    # When it ended (epoch seconds).
    at: float
    expired: bool = False
    cancelled: bool = False


class MetricsStore(MetricsReader):
    """Reads and writes the metrics (the workers' `MetricsSink`); `client` is any redis-py client (fakeredis in unit tests)."""

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
        self.record_many([
            CallRecord(
                kind=kind, ok=ok, latency_ms=latency_ms, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                tokens_per_second=tokens_per_second, totals=totals or {}, samples=samples or {},
                at=time.time() if at is None else at, expired=expired, cancelled=cancelled,
            )
        ])

    def record_many(self, calls: Sequence[CallRecord]) -> None:
        """Calls of any kinds, oldest first, in one round trip: the same figures as
        recording each alone, each counter raised once by their sum."""
        if not calls:
            return
        by_kind: dict[str, list[CallRecord]] = {}
        for call in calls:
            by_kind.setdefault(call.kind, []).append(call)
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(self._key("kinds"), *by_kind)
        for kind, kind_calls in by_kind.items():
            self._add(pipe, kind, kind_calls)
        pipe.execute()

    def _add(self, pipe, kind: str, calls: list[CallRecord]) -> None:
        counters = self._key(kind)
        pipe.hincrby(counters, "count", len(calls))
        pipe.hsetnx(counters, "first_at", min(call.at for call in calls))
        pipe.hset(counters, "last_at", max(call.at for call in calls))
        ok = [call for call in calls if call.ok]
        if ok:
            pipe.hincrby(counters, "success", len(ok))
            pipe.hincrby(counters, "prompt_tokens", sum(call.prompt_tokens for call in ok))
            pipe.hincrby(counters, "output_tokens", sum(call.output_tokens for call in ok))
            for name, amount in _summed(call.totals for call in ok).items():
                pipe.hincrbyfloat(counters, f"total:{name}", amount)
            buckets: dict[float, int] = {}
            for call in ok:
                bound = next((b for b in LATENCY_BUCKETS_MS if call.latency_ms <= b), math.inf)
                buckets[bound] = buckets.get(bound, 0) + 1
            for bound, count in buckets.items():
                pipe.hincrby(self._key(kind, "histogram"), str(bound), count)
            pipe.hincrbyfloat(counters, "latency_sum_ms", sum(call.latency_ms for call in ok))
            self._push(pipe, self._key(kind, "latency"), [call.latency_ms for call in ok])
            rates = [call.tokens_per_second for call in ok if call.tokens_per_second is not None]
            if rates:
                self._push(pipe, self._key(kind, "tps"), rates)
            names = list(dict.fromkeys(name for call in ok for name in call.samples))
            for name in names:
                pipe.sadd(self._key(kind, "samples"), name)
                self._push(pipe, self._key(kind, f"sample:{name}"), [call.samples[name] for call in ok if name in call.samples])
        failed = [call for call in calls if not call.ok]
        if failed:
            pipe.hincrby(counters, "failures", len(failed))
            if expired := sum(call.expired for call in failed):
                pipe.hincrby(counters, "expired", expired)
            if cancelled := sum(call.cancelled for call in failed):
                pipe.hincrby(counters, "cancelled", cancelled)

    def sample(self, kind: str, name: str, value: float) -> None:
        """One value of a kind's sample, apart from a call's record (a stage measuring part of its work)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.sadd(self._key(kind, "samples"), name)
        self._push(pipe, self._key(kind, f"sample:{name}"), [value])
        pipe.execute()

    def _push(self, pipe, key: str, values: list[float]) -> None:
        """Oldest first: the window keeps the newest at its head."""
        pipe.lpush(key, *values)
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
