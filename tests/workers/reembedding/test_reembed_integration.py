"""Re-embedding jobs end to end: real redis-server, the bulk llama-server, Celery
workers in their own processes, PostgreSQL and JSONL files; runners and workers
killed with SIGKILL in the middle of a job.
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid

import httpx
import numpy as np
import psycopg
import pytest

from athena_client.contract.jobs import JobState, JobStatus, JsonlSource, PostgresSource, ReembedRequest
from athena_client.contract.payloads import vector_space
from athena_inference.workers.reembedding.stores import content_sha256
from athena_inference.workers.reembedding.stores.postgres import side_table_name
from tests.harness import CLI, Stack, wait_for
from tests.minilm_reference import assert_same_vectors

pytestmark = pytest.mark.integration


def direct_vectors(lane: Stack, texts: list[str]) -> np.ndarray:
    """The same server, asked directly, 32 texts per request."""
    url = lane.env["ATHENA_EMBEDDINGS_BULK_URL"]
    out = []
    for start in range(0, len(texts), 32):
        reply = httpx.post(f"{url}/v1/embeddings", json={"input": texts[start : start + 32]}, timeout=60).json()
        out += [item["embedding"] for item in sorted(reply["data"], key=lambda item: item["index"])]
    return np.array(out, dtype=np.float32)


def memories(n: int, prefix: str = "memory") -> list[str]:
    topics = ["the user likes tea", "a meeting moved to Friday", "the cat is called Miso", "backups run at night"]
    return [f"{prefix} {i}: {topics[i % len(topics)]} (note {i * 7 % 13})" for i in range(n)]


def make_table(dsn: str, texts: list[str]) -> str:
    table = f"memory_vectors_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, content TEXT, embedding real[], embedding_model text)")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {table} (content, embedding, embedding_model) VALUES (%s, %s, 'old-model')",
                [(text, [0.0, 1.0]) for text in texts],
            )
    return table


def wait_until_done(lane: Stack, job_id: str, at_least: int, timeout: float = 120, runner=None) -> JobState:
    wait_for(lambda: lane.jobs.get(job_id).counts.done >= at_least, f"job {job_id} past {at_least} rows", timeout, runner)
    return lane.jobs.get(job_id)


def wait_terminal(lane: Stack, job_id: str, timeout: float = 300) -> JobState:
    wait_for(lambda: lane.jobs.get(job_id).status.terminal, f"job {job_id} to end", timeout)
    return lane.jobs.get(job_id)


def assert_table_matches_direct(lane: Stack, dsn: str, table: str, job: JobState) -> None:
    """Every row has the model's vector for its current text, tagged with the job's space, in its side table (the default)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT t.content, s.embedding, s.model, s.content_sha256 FROM {table} t "
            f"JOIN {side_table_name(table, job.model)} s ON s.row_id = t.id ORDER BY t.id"
        ).fetchall()
    assert len(rows) == len(fetch_ids(dsn, table))
    assert job.space == vector_space(job.model, job.profile, job.dimension)
    assert {row[2] for row in rows} == {job.space}
    assert all(row[3] == content_sha256(row[0]) for row in rows)
    got = np.array([row[1] for row in rows], dtype=np.float32)
    assert_same_vectors(got, direct_vectors(lane, [row[0] for row in rows]))


def fetch_ids(dsn: str, table: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


def cli(lane: Stack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "reembed", *args], env=lane.env, capture_output=True, text=True, timeout=timeout)


def test_killed_runner_resumes_and_every_row_gets_the_new_model(lane, postgres_dsn):
    texts = memories(500)
    table = make_table(postgres_dsn, texts)
    job = lane.jobs.create(ReembedRequest(source=PostgresSource(dsn=postgres_dsn, table=table), batch_texts=16, window=2))
    runner = lane.start("runner", [*CLI, "reembed", "resume", job.job_id])
    seen = wait_until_done(lane, job.job_id, 100, runner=runner)
    runner.stop(signal.SIGKILL)
    assert not seen.status.terminal

    resumed = cli(lane, "resume", job.job_id, "--wait")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    state = lane.jobs.get(job.job_id)
    assert state.status is JobStatus.COMPLETED
    assert state.counts.completed + state.counts.skipped == 500 and state.counts.failed == 0
    assert_table_matches_direct(lane, postgres_dsn, table, state)


