"""The runner's logic, over a JSONL store, with fakeredis and an in-process lane.

The real lane (Celery + llama-server) and PostgreSQL are in test_reembed_integration.py.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import fakeredis
import numpy as np
import pytest

from athena_client.contract.errors import InvalidInput, JobError, ServerUnavailable
from athena_client.contract.jobs import EmbedBulkResult, ItemError, JobStatus, JsonlSource, ReembedRequest
from athena_client.contract.payloads import TaskTiming, VectorOrigin, vector_space
from athena_client.shared_redis.job_store import JobStore
from athena_inference.workers.reembedding.embedding_cache import EmbeddingCache
from athena_inference.workers.reembedding.stores import JsonlStore
from athena_inference.workers.reembedding.lease import JobLeases
from athena_inference.workers.reembedding.runner import ReembedRunner

MODEL = "fake-model"
PROFILE = "fake-profile"
SPACE = vector_space(MODEL, PROFILE, 4)


def vector_of(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255 for b in digest[:4]]


class InProcessLane:
    """Answers batches at once, like the bulk task would; records every text it embedded."""

    def __init__(self, model: str = MODEL, fail_after_batches: int | None = None, profile: str = PROFILE) -> None:
        self.model, self.profile = model, profile
        self.embedded: list[str] = []
        self.batches: dict[str, list[str]] = {}
        self.fail_after_batches = fail_after_batches

    def submit(self, texts):
        handle = f"b{len(self.batches)}"
        self.batches[handle] = list(texts)
        return handle

    def collect(self, handle, timeout):
        if self.fail_after_batches is not None and len(self.embedded) and int(handle[1:]) >= self.fail_after_batches:
            raise ServerUnavailable("lane down")
        texts = self.batches[handle]
        vectors, errors = [], []
        for i, text in enumerate(texts):
            if len(text) > 200:
                vectors.append(None)
                errors.append(ItemError(id=i, error="InputTooLong", message="too long"))
            else:
                self.embedded.append(text)
                vectors.append(vector_of(text))
                errors.append(None)
        now = datetime.now(timezone.utc)
        timing = TaskTiming(task="athena.embed_bulk", queue="embeddings_bulk", model=self.model, started_at=now, finished_at=now, run_ms=1.0)
        return EmbedBulkResult(embeddings=vectors, errors=errors, dimension=4, model=self.model, profile=self.profile, timing=timing)

    def backlog(self):
        return 0

    def probe(self, timeout):
        return VectorOrigin(model=self.model, profile=self.profile, dimension=4)

    def close(self):
        pass


@pytest.fixture
def redis_client():
    return fakeredis.FakeRedis()


def write_source(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_job(tmp_path, redis_client, lane, output="out.npy", batch_texts=4, window=2, **source):
    jobs = JobStore(redis_client)
    spec = JsonlSource(path=str(tmp_path / "memories.jsonl"), output=str(tmp_path / output), **source)
    job = jobs.create(ReembedRequest(source=spec, batch_texts=batch_texts, window=window))
    runner = ReembedRunner(
        job.job_id, jobs=jobs, leases=JobLeases(redis_client), store=JsonlStore(spec), lane=lane, cache=EmbeddingCache(redis_client, 3600), lease_s=5
    )
    return jobs, job.job_id, runner


def read_npy(tmp_path, name="out"):
    matrix = np.load(tmp_path / f"{name}.npy")
    ids = [json.loads(line) for line in (tmp_path / f"{name}.ids.jsonl").read_text().splitlines()]
    return matrix, ids


def test_every_row_gets_its_vector_in_source_order(tmp_path, redis_client):
    rows = [{"id": i, "content": f"memory number {i}"} for i in range(23)]
    write_source(tmp_path / "memories.jsonl", rows)
    jobs, job_id, runner = run_job(tmp_path, redis_client, InProcessLane())
    state = runner.run()
    assert state.status is JobStatus.COMPLETED
    assert state.counts.model_dump() == {"total": 23, "completed": 23, "failed": 0, "skipped": 0, "chunked": 0, "truncated": 0}
    matrix, ids = read_npy(tmp_path)
    assert [entry["id"] for entry in ids] == list(range(23))
    assert {(entry["model"], entry["profile"], entry["space"]) for entry in ids} == {(MODEL, PROFILE, SPACE)}
    np.testing.assert_allclose(matrix, [vector_of(row["content"]) for row in rows], rtol=1e-6)


def test_duplicate_texts_are_embedded_once(tmp_path, redis_client):
    rows = [{"id": i, "content": f"text {i % 5}"} for i in range(40)]
    write_source(tmp_path / "memories.jsonl", rows)
    lane = InProcessLane()
    _, _, runner = run_job(tmp_path, redis_client, lane, output="out.jsonl")
    assert runner.run().counts.completed == 40
    assert sorted(lane.embedded) == sorted(f"text {i}" for i in range(5))
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([w["embedding"] for w in written], [vector_of(r["content"]) for r in rows], rtol=1e-6)


def test_a_rerun_skips_unchanged_rows_and_redoes_edited_ones(tmp_path, redis_client):
    rows = [{"id": f"m{i}", "content": f"memory {i}"} for i in range(12)]
    write_source(tmp_path / "memories.jsonl", rows)
    run_job(tmp_path, redis_client, InProcessLane())[2].run()
    rows[3]["content"] = "memory three, edited"
    write_source(tmp_path / "memories.jsonl", rows)
    lane = InProcessLane()
    state = run_job(tmp_path, redis_client, lane)[2].run()
    assert (state.counts.completed, state.counts.skipped) == (1, 11)
    assert lane.embedded == ["memory three, edited"]
    matrix, ids = read_npy(tmp_path)
    assert ids[3]["content_sha256"] == hashlib.sha256(b"memory three, edited").hexdigest()
    np.testing.assert_allclose(matrix[3], vector_of("memory three, edited"), rtol=1e-6)


def test_bad_rows_are_reported_one_by_one_and_the_job_goes_on(tmp_path, redis_client):
    lines = [
        json.dumps({"id": 1, "content": "fine"}),
        json.dumps({"id": 2, "content": "   "}),
        "{not json",
        json.dumps({"id": 4, "content": "x" * 500}),
        json.dumps({"id": 5}),
        json.dumps({"id": 6, "content": "also fine"}),
    ]
    (tmp_path / "memories.jsonl").write_text("\n".join(lines) + "\n")
    jobs, job_id, runner = run_job(tmp_path, redis_client, InProcessLane())
    state = runner.run()
    assert state.status is JobStatus.COMPLETED
    assert (state.counts.completed, state.counts.failed) == (2, 4)
    errors = {str(e.id): e.error for e in jobs.errors(job_id)}
    assert errors == {"2": "InvalidInput", "line 3": "InvalidInput", "4": "InputTooLong", "5": "InvalidInput"}
    _, ids = read_npy(tmp_path)
    assert [entry["id"] for entry in ids] == [1, 6]


def test_a_job_that_fails_midway_resumes_without_redoing_or_losing_rows(tmp_path, redis_client):
    rows = [{"id": i, "content": f"memory {i}"} for i in range(30)]
    write_source(tmp_path / "memories.jsonl", rows)
    failing = InProcessLane(fail_after_batches=3)
    jobs, job_id, runner = run_job(tmp_path, redis_client, failing)
    with pytest.raises(JobError, match="can be resumed"):
        runner.run()
    stopped = jobs.get(job_id)
    assert stopped.status is JobStatus.FAILED and 0 < stopped.counts.done < 30

    lane = InProcessLane()
    spec = stopped.request.source
    resumed = ReembedRunner(job_id, jobs=jobs, leases=JobLeases(redis_client), store=JsonlStore(spec), lane=lane, cache=EmbeddingCache(redis_client, 0), lease_s=5)
    state = resumed.run()
    assert state.status is JobStatus.COMPLETED
    assert state.counts.completed + state.counts.skipped == 30
    assert len(lane.embedded) == 30 - stopped.counts.done
    matrix, ids = read_npy(tmp_path)
    assert [entry["id"] for entry in ids] == list(range(30))
    np.testing.assert_allclose(matrix, [vector_of(r["content"]) for r in rows], rtol=1e-6)


def test_cancel_stops_after_the_batches_in_flight_and_leaves_no_output(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": i, "content": f"memory {i}"} for i in range(200)])
    lane = InProcessLane()
    jobs, job_id, runner = run_job(tmp_path, redis_client, lane, batch_texts=2)
    runner.on_progress = lambda progress: progress.state.counts.done >= 10 and jobs.request_cancel(job_id)
    state = runner.run()
    assert state.status is JobStatus.CANCELLED
    assert 10 <= state.counts.completed < 200
    assert not (tmp_path / "out.npy").exists()
    # What was written is exactly what was counted.
    store = JsonlStore(JsonlSource(path=str(tmp_path / "memories.jsonl"), output=str(tmp_path / "out.npy")))
    store.prepare(VectorOrigin(model=MODEL, profile=PROFILE, dimension=4))
    assert sum(row.up_to_date for row in store.rows(-1)) == state.counts.completed


def test_a_job_held_by_a_live_runner_is_refused(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": 1, "content": "one"}])
    jobs, job_id, runner = run_job(tmp_path, redis_client, InProcessLane())
    assert JobLeases(redis_client).acquire(job_id, "someone-else", 30)
    with pytest.raises(JobError, match="held by runner someone-else"):
        runner.run()
    assert jobs.get(job_id).status is JobStatus.QUEUED


def test_the_expected_model_guards_against_a_swapped_lane(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": 1, "content": "one"}])
    jobs = JobStore(redis_client)
    spec = JsonlSource(path=str(tmp_path / "memories.jsonl"), output=str(tmp_path / "out.jsonl"))
    job = jobs.create(ReembedRequest(source=spec, expected_model="nomic-embed-text-v1.5"))
    runner = ReembedRunner(job.job_id, jobs=jobs, leases=JobLeases(redis_client), store=JsonlStore(spec), lane=InProcessLane(), cache=EmbeddingCache(redis_client, 0))
    with pytest.raises(JobError, match="not the expected model"):
        runner.run()
    assert jobs.get(job.job_id).status is JobStatus.FAILED
    assert not (tmp_path / "out.jsonl").exists()


def test_a_job_cancelled_while_queued_does_not_run_until_resumed(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": 1, "content": "one"}])
    lane = InProcessLane()
    jobs, job_id, runner = run_job(tmp_path, redis_client, lane)
    jobs.request_cancel(job_id)
    assert runner.run().status is JobStatus.CANCELLED
    assert lane.embedded == []

    jobs.clear_cancel(job_id)
    spec = jobs.get(job_id).request.source
    again = ReembedRunner(job_id, jobs=jobs, leases=JobLeases(redis_client), store=JsonlStore(spec), lane=lane, cache=EmbeddingCache(redis_client, 0))
    assert again.run().status is JobStatus.COMPLETED
    assert lane.embedded == ["one"]


class ChunkingLane(InProcessLane):
    """Embeds a long text as the bulk task does with long_text="chunk": a vector, noted "chunked"."""

    def collect(self, handle, timeout):
        texts = self.batches[handle]
        result = super().collect(handle, timeout)
        vectors = [vector_of(text) if len(text) > 200 else v for text, v in zip(texts, result.embeddings)]
        return result.model_copy(update={
            "embeddings": vectors,
            "errors": [None] * len(texts),
            "notes": ["chunked" if len(text) > 200 else None for text in texts],
        })


def test_a_chunked_vector_is_written_with_its_note_and_counted(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": 1, "content": "short"}, {"id": 2, "content": "long " * 100}])
    jobs, job_id, runner = run_job(tmp_path, redis_client, ChunkingLane())
    state = runner.run()
    assert (state.counts.completed, state.counts.chunked, state.counts.failed) == (2, 1, 0)
    _, ids = read_npy(tmp_path)
    assert [entry.get("note") for entry in ids] == [None, "chunked"]


# --- vectors carry their space ---


def test_the_job_records_the_model_profile_and_space_the_lane_answered_with(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": 1, "content": "one"}])
    jobs, job_id, runner = run_job(tmp_path, redis_client, InProcessLane())
    state = runner.run()
    assert (state.model, state.profile, state.dimension, state.space) == (MODEL, PROFILE, 4, SPACE)
    assert jobs.get(job_id).space == SPACE


def test_a_lane_of_another_profile_is_refused_before_anything_is_written_and_the_output_is_kept(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": i, "content": f"memory {i}"} for i in range(6)])
    run_job(tmp_path, redis_client, InProcessLane())[2].run()
    published = {name: (tmp_path / name).read_bytes() for name in ("out.npy", "out.ids.jsonl", "out.npy.manifest.json")}
    sidecar = sqlite_rows(tmp_path / "out.npy.state.sqlite")

    # The same model and size, another prefix: vectors that must not sit beside the others.
    other = InProcessLane(profile="fake-profile-with-prefix")
    jobs, job_id, runner = run_job(tmp_path, redis_client, other)
    with pytest.raises(JobError, match=r"refused before any write: .*6 of 'fake-model \[fake-profile, 4-d\]'.*Name another output"):
        runner.run()
    assert jobs.get(job_id).status is JobStatus.FAILED
    assert other.embedded == []
    assert {name: (tmp_path / name).read_bytes() for name in published} == published
    assert sqlite_rows(tmp_path / "out.npy.state.sqlite") == sidecar


def test_another_profile_into_another_output_embeds_every_text_afresh_not_from_the_cache(tmp_path, redis_client):
    rows = [{"id": i, "content": f"memory {i}"} for i in range(6)]
    write_source(tmp_path / "memories.jsonl", rows)
    run_job(tmp_path, redis_client, InProcessLane())[2].run()
    other = InProcessLane(profile="fake-profile-with-prefix")
    state = run_job(tmp_path, redis_client, other, output="other.npy")[2].run()
    assert (state.status, state.counts.completed) == (JobStatus.COMPLETED, 6)
    # The cache holds every text's vector from the first job, in its space only.
    assert sorted(other.embedded) == sorted(row["content"] for row in rows)
    _, ids = read_npy(tmp_path, "other")
    assert {entry["space"] for entry in ids} == {vector_space(MODEL, "fake-profile-with-prefix", 4)}


def test_the_same_space_reuses_the_cache_across_jobs(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": i, "content": f"memory {i}"} for i in range(6)])
    run_job(tmp_path, redis_client, InProcessLane())[2].run()
    again = InProcessLane()
    state = run_job(tmp_path, redis_client, again, output="copy.npy")[2].run()
    assert (state.counts.completed, again.embedded) == (6, [])


class SwitchingLane(InProcessLane):
    """A lane whose worker is restarted on another profile after `after` batches."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def collect(self, handle, timeout):
        result = super().collect(handle, timeout)
        return result.model_copy(update={"profile": "restarted-profile"}) if int(handle[1:]) >= self.after else result


