"""One circuit breaker per model server, shared by every worker process through Redis.

When a server fails (refused connection, 503 while it loads), the breaker opens
for a cooldown: every process's calls to that server fail at once with
`ServerUnavailable` (their tasks retry later) instead of each hammering a dead
server. When the cooldown is over, one process (whichever takes the probe
lock) tries the server; its success closes the breaker, its failure opens it
again for twice as long, up to a cap.

A process that found the breaker closed trusts that for `recheck_s` (a quarter
of a second) before it reads Redis again, so a healthy server costs its calls
no round trip each; a breaker another process opened reaches this one within
that time, and this process's own failures open it at once.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import redis

from athena_client.contract.errors import ServerUnavailable

PREFIX = "athena:breaker:"


class CircuitBreaker:
    def __init__(
        self,
        client: redis.Redis,
        server: str,
        *,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 10.0,
        recheck_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis, self.server = client, server
        self.cooldown_s, self.max_cooldown_s, self.recheck_s = cooldown_s, max_cooldown_s, recheck_s
        self._clock = clock
        self._closed_until = float("-inf")
        self._key = PREFIX + server
        # Whether this process saw the breaker open: only then must a success close it.
        self._open_seen = False

    def before_call(self) -> None:
        """Refuse at once while the breaker is open; after its cooldown, let one caller probe."""
        now = self._clock()
        if now < self._closed_until:
            return
        state = self.redis.hmget(self._key, "open_until", "cooldown")
        if state[0] is None:
            self._closed_until = now + self.recheck_s
            return
        self._open_seen = True
        open_until, cooldown = float(state[0]), float(state[1] or self.cooldown_s)
        left = open_until - self._clock()
        if left > 0:
            raise self._refusal(left, "its circuit is open after failures")
        # One probe per cooldown, across every process.
        if not self.redis.set(self._key + ":probe", "1", nx=True, px=max(1, int(cooldown * 1000))):
            raise self._refusal(min(cooldown, 1.0), "another worker is probing it")

    def success(self) -> None:
        if self._open_seen:
            self.redis.delete(self._key, self._key + ":probe")
            self._open_seen = False

    def failure(self) -> float:
        """Open the breaker (longer each time it fails again); returns its cooldown."""
        self._closed_until = float("-inf")
        previous = self.redis.hget(self._key, "cooldown")
        cooldown = min(self.max_cooldown_s, float(previous) * 2) if previous else self.cooldown_s
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key, mapping={"open_until": self._clock() + cooldown, "cooldown": cooldown})
        # The record outlives its cooldown a little, so the next failure can double it.
        pipe.expire(self._key, int(cooldown * 4) + 60)
        pipe.delete(self._key + ":probe")
        pipe.execute()
        self._open_seen = True
        return cooldown

    def _refusal(self, retry_after: float, why: str) -> ServerUnavailable:
        error = ServerUnavailable(f"{self.server} is not being called: {why}; retrying in {retry_after:.1f} s")
        error.retry_after = retry_after
        return error

    def state(self) -> Optional[float]:
        """Seconds the breaker stays open, or None when it is closed."""
        open_until = self.redis.hget(self._key, "open_until")
        return None if open_until is None else max(0.0, float(open_until) - self._clock())
