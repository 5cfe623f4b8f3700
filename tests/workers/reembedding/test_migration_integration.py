"""A model migration on Athena's real `memory_vectors` schema under pgvector, through the real
bulk lane: the default job leaves the live table byte for byte as it was, an in-place write
at another dimension is refused before anything is written, and `reembed switch` swaps the
new vectors in (and back) in one transaction each, with the index rebuilt."""

from __future__ import annotations

import math
import random

import httpx
import psycopg
import pytest
import redis

from athena_client.contract.jobs import JobStatus
from athena_client.contract.payloads import vector_space
from athena_inference.workers.reembedding.stores.postgres import side_table_name
from tests.workers.reembedding.conftest import SECRET
from tests.workers.reembedding.test_postgres_store import table_fingerprint
from tests.workers.reembedding.test_reembed_integration import cli, memories, wait_terminal

pytestmark = pytest.mark.integration

MODEL = "all-MiniLM-L6-v2"
# The embedded default's profile has the model's name, and no prefixes.
SPACE = vector_space(MODEL, MODEL, 384)
LONG_MEMORY = " ".join(f"On day {i} the payments team reviewed reconciliation run {i} and its row counts." for i in range(820))

# Athena's memory_vectors as its init script creates it (the columns that matter to a
# migration): a NOT NULL foreign key, 768-d NOT NULL vectors with an IVFFlat index,
# generated columns, and a self-reference.
ATHENA_SCHEMA = """
CREATE TABLE projects (id SERIAL PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE memory_vectors (
    id BIGSERIAL PRIMARY KEY,
    project_id INT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    content TEXT NOT NULL,
    content_type VARCHAR(50),
    embedding vector(768) NOT NULL,
    content_tsvector tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    memory_type VARCHAR(50) NOT NULL,
    tags TEXT[] DEFAULT '{}',
    created_at TIMESTAMP DEFAULT NOW(),
    usefulness_score FLOAT DEFAULT 0.0,
    confidence FLOAT DEFAULT 1.0,
    access_count INT DEFAULT 0,
    quality_score FLOAT GENERATED ALWAYS AS (0.5 * usefulness_score + 0.3 * confidence + 0.2 * LEAST(access_count::float / 100, 1.0)) STORED,
    superseded_by BIGINT REFERENCES memory_vectors(id) ON DELETE SET NULL
);
CREATE INDEX idx_memory_vectors_embedding ON memory_vectors USING ivfflat (embedding vector_cosine_ops) WITH (lists = 10);
CREATE INDEX idx_memory_vectors_fts ON memory_vectors USING GIN (content_tsvector);
"""


def old_vector(seed: int) -> str:
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(768)]
    norm = math.sqrt(sum(v * v for v in values))
    return "[" + ",".join(f"{v / norm:.6f}" for v in values) + "]"


@pytest.fixture(scope="module")
def athena_db(pgvector_dsn):
    """Athena's schema with 400 memories over two projects, one blank text and one of 66,000 characters."""
    texts = memories(398, prefix="athena memory") + ["", LONG_MEMORY]
    with psycopg.connect(pgvector_dsn, autocommit=True) as conn:
        conn.execute(ATHENA_SCHEMA)
        conn.execute("INSERT INTO projects (name) VALUES ('athena'), ('payments')")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO memory_vectors (project_id, content, embedding, memory_type, tags) VALUES (%s, %s, %s, 'fact', %s)",
                [(1 + i % 2, text, old_vector(i), ["migration"]) for i, text in enumerate(texts)],
            )
    assert len(LONG_MEMORY) >= 66_000
    return pgvector_dsn, table_fingerprint(pgvector_dsn, "memory_vectors")


@pytest.fixture(scope="module")
def completed_job(lane, athena_db) -> str:
    """The default job, as an operator starts it: a named connection, nothing else."""
    done = cli(lane, "start", "--connection", "athena", "--table", "memory_vectors")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr.split("job ", 1)[1].split()[0]


def query_vector(lane, text: str) -> str:
    reply = httpx.post(f"{lane.env['ATHENA_EMBEDDINGS_BULK_URL']}/v1/embeddings", json={"input": [text]}, timeout=60).json()
    return "[" + ",".join(map(str, reply["data"][0]["embedding"])) + "]"


def test_the_default_job_completes_and_leaves_athenas_table_byte_for_byte_as_it_was(lane, athena_db, completed_job):
    dsn, before = athena_db
    state = lane.jobs.get(completed_job)
    assert state.status is JobStatus.COMPLETED, state.error
    assert (state.counts.completed, state.counts.failed, state.counts.chunked) == (399, 1, 1)
    assert table_fingerprint(dsn, "memory_vectors") == before
    side = side_table_name("memory_vectors", MODEL)
    with psycopg.connect(dsn) as conn:
        assert conn.execute(f"SELECT count(*), count(DISTINCT vector_dims(embedding)), count(DISTINCT model), max(model) FROM {side}").fetchone() == (
            399, 1, 1, SPACE
        )
        assert conn.execute(f"SELECT vector_dims(embedding) FROM {side} LIMIT 1").fetchone() == (384,)
        note = conn.execute(f"SELECT s.note FROM {side} s JOIN memory_vectors m ON m.id = s.row_id WHERE length(m.content) > 60000").fetchone()
    assert note == ("chunked",)
    [error] = lane.jobs.errors(completed_job)
    assert error.error == "InvalidInput" and "empty" in error.message


