"""Cancel requests, kept in Redis where every worker process looks for them.

A caller's cancel (`AthenaClient.cancel`) writes one key per task. A worker
looks for it before it starts a task (one that waited in the queue while its
cancel reached no live worker), and while a generation runs, every few
milliseconds (workers/generation_watch.py). Celery's own revoke reaches only
the workers up at that moment and forgets on restart; this key does not.
"""

from __future__ import annotations

from typing import Iterable

import redis

CANCEL_PREFIX = "athena:cancel:"
# Longer than any task can wait for a worker or a retry (the visibility timeout is 2 h).
CANCEL_TTL_S = 24 * 3600


def cancel_key(task_id: str) -> str:
    return f"{CANCEL_PREFIX}{task_id}"


class CancelRequests:
    """`client` is any redis-py client (fakeredis in unit tests)."""

    def __init__(self, client: redis.Redis, *, ttl_s: int = CANCEL_TTL_S) -> None:
        self.redis = client
        self._ttl_s = ttl_s

    def request(self, task_id: str) -> None:
        self.redis.set(cancel_key(task_id), 1, ex=self._ttl_s)

    def requested(self, task_id: str) -> bool:
        return bool(self.redis.exists(cancel_key(task_id)))

    def which(self, task_ids: Iterable[str]) -> set[str]:
        """Those of `task_ids` a caller has cancelled, in one round trip."""
        ids = list(task_ids)
        if not ids:
            return set()
        found = self.redis.mget([cancel_key(task_id) for task_id in ids])
        return {task_id for task_id, value in zip(ids, found) if value is not None}
