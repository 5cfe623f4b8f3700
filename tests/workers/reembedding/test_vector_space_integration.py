"""Vectors carry their space, through the real bulk lane: every vector a job
writes names the model, profile and size that made it; a lane restarted on
another profile of the same model (a prefix before every text, 384-d all the
same) is refused before it writes into a side table, a target column, a
column written in place or a JSONL output that holds the first space's
vectors, and none of those is lost; in a place of its own it embeds afresh
(not from the cache) with its prefix, or cut to a Matryoshka size; the first
lane back skips every unchanged row."""

from __future__ import annotations

import json
import sqlite3
import uuid

import numpy as np
import psycopg
import pytest

from athena_client.contract.jobs import JobStatus
from athena_client.contract.payloads import vector_space
from athena_inference.workers.embedder import matryoshka
from athena_inference.workers.reembedding.stores.jsonl import ids_path, manifest_path, read_npy_output
from athena_inference.workers.reembedding.stores.postgres import side_table_name
from tests.harness import Stack
from tests.minilm_reference import assert_same_vectors
from tests.workers.reembedding.test_postgres_store import table_fingerprint
from tests.workers.reembedding.test_reembed_integration import cli, direct_vectors, make_table, memories

pytestmark = pytest.mark.integration

MODEL = "all-MiniLM-L6-v2"
# The embedded default's profile has the model's name, and no prefixes.
SPACE = vector_space(MODEL, MODEL, 384)
PASSAGE = "minilm-passage"
PASSAGE_SPACE = vector_space(MODEL, PASSAGE, 384)
# The same server and model under another profile: a prefix before every stored text, and a Matryoshka size.
PASSAGE_ENV = {
    "ATHENA_EMBEDDING_PROFILES": json.dumps(
        {PASSAGE: {"dimension": 384, "dimensions": [128], "document_prefix": "passage: ", "query_prefix": "query: "}}
    ),
    "ATHENA_EMBEDDINGS_BULK_PROFILE": PASSAGE,
}
TEXTS = memories(40, prefix="space")


def job_id_of(done) -> str:
    return done.stderr.split("job ", 1)[1].split()[0]


def started(lane: Stack, *args: str):
    done = cli(lane, "start", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def in_place_table(dsn: str) -> str:
    """Athena's shape with 384-d vectors of whatever made them, which no job recorded."""
    table = f"memory_vectors_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, content TEXT, embedding real[] NOT NULL)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (content, embedding) VALUES (%s, %s)", [(text, [0.05] * 384) for text in TEXTS])
    return table


class Places:
    """One of each place a job writes to, filled by the first lane (the default profile)."""

    def __init__(self, lane: Stack, dsn: str, tmp_path) -> None:
        self.dsn = dsn
        self.side_table, self.column_table, self.in_place = make_table(dsn, TEXTS), make_table(dsn, TEXTS), in_place_table(dsn)
        self.source, self.output = tmp_path / "memories.jsonl", tmp_path / "vectors.npy"
        self.source.write_text("".join(json.dumps({"id": i, "content": text}) + "\n" for i, text in enumerate(TEXTS)))
        self.commands = {
            "side table": ("--postgres", dsn, "--table", self.side_table),
            "target column": ("--postgres", dsn, "--table", self.column_table, "--target-column", "embedding_v2"),
            "in place": ("--postgres", dsn, "--table", self.in_place, "--in-place"),
            "jsonl": ("--jsonl", str(self.source), "--output", str(self.output)),
        }
        self.runs = {place: started(lane, *args) for place, args in self.commands.items()}

    def tags(self, query: str) -> set:
        with psycopg.connect(self.dsn) as conn:
            return {row[0] for row in conn.execute(query)}

    def fingerprints(self) -> dict:
        with psycopg.connect(self.dsn) as conn:
            sides = {
                side: conn.execute(f"SELECT md5(string_agg(s::text, '|' ORDER BY row_id)) FROM {side} s").fetchone()
                for side in (side_table_name(self.side_table, MODEL), side_table_name(self.in_place, MODEL))
            }
        with sqlite3.connect(self.output.with_name(self.output.name + ".state.sqlite")) as db:
            sidecar = db.execute("SELECT id, model, content_sha256, vector, note FROM vectors ORDER BY id").fetchall()
        return {
            **{table: table_fingerprint(self.dsn, table) for table in (self.side_table, self.column_table, self.in_place)},
            **sides,
            "sidecar": sidecar,
            **{path.name: path.read_bytes() for path in (self.output, ids_path(self.output), manifest_path(self.output))},
        }


@pytest.fixture(scope="module")
def places(lane, postgres_dsn, tmp_path_factory) -> Places:
    return Places(lane, postgres_dsn, tmp_path_factory.mktemp("vector-space"))


def serve_bulk_from(lane: Stack, node: str, extra_env: dict[str, str] | None = None) -> None:
    """Stop the bulk lane's worker and start another in its place (on the same llama-server)."""
    for proc in lane.procs:
        if proc.name.startswith("embeddings_bulk-worker-") and proc.popen.poll() is None:
            proc.stop()
    lane.worker("embeddings_bulk", node, extra_env)
    lane.wait_for_workers(lane.client, {f"embeddings_bulk@{node}"})


