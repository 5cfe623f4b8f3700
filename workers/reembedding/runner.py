"""The re-embedding job runner: a store's rows, in token-sized batches, through
the bulk lane and back into the store, with a bounded window in flight.

Batches are finished in the order they were sent, and each covers a
contiguous stretch of rows, so after every batch the job's cursor and counts
move forward together (one Redis MULTI). A runner killed at any point is
resumed from that cursor; rows it wrote past the cursor are up to date by
then and are counted as skipped.

What made the vectors is named by their space (`vector_space`: served model,
embedding profile, size), as the lane answers the runner's probe: the store
is prepared for that space (and refuses a place holding another), the cache
is keyed by it, and a batch made in another space stops the job.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

from athena_client.contract.errors import AthenaError, JobError, ServerTimeout
from athena_client.contract.jobs import ItemError, JobState, JobStatus
from athena_client.contract.payloads import VectorOrigin
from athena_client.shared_redis.job_store import JobStore
from athena_client.shared_redis.redis_connect import redis_client
from athena_client.transport import TaskTransport
from athena_inference.config.settings import Settings
from athena_inference.workers.reembedding.embedding_cache import EmbeddingCache
from athena_inference.workers.reembedding.lane import CeleryLane, EmbeddingLane
from athena_inference.workers.reembedding.lease import JobLeases
from athena_inference.workers.reembedding.stores import MemoryStore, StoreRow, open_store

log = logging.getLogger(__name__)

# A batch that failed as a whole (lane down, timeout) is sent this many times in all.
BATCH_ATTEMPTS = 3
ROWS_PER_CHECKPOINT = 1000


def estimated_tokens(text: str) -> int:
    # A byte-based estimate is enough to even out batch sizes; the server's exact
    # count still refuses a text that is too long for one input.
    return len(text.encode("utf-8")) // 4 + 2


@dataclass
class Batch:
    last_position: int = -1
    texts: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    rows: list[StoreRow] = field(default_factory=list)
    deferred: list[StoreRow] = field(default_factory=list)
    failed: list[tuple[StoreRow, ItemError]] = field(default_factory=list)
    cached: dict[str, list[float]] = field(default_factory=dict)
    skipped: int = 0
    tokens: int = 0
    handle: Optional[str] = None
    attempts: int = 0

    @property
    def rows_seen(self) -> int:
        return len(self.rows) + len(self.deferred) + len(self.failed) + self.skipped


@dataclass
class Progress:
    state: JobState
    texts_sent: int


class ReembedRunner:
    def __init__(
        self,
        job_id: str,
        *,
        jobs: JobStore,
        leases: JobLeases,
        store: MemoryStore,
        lane: EmbeddingLane,
        cache: EmbeddingCache,
        lease_s: float = 30.0,
        batch_timeout_s: float = 300.0,
        on_progress: Callable[[Progress], None] = lambda progress: None,
    ) -> None:
        self.job_id = job_id
        self.jobs, self.leases, self.store, self.lane, self.cache = jobs, leases, store, lane, cache
        self.lease_s, self.batch_timeout_s = lease_s, batch_timeout_s
        self.on_progress = on_progress
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.texts_sent = 0
        self._renewed = 0.0
        self._cancelled = False
        # Texts sent and not yet back, and rows of later batches waiting on them.
        self._in_flight: Counter[str] = Counter()
        self._waiting: Counter[str] = Counter()
        self._recent: dict[str, tuple[Union[list[float], ItemError], Optional[str]]] = {}

    # --- the job ---

    def run(self, wait_for_lease_s: float = 0.0) -> JobState:
        """Run the job to its end (or its cancel) and return its final state.

        A completed job, or a cancelled one whose cancel still stands, is left
        as it is; `JobStore.clear_cancel` is how a cancelled job is resumed.
        """
        try:
            self._take_lease(wait_for_lease_s)
        except JobError:
            self._close()
            raise
        try:
            state = self.jobs.get(self.job_id)
            if state.status is JobStatus.COMPLETED or state.cancel_requested:
                if state.cancel_requested and not state.status.terminal:
                    self.jobs.set_status(self.job_id, JobStatus.CANCELLED)
                return self.jobs.get(self.job_id)
            self._start(state)
            if self._work(self.jobs.get(self.job_id)):
                self.jobs.set_status(self.job_id, JobStatus.CANCELLED)
            else:
                self.jobs.set_status(self.job_id, JobStatus.FINISHING)
                self.store.finish()
                self.jobs.set_status(self.job_id, JobStatus.COMPLETED)
            return self.jobs.get(self.job_id)
        except AthenaError as exc:
            self.jobs.set_status(self.job_id, JobStatus.FAILED, f"{exc.__class__.__name__}: {exc}")
            raise
        except BaseException as exc:
            # Ctrl-C or a bug: the job stays resumable from its last checkpoint.
            self.jobs.set_status(self.job_id, JobStatus.FAILED, f"interrupted: {exc.__class__.__name__}: {exc}")
            raise
        finally:
            self.leases.release(self.job_id, self.token)
            self._close()

    def _close(self) -> None:
        self.store.close()
        self.lane.close()

    def _take_lease(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while not self.leases.acquire(self.job_id, self.token, self.lease_s):
            holder = self.leases.holder(self.job_id)
            left = self.leases.left_s(self.job_id)
            if time.monotonic() + min(left, 0.5) > deadline:
                raise JobError(
                    f"job {self.job_id} is held by runner {holder}; if that runner is gone, "
                    f"its lease runs out in {left:.0f} s and the job can be resumed then"
                )
            time.sleep(min(left, 0.5) or 0.05)
        self._renewed = time.monotonic()

    def _start(self, state: JobState) -> None:
        self.origin: VectorOrigin = self.lane.probe(self.batch_timeout_s)
        self.space = self.origin.space
        expected = state.request.expected_model
        if expected and expected not in (self.origin.model, self.space):
            raise JobError(f"the bulk lane serves {self.space!r}, not the expected model {expected!r}; nothing was written")
        # Refuses, before anything is written, a place that holds another space's vectors.
        self.store.prepare(self.origin)
        began = state.space or state.model
        if began and began != self.space:
            # A place of its own (a side table named after a new model, say): the pass starts over there.
            log.warning("job %s began in %s; the lane now makes %s, so the pass starts over", self.job_id, began, self.space)
            self.jobs.reset_progress(self.job_id)
        self.jobs.start(
            self.job_id, runner=self.token, model=self.origin.model, profile=self.origin.profile,
            dimension=self.origin.dimension, space=self.space, total=self.store.count(),
        )

    def _work(self, state: JobState) -> bool:
        """Go through the rows; True when stopped by a cancel."""
        request = state.request
        pending: deque[Batch] = deque()
        batch = Batch(last_position=state.cursor)
        self._report()
        for row in self.store.rows(state.cursor):
            self._add(batch, row)
            full = batch.tokens >= request.batch_tokens or len(batch.texts) >= request.batch_texts
            # Rows that need no work close a batch too, so a re-run's cursor keeps moving.
            if full or batch.rows_seen >= ROWS_PER_CHECKPOINT:
                pending.append(self._dispatch(batch))
                batch = Batch(last_position=batch.last_position)
                while pending and (len(pending) >= request.window or self._lane_full(request.window)):
                    self._finish(pending.popleft())
                if self.jobs.cancel_requested(self.job_id):
                    self._cancelled = True
                    break
            self._keep_lease()
        else:
            if batch.rows_seen:
                pending.append(self._dispatch(batch))
        while pending:
            self._finish(pending.popleft())
        return self._cancelled

    # --- batches ---

    def _add(self, batch: Batch, row: StoreRow) -> None:
        batch.last_position = row.position
        if row.problem is not None:
            batch.failed.append((row, ItemError(id=row.id, error="InvalidInput", message=row.problem)))
        elif not row.content.strip():
            batch.failed.append((row, ItemError(id=row.id, error="InvalidInput", message="text is empty or only whitespace")))
        elif row.up_to_date:
            batch.skipped += 1
        elif row.content_sha256 in batch.index:
            batch.rows.append(row)
        elif self._in_flight[row.content_sha256]:
            self._waiting[row.content_sha256] += 1
            batch.deferred.append(row)
        else:
            batch.index[row.content_sha256] = len(batch.texts)
            batch.texts.append(row.content)
            batch.hashes.append(row.content_sha256)
            batch.rows.append(row)
            batch.tokens += estimated_tokens(row.content)

    def _dispatch(self, batch: Batch) -> Batch:
        batch.cached = self.cache.get_many(self.space, batch.hashes)
        if batch.cached:
            keep = [i for i, sha in enumerate(batch.hashes) if sha not in batch.cached]
            batch.texts = [batch.texts[i] for i in keep]
            batch.hashes = [batch.hashes[i] for i in keep]
            batch.index = {sha: i for i, sha in enumerate(batch.hashes)}
        self._in_flight.update(batch.hashes)
        self._send(batch)
        return batch

    def _send(self, batch: Batch) -> None:
        if batch.texts:
            batch.attempts += 1
            batch.handle = self.lane.submit(batch.texts)
            self.texts_sent += len(batch.texts)

    def _lane_full(self, window: int) -> bool:
        # Other jobs share the lane: hold back while it already has a window's worth queued.
        return self.lane.backlog() >= window

    def _collect(self, batch: Batch):
        while True:
            deadline = time.monotonic() + self.batch_timeout_s
            try:
                while True:
                    wait = min(self.lease_s / 3, deadline - time.monotonic())
                    try:
                        return self.lane.collect(batch.handle, max(wait, 0.01))
                    except ServerTimeout:
                        self._keep_lease()
                        if time.monotonic() >= deadline:
                            raise
            except AthenaError as exc:
                if isinstance(exc, JobError) or batch.attempts >= BATCH_ATTEMPTS:
                    raise JobError(
                        f"a batch of {len(batch.texts)} texts failed {batch.attempts} times ({exc.__class__.__name__}: {exc}); "
                        f"the job stopped at row position {batch.last_position} and can be resumed"
                    ) from None
                log.warning("batch failed (%s: %s); sending it again", exc.__class__.__name__, exc)
                self._send(batch)

    def _finish(self, batch: Batch) -> None:
        vectors: dict[str, Union[list[float], ItemError]] = dict(batch.cached)
        notes: dict[str, str] = {}
        if batch.handle is not None:
            result = self._collect(batch)
            # A batch whose every text failed before reaching the server names no model, and made no vector.
            if result.model and result.space != self.space:
                raise JobError(
                    f"the bulk lane switched from {self.space!r} to {result.space!r} during the job; nothing of this batch "
                    "was written. Put the lane back and resume the job, or start a new job into another place"
                )
            for sha, vector, error in zip(batch.hashes, result.embeddings, result.errors, strict=True):
                vectors[sha] = vector if vector is not None else error
            notes = {sha: note for sha, note in zip(batch.hashes, result.notes) if note}
            for sha in batch.hashes:
                self._in_flight[sha] -= 1
                if not self._in_flight[sha]:
                    del self._in_flight[sha]
            # A truncated or chunked vector is not cached: the cache keeps no note, and such texts are rare.
            fresh = {sha: v for sha, v in vectors.items() if isinstance(v, list) and sha not in batch.cached and sha not in notes}
            self.cache.put_many(self.space, fresh)
            for sha in batch.hashes:
                if self._waiting[sha]:
                    self._recent[sha] = (vectors[sha], notes.get(sha))
        for row in batch.deferred:
            vectors[row.content_sha256], note = self._recent[row.content_sha256]
            if note:
                notes[row.content_sha256] = note
            self._waiting[row.content_sha256] -= 1
            if not self._waiting[row.content_sha256]:
                del self._waiting[row.content_sha256], self._recent[row.content_sha256]
        done: list[tuple[StoreRow, list[float]]] = []
        failed = list(batch.failed)
        for row in [*batch.rows, *batch.deferred]:
            outcome = vectors[row.content_sha256]
            if isinstance(outcome, list):
                done.append((row.model_copy(update={"note": notes.get(row.content_sha256)}), outcome))
            else:
                failed.append((row, outcome.model_copy(update={"id": row.id})))
        changed = self.store.write(done, [row for row, _ in failed])
        failed += [
            (row, ItemError(id=row.id, error="ContentChanged", message="the text changed while the job ran; run the job again to embed the new text"))
            for row in changed
        ]
        # What became of a failed row's vector (in place: kept, or cleared) is part of its error.
        after = getattr(self.store, "failure_note", None)
        errors = [error.model_copy(update={"message": f"{error.message}; {after}"}) if after else error for _, error in failed]
        kept = {row.id for row in changed}
        written_notes = [row.note for row, _ in done if row.note and row.id not in kept]
        self.jobs.checkpoint(
            self.job_id,
            cursor=batch.last_position,
            completed=len(done) - len(changed),
            failed=errors,
            skipped=batch.skipped,
            chunked=written_notes.count("chunked"),
            truncated=written_notes.count("truncated"),
        )
        self._report()

    # --- lease and progress ---

    def _keep_lease(self) -> None:
        now = time.monotonic()
        if now - self._renewed >= self.lease_s / 3:
            if not self.leases.renew(self.job_id, self.token, self.lease_s):
                raise JobError(f"runner {self.token} lost its lease on job {self.job_id} (paused longer than {self.lease_s:.0f} s?)")
            self._renewed = now

    def _report(self) -> None:
        self.on_progress(Progress(self.jobs.get(self.job_id), self.texts_sent))


def iter_progress(jobs: JobStore, job_id: str, interval_s: float = 0.5) -> Iterator[JobState]:
    """A job's state every `interval_s` until it ends, for watchers in other processes."""
    while True:
        state = jobs.get(job_id)
        yield state
        if state.status.terminal:
            return
        time.sleep(interval_s)


def build_runner(job_id: str, settings: Settings, on_progress: Callable[[Progress], None] = lambda progress: None) -> ReembedRunner:
    """A runner wired to the real seams named by `settings` (broker, Redis, the job's store)."""
    client = redis_client(settings.result_backend)
    jobs = JobStore(client, ttl_s=settings.job_ttl_s)
    state = jobs.get(job_id)
    return ReembedRunner(
        job_id,
        jobs=jobs,
        leases=JobLeases(client),
        store=open_store(state.request.source, dimensions=state.request.dimensions),
        lane=CeleryLane(
            TaskTransport.connect(settings.broker_url, settings.result_backend, timeout=settings.job_batch_timeout_s),
            long_text=state.request.long_text,
            dimensions=state.request.dimensions,
        ),
        # The cache's own database: its keys expire and may be evicted, apart from the jobs' records.
        cache=EmbeddingCache(redis_client(settings.cache_redis_url), settings.embedding_cache_ttl_s),
        lease_s=settings.job_lease_s,
        batch_timeout_s=settings.job_batch_timeout_s,
        on_progress=on_progress,
    )