def test_killed_bulk_worker_loses_no_batch(lane, tmp_path):
    texts = memories(320, prefix="jsonl memory")
    source = tmp_path / "memories.jsonl"
    source.write_text("".join(json.dumps({"id": f"m{i}", "content": t}) + "\n" for i, t in enumerate(texts)))
    spec = JsonlSource(path=str(source), output=str(tmp_path / "vectors.npy"))
    job = lane.jobs.create(ReembedRequest(source=spec, batch_texts=16, window=2))
    # A runner of its own, whose batches (16 short texts each, a fraction of a second) are sent again
    # after 5 s rather than the lane's 30 s (which a 130-window memory needs): the killed worker's come back sooner.
    runner = lane.start("bulk-kill-runner", [*CLI, "reembed", "resume", job.job_id], {"ATHENA_JOB_BATCH_TIMEOUT_S": "5"})
    job_id = job.job_id
    wait_until_done(lane, job_id, 64, runner=runner)
    [worker] = [p for p in lane.procs if p.name == "embeddings_bulk-worker-w1" and p.popen.poll() is None]
    worker.stop(signal.SIGKILL)
    lane.worker("embeddings_bulk", "w1")

    state = wait_terminal(lane, job_id)
    assert state.status is JobStatus.COMPLETED, state.error
    assert state.counts.completed == 320
    assert runner.popen.wait(timeout=60) == 0
    # The kill did take batches with it: the runner sent them again.
    assert "sending it again" in runner.log_path.read_text(errors="replace")
    matrix = np.load(tmp_path / "vectors.npy")
    ids = [json.loads(line)["id"] for line in (tmp_path / "vectors.ids.jsonl").read_text().splitlines()]
    assert ids == [f"m{i}" for i in range(320)]
    assert_same_vectors(matrix, direct_vectors(lane, texts))


def test_bad_rows_are_reported_and_the_rest_embedded_through_the_real_server(lane, tmp_path):
    rows = [
        {"id": 1, "content": "the user prefers morning meetings"},
        {"id": 2, "content": ""},
        {"id": 3, "content": "word " * 3000},
        {"id": 4, "content": "the user prefers morning meetings"},
        {"id": 5, "content": "backups run at night"},
    ]
    source = tmp_path / "memories.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = cli(lane, "start", "--jsonl", str(source), "--output", str(tmp_path / "out.jsonl"), "--long-text", "fail")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 embedded, 0 skipped, 2 failed of 5" in done.stdout
    assert "2: InvalidInput: text is empty" in done.stdout
    assert "3: InputTooLong" in done.stdout
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [w["id"] for w in written] == [1, 4, 5]
    assert_same_vectors([w["embedding"] for w in written], direct_vectors(lane, [rows[0]["content"], rows[3]["content"], rows[4]["content"]]))


def test_cancel_leaves_a_consistent_table(lane, postgres_dsn):
    texts = memories(3000, prefix="cancel")
    table = make_table(postgres_dsn, texts)
    job_id = lane.client.reembed(PostgresSource(dsn=postgres_dsn, table=table, target_column="embedding_v2"), batch_texts=8, window=2)
    wait_until_done(lane, job_id, 50)
    assert lane.client.cancel_job(job_id).cancel_requested
    state = wait_terminal(lane, job_id)
    assert state.status is JobStatus.CANCELLED
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(f"SELECT content, embedding, embedding_v2, embedding_v2_model FROM {table} ORDER BY id").fetchall()
    new = [row for row in rows if row[3] is not None]
    assert 0 < len(new) < 3000 and len(new) == state.counts.completed
    assert all(row[1] == [0.0, 1.0] for row in rows)  # the old column is untouched
    assert all(row[2] is None for row in rows if row[3] is None)
    assert_same_vectors([row[2] for row in new], direct_vectors(lane, [row[0] for row in new]))


def test_a_rerun_skips_every_unchanged_row_and_duplicates_are_embedded_once(lane, postgres_dsn):
    texts = [f"repeated memory {i % 10}" for i in range(300)]
    table = make_table(postgres_dsn, texts)
    first = wait_terminal(lane, lane.client.reembed(PostgresSource(dsn=postgres_dsn, table=table), batch_texts=32))
    assert (first.status, first.counts.completed) == (JobStatus.COMPLETED, 300)
    assert_table_matches_direct(lane, postgres_dsn, table, first)

    second = wait_terminal(lane, lane.client.reembed(PostgresSource(dsn=postgres_dsn, table=table)))
    assert (second.status, second.counts.completed, second.counts.skipped) == (JobStatus.COMPLETED, 0, 300)


def test_a_job_held_by_a_live_runner_cannot_be_resumed_twice(lane, postgres_dsn):
    table = make_table(postgres_dsn, memories(2000, prefix="held"))
    job = lane.jobs.create(ReembedRequest(source=PostgresSource(dsn=postgres_dsn, table=table), batch_texts=8, window=1))
    runner = lane.start("held-runner", [*CLI, "reembed", "resume", job.job_id])
    try:
        wait_until_done(lane, job.job_id, 8, runner=runner)
        second = cli(lane, "resume", job.job_id)
        assert second.returncode == 2
        assert f"job {job.job_id} is held by runner" in second.stderr
    finally:
        runner.stop(signal.SIGTERM)
