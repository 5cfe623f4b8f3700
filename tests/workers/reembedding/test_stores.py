"""The two memory stores: JSONL files with their SQLite sidecar, and a real PostgreSQL table."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from athena_client.errors import JobError
from athena_client.jobs import JsonlSource, PostgresSource
from athena_inference.workers.reembedding.stores import JsonlStore, PostgresStore, content_sha256


def make_table(dsn: str, texts: list[str | None]) -> str:
    """Athena's memory_vectors shape, with vectors of an 'old-model' already in place."""
    table = f"memory_vectors_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, content TEXT, embedding real[], embedding_model text)")
        for text in texts:
            conn.execute(f"INSERT INTO {table} (content, embedding, embedding_model) VALUES (%s, %s, 'old-model')", (text, [9.0, 9.0]))
    return table


def fetch(dsn: str, table: str, columns: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT {columns} FROM {table} ORDER BY id").fetchall()


@pytest.fixture
def store_factory(postgres_dsn):
    stores = []

    def make(table: str, **spec) -> PostgresStore:
        store = PostgresStore(PostgresSource(dsn=postgres_dsn, table=table, **spec))
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def test_postgres_rows_come_in_id_order_from_the_cursor(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, [f"memory {i}" for i in range(2500)])
    store = store_factory(table)
    store.prepare("new-model", 3)
    assert store.count() == 2500
    rows = list(store.rows(after=1200, model="new-model"))
    assert [row.id for row in rows] == list(range(1201, 2501))
    assert not any(row.up_to_date for row in rows)


def test_postgres_in_place_write_records_model_and_hash(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta", "gamma"])
    store = store_factory(table)
    store.prepare("new-model", 3)
    rows = list(store.rows(-1, "new-model"))
    assert store.write("new-model", [(rows[0], [0.5, 0.25, 1.0]), (rows[2], [1.0, 2.0, 3.0])], [rows[1]]) == []
    assert fetch(postgres_dsn, table, "embedding, embedding_model, embedding_content_sha256") == [
        ([0.5, 0.25, 1.0], "new-model", content_sha256("alpha")),
        (None, None, None),
        ([1.0, 2.0, 3.0], "new-model", content_sha256("gamma")),
    ]
    assert [row.up_to_date for row in store.rows(-1, "new-model")] == [True, False, True]


def test_postgres_new_column_leaves_the_old_vectors_alone(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(table, target_column="embedding_v2")
    store.prepare("new-model", 2)
    rows = list(store.rows(-1, "new-model"))
    store.write("new-model", [(row, [1.0, 0.0]) for row in rows], [])
    assert fetch(postgres_dsn, table, "embedding, embedding_model, embedding_v2, embedding_v2_model") == [
        ([9.0, 9.0], "old-model", [1.0, 0.0], "new-model"),
        ([9.0, 9.0], "old-model", [1.0, 0.0], "new-model"),
    ]


def test_postgres_write_refuses_a_vector_for_text_that_changed_meanwhile(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["before"])
    store = store_factory(table)
    store.prepare("new-model", 2)
    [row] = list(store.rows(-1, "new-model"))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET content = 'after' WHERE id = 1")
    assert store.write("new-model", [(row, [1.0, 1.0])], []) == [row]
    assert fetch(postgres_dsn, table, "content, embedding, embedding_model") == [("after", [9.0, 9.0], "old-model")]


def test_postgres_null_content_is_a_problem_row(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["fine", None])
    store = store_factory(table)
    store.prepare("m", 2)
    assert [row.problem for row in store.rows(-1, "m")] == [None, "content is NULL"]


def test_postgres_names_what_is_missing(postgres_dsn, store_factory):
    with pytest.raises(JobError, match="no table 'nowhere'"):
        store_factory("nowhere").prepare("m", 2)
    table = make_table(postgres_dsn, ["x"])
    with pytest.raises(JobError, match="no column 'body'"):
        store_factory(table, content_column="body").prepare("m", 2)


def test_postgres_refuses_a_column_that_holds_no_vectors(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["x"])
    with pytest.raises(JobError, match="is text, not a vector or real"):
        store_factory(table, embedding_column="content").prepare("m", 2)


def test_postgres_unreachable_is_a_job_error(postgres_dsn):
    with pytest.raises(JobError, match="cannot connect to PostgreSQL"):
        PostgresStore(PostgresSource(dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"))


def test_jsonl_sidecar_keeps_one_vector_per_id(tmp_path):
    source = tmp_path / "m.jsonl"
    source.write_text(json.dumps({"id": "a", "content": "one"}) + "\n\n" + json.dumps({"id": "b", "content": "two"}) + "\n")
    store = JsonlStore(JsonlSource(path=str(source), output=str(tmp_path / "out.jsonl")))
    store.prepare("m", 2)
    assert store.count() == 2
    rows = list(store.rows(-1, "m"))
    store.write("m", [(rows[0], [1.0, 2.0])], [])
    store.write("m", [(rows[0], [3.0, 4.0]), (rows[1], [5.0, 6.0])], [])
    store.finish("m")
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(w["id"], w["embedding"]) for w in written] == [("a", [3.0, 4.0]), ("b", [5.0, 6.0])]


def test_jsonl_needs_its_source_and_a_distinct_output(tmp_path):
    with pytest.raises(JobError, match="no JSONL file"):
        JsonlStore(JsonlSource(path=str(tmp_path / "missing.jsonl"), output=str(tmp_path / "o.jsonl")))
    with pytest.raises(ValueError, match="output must differ"):
        JsonlSource(path="same.jsonl", output="same.jsonl")