def test_every_vector_names_the_model_profile_and_space_that_made_it(lane, places):
    for place, done in places.runs.items():
        assert f"40 embedded, 0 skipped, 0 failed of 40 (vectors of {SPACE})" in done.stdout, place
        state = lane.jobs.get(job_id_of(done))
        assert (state.model, state.profile, state.dimension, state.space) == (MODEL, MODEL, 384, SPACE)
    assert places.tags(f"SELECT model FROM {side_table_name(places.side_table, MODEL)}") == {SPACE}
    assert places.tags(f"SELECT embedding_v2_model FROM {places.column_table}") == {SPACE}
    assert places.tags(f"SELECT model FROM {side_table_name(places.in_place, MODEL)}") == {SPACE}
    _, entries = read_npy_output(places.output)
    assert {(e["model"], e["profile"], e["space"]) for e in entries} == {(MODEL, MODEL, SPACE)}
    manifest = json.loads(manifest_path(places.output).read_text())
    assert (manifest["model"], manifest["profile"], manifest["prefix"], manifest["dimension"], manifest["space"]) == (MODEL, MODEL, "", 384, SPACE)


@pytest.fixture(scope="class")
def before(lane, places):
    """What every place held; meanwhile the bulk lane's worker runs on another profile."""
    before = places.fingerprints()
    serve_bulk_from(lane, "w2", PASSAGE_ENV)
    try:
        yield before
    finally:
        serve_bulk_from(lane, "w1")


@pytest.mark.usefixtures("before")
class TestALaneRestartedOnAnotherProfile:
    """The same llama-server, its worker restarted with ATHENA_EMBEDDINGS_BULK_PROFILE=minilm-passage."""

    def test_every_place_holding_the_first_space_is_refused_before_anything_is_written(self, lane, places, before):
        for place, args in places.commands.items():
            done = cli(lane, "start", *args)
            said = done.stdout + done.stderr
            assert done.returncode != 0, (place, said)
            assert "refused before any write" in said and f"40 of '{SPACE}'" in said and f"makes '{PASSAGE_SPACE}'" in said, (place, said)
            assert "Traceback" not in done.stderr
            assert lane.jobs.get(job_id_of(done)).status is JobStatus.FAILED
        assert places.fingerprints() == before

    def test_a_side_table_of_its_own_gets_vectors_made_with_the_profiles_prefix_not_the_cached_ones(self, lane, places):
        done = started(lane, "--postgres", places.dsn, "--table", places.side_table, "--side-table", "passage_vectors")
        assert f"40 embedded, 0 skipped, 0 failed of 40 (vectors of {PASSAGE_SPACE})" in done.stdout
        with psycopg.connect(places.dsn) as conn:
            rows = conn.execute(
                f"SELECT t.content, s.embedding, s.model FROM {places.side_table} t JOIN passage_vectors s ON s.row_id = t.id ORDER BY t.id"
            ).fetchall()
        assert {row[2] for row in rows} == {PASSAGE_SPACE}
        got = np.array([row[1] for row in rows], dtype=np.float32)
        assert_same_vectors(got, direct_vectors(lane, [f"passage: {row[0]}" for row in rows]))
        # The first space's vectors of the same texts were in the cache: none came from there.
        assert np.abs(got - direct_vectors(lane, [row[0] for row in rows])).max() > 1e-2

    def test_a_matryoshka_size_goes_through_to_the_worker_and_names_a_side_table_of_its_own(self, lane, places):
        done = started(lane, "--postgres", places.dsn, "--table", places.side_table, "--dimensions", "128")
        assert f"(vectors of {vector_space(MODEL, PASSAGE, 128)})" in done.stdout
        side = side_table_name(places.side_table, MODEL, 128)
        with psycopg.connect(places.dsn) as conn:
            rows = conn.execute(f"SELECT t.content, s.embedding, s.model FROM {places.side_table} t JOIN {side} s ON s.row_id = t.id ORDER BY t.id").fetchall()
        assert len(rows) == 40 and {row[2] for row in rows} == {vector_space(MODEL, PASSAGE, 128)}
        full = direct_vectors(lane, [f"passage: {row[0]}" for row in rows])
        assert_same_vectors([row[1] for row in rows], [matryoshka(list(map(float, v)), 128) for v in full])

    def test_a_size_the_profile_does_not_allow_is_refused_with_the_sizes_it_does(self, lane, places):
        done = cli(lane, "start", "--postgres", places.dsn, "--table", places.side_table, "--dimensions", "100", "--side-table", "never_made")
        assert done.returncode != 0
        assert "cannot make this job's vectors" in done.stderr and "384, 128" in done.stderr, done.stdout + done.stderr
        with psycopg.connect(places.dsn) as conn:
            assert conn.execute("SELECT to_regclass('never_made')").fetchone() == (None,)


def test_the_first_lane_back_finds_every_vector_it_made_and_skips_every_row(lane, places):
    for place, args in places.commands.items():
        done = started(lane, *args)
        assert f"0 embedded, 40 skipped, 0 failed of 40 (vectors of {SPACE})" in done.stdout, place