def test_a_lane_that_changes_space_during_the_job_stops_it_before_writing_that_batch(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": i, "content": f"memory {i}"} for i in range(20)])
    jobs, job_id, runner = run_job(tmp_path, redis_client, SwitchingLane(after=2), window=1)
    with pytest.raises(JobError, match=r"switched from 'fake-model \[fake-profile, 4-d\]' to 'fake-model \[restarted-profile, 4-d\]'"):
        runner.run()
    state = jobs.get(job_id)
    assert state.status is JobStatus.FAILED
    # Only the batches made in the job's space were written (4 texts a batch).
    assert {row[1] for row in sqlite_rows(tmp_path / "out.npy.state.sqlite")} == {SPACE}
    assert len(sqlite_rows(tmp_path / "out.npy.state.sqlite")) == state.counts.completed == 8


def test_the_expected_model_may_name_the_whole_space(tmp_path, redis_client):
    write_source(tmp_path / "memories.jsonl", [{"id": 1, "content": "one"}])
    jobs = JobStore(redis_client)
    spec = JsonlSource(path=str(tmp_path / "memories.jsonl"), output=str(tmp_path / "out.jsonl"))
    for expected, status in ((vector_space(MODEL, "another-profile", 4), JobStatus.FAILED), (SPACE, JobStatus.COMPLETED)):
        job = jobs.create(ReembedRequest(source=spec, expected_model=expected))
        runner = ReembedRunner(job.job_id, jobs=jobs, leases=JobLeases(redis_client), store=JsonlStore(spec), lane=InProcessLane(), cache=EmbeddingCache(redis_client, 0))
        try:
            runner.run()
        except JobError as exc:
            assert "not the expected model" in str(exc)
        assert jobs.get(job.job_id).status is status


class RecordingTransport:
    """Takes what CeleryLane sends, and answers like the bulk task."""

    def __init__(self) -> None:
        self.sent = []

    def submit(self, task, request):
        self.sent.append(request)
        return f"t{len(self.sent)}"

    def result(self, task, handle, timeout, allow_in_task=False):
        request = self.sent[int(handle[1:]) - 1]
        size = request.dimensions or 8
        if size not in (8, 4):
            # What the bulk task's Embedder raises for a size its profile does not allow.
            raise InvalidInput(f"dimensions={size}: {PROFILE} vectors can be 8, 4 dimensions long, not {size}")
        now = datetime.now(timezone.utc)
        timing = TaskTiming(task="athena.embed_bulk", queue="embeddings_bulk", model=MODEL, started_at=now, finished_at=now, run_ms=1.0)
        return EmbedBulkResult(
            embeddings=[[1.0] * size for _ in request.texts], errors=[None] * len(request.texts),
            model=MODEL, profile=PROFILE, prefix="passage: ", dimension=size, timing=timing,
        )

    def close(self):
        pass


def test_the_celery_lane_asks_for_documents_at_the_jobs_size_and_probes_its_space():
    from athena_inference.workers.reembedding.lane import CeleryLane

    transport = RecordingTransport()
    lane = CeleryLane(transport, long_text="chunk", dimensions=4)
    origin = lane.probe(5.0)
    lane.submit(["a memory"])
    assert [(r.purpose, r.dimensions, r.long_text) for r in transport.sent] == [("document", 4, "chunk"), ("document", 4, "chunk")]
    assert (origin.model, origin.profile, origin.prefix, origin.dimension, origin.space) == (MODEL, PROFILE, "passage: ", 4, vector_space(MODEL, PROFILE, 4))


def test_a_size_the_lanes_model_does_not_allow_fails_the_probe_with_the_allowed_sizes():
    from athena_inference.workers.reembedding.lane import CeleryLane

    with pytest.raises(JobError, match=r"cannot make this job's vectors \(dimensions=5: fake-profile vectors can be 8, 4 .*nothing was written"):
        CeleryLane(RecordingTransport(), dimensions=5).probe(5.0)


def test_a_matryoshka_size_is_part_of_the_request_and_must_be_positive():
    spec = JsonlSource(path="m.jsonl", output="o.npy")
    assert ReembedRequest(source=spec, dimensions=256).dimensions == 256
    assert ReembedRequest(source=spec).dimensions is None
    with pytest.raises(ValueError):
        ReembedRequest(source=spec, dimensions=0)


def sqlite_rows(path) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, model, content_sha256, vector, note FROM vectors ORDER BY id").fetchall()