def test_a_second_run_skips_every_row(lane, athena_db, completed_job):
    again = cli(lane, "start", "--connection", "athena", "--table", "memory_vectors")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 embedded, 399 skipped, 1 failed of 400" in again.stdout


def test_in_place_at_another_dimension_is_refused_before_any_write_with_one_clear_message(lane, athena_db):
    dsn, before = athena_db
    tables_before = psycopg.connect(dsn).execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    done = cli(lane, "start", "--connection", "athena", "--table", "memory_vectors", "--in-place", "--side-table", "never_made")
    assert done.returncode != 0
    assert "refused before any write" in done.stdout + done.stderr and "reembed switch" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert table_fingerprint(dsn, "memory_vectors") == before
    assert psycopg.connect(dsn).execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == tables_before


def test_switch_refuses_rows_left_without_a_vector_in_a_not_null_column(lane, athena_db, completed_job):
    dsn, before = athena_db
    done = cli(lane, "switch", completed_job, "--yes")
    assert done.returncode != 0
    assert "with a current new vector: 399" in done.stdout and "with no new vector" in done.stdout
    assert "refused, nothing changed: 1 of 400 rows have no current new vector" in done.stderr
    assert table_fingerprint(dsn, "memory_vectors") == before


def test_switch_swaps_in_the_new_vectors_with_the_index_and_undo_puts_the_old_back(lane, athena_db, completed_job):
    dsn, before = athena_db
    done = cli(lane, "switch", completed_job, "--yes", "--allow-null")
    assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(dsn) as conn:
        types = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'memory_vectors'::regclass "
            "AND attname LIKE 'embedding%' AND NOT attisdropped"
        ).fetchall())
        assert types == {"embedding": "vector(384)", "embedding__old": "vector(768)"}
        indexes = [row[0] for row in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'memory_vectors' AND indexdef LIKE '%ivfflat%'"
        )]
        assert any("(embedding vector_cosine_ops)" in d and "lists='10'" in d for d in indexes), indexes
        target = conn.execute("SELECT id, content FROM memory_vectors WHERE content LIKE 'athena memory 7:%'").fetchone()
        nearest = conn.execute(
            "SELECT id FROM memory_vectors WHERE embedding IS NOT NULL ORDER BY embedding <=> %s::vector LIMIT 5",
            (query_vector(lane, target[1]),),
        ).fetchall()
        assert nearest[0][0] == target[0]

    undone = cli(lane, "switch", completed_job, "--undo")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert table_fingerprint(dsn, "memory_vectors") == before


def test_a_filter_limits_a_job_to_one_project(lane, athena_db):
    dsn, _ = athena_db
    done = cli(lane, "start", "--connection", "athena", "--table", "memory_vectors", "--where", "project_id=2", "--side-table", "project_two")
    assert done.returncode == 0, done.stdout + done.stderr
    with psycopg.connect(dsn) as conn:
        projects = conn.execute("SELECT DISTINCT m.project_id FROM project_two s JOIN memory_vectors m ON m.id = s.row_id").fetchall()
        assert projects == [(2,)]
        assert conn.execute("SELECT count(*) FROM project_two").fetchone()[0] == 200


def stored_values(client: redis.Redis, key: bytes) -> list[bytes]:
    """Every value a key holds, whatever its type (DUMP would compress long strings)."""
    kind = client.type(key)
    if kind == b"string":
        return [client.get(key) or b""]
    if kind == b"hash":
        return [b for pair in client.hgetall(key).items() for b in pair]
    if kind == b"list":
        return client.lrange(key, 0, -1)
    if kind == b"set":
        return list(client.smembers(key))
    if kind == b"zset":
        return client.zrange(key, 0, -1)
    return [client.dump(key) or b""]


def test_a_queued_job_leaves_no_password_in_redis_or_the_logs(lane, postgres_dsn):
    table = "secret_scan"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, content TEXT, embedding real[])")
        conn.execute(f"INSERT INTO {table} (content) SELECT 'memory ' || g FROM generate_series(1, 50) g")
    done = cli(lane, "start", "--connection", "secretdb", "--table", table, "--queue")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stderr.split("job ", 1)[1].split()[0]
    assert wait_terminal(lane, job_id).status is JobStatus.COMPLETED

    port = int(lane.env["ATHENA_RESULT_BACKEND"].rsplit(":", 1)[1].split("/")[0])
    found = []
    for db in range(16):
        client = redis.Redis(port=port, db=db)
        for key in client.scan_iter(count=1000):
            if SECRET.encode() in key or any(SECRET.encode() in value for value in stored_values(client, key)):
                found.append((db, key))
    assert found == []
    for proc in lane.procs:
        assert SECRET not in proc.log_path.read_text(errors="replace"), proc.name
    assert SECRET not in done.stdout + done.stderr
