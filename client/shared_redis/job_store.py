"""Re-embedding jobs' records in Redis: one hash per job and a list of its item errors.

The client creates, reads and cancels jobs here; the runner
(`athena_inference.workers.reembedding`) writes its progress here, and holds
the job through a lease of its own (`workers/reembedding/lease.py`).

Counts and the cursor move together in one MULTI, so a runner killed at any
moment leaves a state it (or the next runner) can resume from. A job that has
ended (completed, failed, cancelled) keeps its record and errors for `ttl_s`
(ATHENA_JOB_TTL_S), then Redis drops them; resuming it keeps them again.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from typing import Optional, Sequence

import redis

from athena_client.contract.errors import ConfigurationError, JobError, JobNotFound
from athena_client.contract.jobs import ItemError, JobCounts, JobState, JobStatus, ReembedRequest
from athena_client.shared_redis.redis_connect import redis_client

PREFIX = "athena:job:"
INDEX = "athena:jobs"
_COUNTS = ("total", "completed", "failed", "skipped", "chunked", "truncated")
# A week: long enough to read a finished job's errors and switch its vectors in.
DEFAULT_JOB_TTL_S = 7 * 86400


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def job_ttl_from_env() -> int:
    """ATHENA_JOB_TTL_S for a client that has no settings object; the default when unset."""
    raw = os.environ.get("ATHENA_JOB_TTL_S")
    if raw is None:
        return DEFAULT_JOB_TTL_S
    # As the workers' settings read it: at least a minute (EXPIRE 0 would delete the record at once).
    if not raw.strip().isdigit() or int(raw) < 60:
        raise ConfigurationError(f"ATHENA_JOB_TTL_S must be a whole number of seconds, at least 60, not {raw!r}")
    return int(raw)


def lease_key(job_id: str) -> str:
    """The key of a job's runner lease (`workers/reembedding/lease.py`)."""
    return PREFIX + job_id + ":lease"


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int = DEFAULT_JOB_TTL_S) -> None:
        self.redis = client
        self.ttl_s = ttl_s

    @classmethod
    def from_url(cls, url: str, *, ttl_s: int = DEFAULT_JOB_TTL_S) -> "JobStore":
        return cls(redis_client(url), ttl_s=ttl_s)

    # --- keys ---

    @staticmethod
    def _key(job_id: str) -> str:
        return PREFIX + job_id

    @staticmethod
    def _errors_key(job_id: str) -> str:
        return PREFIX + job_id + ":errors"

    # --- life cycle ---

    def create(self, request: ReembedRequest, job_id: Optional[str] = None) -> JobState:
        job_id = job_id or uuid.uuid4().hex[:16]
        created = _now()
        fields = {"request": request.model_dump_json(), "status": JobStatus.QUEUED.value, "cursor": -1, "created_at": created}
        fields.update({name: 0 for name in _COUNTS})
        if not self.redis.hsetnx(self._key(job_id), "request", fields["request"]):
            raise JobError(f"job {job_id} already exists")
        pipe = self.redis.pipeline()
        pipe.hset(self._key(job_id), mapping=fields)
        pipe.zadd(INDEX, {job_id: datetime.now(timezone.utc).timestamp()})
        pipe.execute()
        return self.get(job_id)

    def get(self, job_id: str) -> JobState:
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(job_id)).items()}
        if "status" not in raw:
            raise JobNotFound(f"no re-embedding job {job_id!r}; `athena-inference reembed list` shows the known ones")
        return JobState(
            job_id=job_id,
            status=JobStatus(raw["status"]),
            request=ReembedRequest.model_validate_json(raw["request"]),
            counts=JobCounts(**{name: int(raw.get(name, 0)) for name in _COUNTS}),
            model=raw.get("model") or None,
            profile=raw.get("profile") or None,
            dimension=int(raw["dimension"]) if raw.get("dimension") else None,
            space=raw.get("space") or None,
            cursor=int(raw.get("cursor", -1)),
            created_at=raw["created_at"],
            started_at=raw.get("started_at") or None,
            finished_at=raw.get("finished_at") or None,
            error=raw.get("error") or None,
            cancel_requested=raw.get("cancel_requested") == "1",
            runner=raw.get("runner") or None,
        )

    def job_ids(self, limit: int = 50) -> list[str]:
        return [j.decode() for j in self.redis.zrevrange(INDEX, 0, limit - 1)]

    def recent(self, limit: int = 50) -> list[JobState]:
        """The latest jobs still on record; ids whose record has expired leave the index."""
        states, gone = [], []
        for job_id in self.job_ids(limit):
            try:
                states.append(self.get(job_id))
            except JobNotFound:
                gone.append(job_id)
        if gone:
            self.redis.zrem(INDEX, *gone)
        return states

    def start(self, job_id: str, *, runner: str, model: str, dimension: int, total: int, profile: str = "", space: str = "") -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self._key(job_id),
            mapping={
                "status": JobStatus.RUNNING.value,
                "runner": runner,
                "model": model,
                "profile": profile,
                "dimension": dimension,
                "space": space,
                "total": total,
                "started_at": _now(),
                "error": "",
                "cancel_requested": 0,
            },
        )
        self._keep(pipe, job_id)
        pipe.execute()

    def set_status(self, job_id: str, status: JobStatus, error: str = "") -> None:
        fields: dict[str, str] = {"status": status.value, "error": error}
        if status.terminal:
            fields["finished_at"] = _now()
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(job_id), mapping=fields)
        if status.terminal:
            self._expire(pipe, job_id)
        else:
            self._keep(pipe, job_id)
        pipe.execute()

    # --- how long a record stays ---

    def _expire(self, pipe: redis.client.Pipeline, job_id: str) -> None:
        pipe.expire(self._key(job_id), self.ttl_s)
        pipe.expire(self._errors_key(job_id), self.ttl_s)
        # A held lease keeps its own short TTL (LT: only ever shortened), so a
        # runner that dies now still frees the job for a resume within seconds.
        pipe.expire(lease_key(job_id), self.ttl_s, lt=True)

    def _keep(self, pipe: redis.client.Pipeline, job_id: str) -> None:
        pipe.persist(self._key(job_id))
        pipe.persist(self._errors_key(job_id))

    def checkpoint(
        self,
        job_id: str,
        *,
        cursor: int,
        completed: int = 0,
        failed: Sequence[ItemError] = (),
        skipped: int = 0,
        chunked: int = 0,
        truncated: int = 0,
    ) -> None:
        """Count one contiguous stretch of rows as dealt with, up to `cursor`."""
        pipe = self.redis.pipeline(transaction=True)
        key = self._key(job_id)
        pipe.hincrby(key, "completed", completed)
        pipe.hincrby(key, "chunked", chunked)
        pipe.hincrby(key, "truncated", truncated)
        pipe.hincrby(key, "failed", len(failed))
        pipe.hincrby(key, "skipped", skipped)
        pipe.hset(key, "cursor", cursor)
        if failed:
            pipe.rpush(self._errors_key(job_id), *(error.model_dump_json() for error in failed))
        pipe.execute()

    def reset_progress(self, job_id: str) -> None:
        """Forget counts and cursor, for a job that must start its pass over (another model)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(job_id), mapping={"cursor": -1, **{name: 0 for name in _COUNTS}})
        pipe.delete(self._errors_key(job_id))
        pipe.execute()

    def errors(self, job_id: str, start: int = 0, stop: int = -1) -> list[ItemError]:
        return [ItemError.model_validate_json(raw) for raw in self.redis.lrange(self._errors_key(job_id), start, stop)]

    # --- cancel ---

    def request_cancel(self, job_id: str) -> JobState:
        """A queued job is cancelled at once; a running one stops after its batches in flight."""
        state = self.get(job_id)
        if state.status.terminal:
            return state
        self.redis.hset(self._key(job_id), "cancel_requested", 1)
        if state.status is JobStatus.QUEUED:
            self.set_status(job_id, JobStatus.CANCELLED)
        return self.get(job_id)

    def clear_cancel(self, job_id: str) -> None:
        """Let a cancelled job be resumed; a resumed job's record no longer expires."""
        self.get(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(job_id), "cancel_requested", 0)
        self._keep(pipe, job_id)
        pipe.execute()

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self._key(job_id), "cancel_requested") == b"1"


def state_json(state: JobState) -> str:
    """A job's state for printing, with the store's password-bearing DSN left out."""
    data = state.model_dump(mode="json")
    source = data["request"]["source"]
    if "dsn" in source:
        source["dsn"] = "<hidden>"
    data["progress"] = round(state.progress, 4)
    return json.dumps(data, indent=2)
