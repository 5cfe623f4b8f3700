"""The lease that keeps a second runner off a job that already has one.

A runner takes the lease before it touches a job and renews it as it goes; a
runner that dies stops renewing, and once the lease runs out the job can be
resumed by another. Only the holder (by its token) can renew or release it.
"""

from __future__ import annotations

from typing import Optional

import redis

from athena_client.shared_redis.job_store import lease_key


class JobLeases:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @staticmethod
    def _key(job_id: str) -> str:
        # Its layout is the job store's, which caps a held lease's TTL at the record's when the job ends.
        return lease_key(job_id)

    def acquire(self, job_id: str, token: str, lease_s: float) -> bool:
        return bool(self.redis.set(self._key(job_id), token, nx=True, px=int(lease_s * 1000)))

    def renew(self, job_id: str, token: str, lease_s: float) -> bool:
        """Extend the lease, only for the runner that holds it."""
        key = self._key(job_id)
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) != token.encode():
                    return False
                pipe.multi()
                pipe.pexpire(key, int(lease_s * 1000))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def release(self, job_id: str, token: str) -> None:
        if self.redis.get(self._key(job_id)) == token.encode():
            self.redis.delete(self._key(job_id))

    def holder(self, job_id: str) -> Optional[str]:
        value = self.redis.get(self._key(job_id))
        return value.decode() if value else None

    def left_s(self, job_id: str) -> float:
        return max(0.0, self.redis.pttl(self._key(job_id)) / 1000)
