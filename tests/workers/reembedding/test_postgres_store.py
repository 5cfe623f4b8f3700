"""The PostgreSQL store on a real server: where vectors go, what it refuses before writing,
filters and named connections. `real[]` tables on the machine's PostgreSQL, `vector(n)`
ones on a pgvector server of the test session's own."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from athena_client.errors import JobError
from athena_client.jobs import PostgresSource
from athena_inference.workers.reembedding.stores import PostgresStore, content_sha256
from athena_inference.workers.reembedding.stores.postgres import side_table_name

MODEL = "new-model"


def make_table(dsn: str, texts: list[str | None], *, vector: str = "real[]", old: list[float] | None = None, not_null: bool = False,
               project: int = 1) -> str:
    """Athena's memory_vectors shape, with vectors of an older model already in place."""
    table = f"memory_vectors_{uuid.uuid4().hex[:8]}"
    old = old or [9.0, 9.0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY, project_id INT NOT NULL DEFAULT 1, content TEXT, "
            f"embedding {vector}{' NOT NULL' if not_null else ''})"
        )
        literal = "[" + ",".join(map(str, old)) + "]" if vector.startswith("vector") else old
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (project_id, content, embedding) VALUES (%s, %s, %s)",
                            [(project, text, literal) for text in texts])
    return table


def fetch(dsn: str, query: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def table_fingerprint(dsn: str, table: str) -> tuple:
    """The table's columns and every value, as md5 sums: equal before and after means untouched."""
    with psycopg.connect(dsn) as conn:
        columns = conn.execute(
            "SELECT md5(string_agg(attname || ':' || format_type(atttypid, atttypmod) || ':' || attnotnull, ',' ORDER BY attnum)) "
            "FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped", (table,)
        ).fetchone()[0]
        data = conn.execute(f"SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM {table} t").fetchone()[0]
    return columns, data


@pytest.fixture
def store_factory():
    stores = []

    def make(dsn: str, table: str, **spec) -> PostgresStore:
        store = PostgresStore(PostgresSource(dsn=dsn, table=table, **spec))
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def embed_all(store: PostgresStore, vectors: dict[str, list[float]], failed: tuple[str, ...] = ()) -> list:
    rows = list(store.rows(-1, MODEL))
    done = [(row, vectors[row.content]) for row in rows if row.content in vectors]
    return store.write(MODEL, done, [row for row in rows if row.content in failed])


# --- the default: a side table; the user's table untouched ---


def test_by_default_vectors_go_to_a_side_table_and_the_table_is_not_altered(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    before = table_fingerprint(postgres_dsn, table)
    store = store_factory(postgres_dsn, table)
    store.prepare(MODEL, 3)
    assert embed_all(store, {"alpha": [0.5, 0.25, 1.0], "beta": [1.0, 2.0, 3.0]}) == []
    assert table_fingerprint(postgres_dsn, table) == before
    side = side_table_name(table, MODEL)
    assert fetch(postgres_dsn, f"SELECT row_id, embedding, model, content_sha256 FROM {side} ORDER BY row_id") == [
        (1, [0.5, 0.25, 1.0], MODEL, content_sha256("alpha")),
        (2, [1.0, 2.0, 3.0], MODEL, content_sha256("beta")),
    ]


def test_a_second_run_finds_every_row_up_to_date_in_the_side_table(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table)
    store.prepare(MODEL, 2)
    embed_all(store, {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]})
    again = store_factory(postgres_dsn, table)
    again.prepare(MODEL, 2)
    assert [row.up_to_date for row in again.rows(-1, MODEL)] == [True, True]


def test_a_failed_row_loses_its_side_vector_and_keeps_its_own(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table)
    store.prepare(MODEL, 2)
    embed_all(store, {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]})
    embed_all(store, {"alpha": [1.0, 1.0]}, failed=("beta",))
    assert fetch(postgres_dsn, f"SELECT row_id FROM {side_table_name(table, MODEL)}") == [(1,)]
    assert fetch(postgres_dsn, f"SELECT embedding FROM {table} ORDER BY id") == [([9.0, 9.0],), ([9.0, 9.0],)]


def test_a_vector_for_a_text_changed_meanwhile_is_refused(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["before"])
    store = store_factory(postgres_dsn, table)
    store.prepare(MODEL, 2)
    [row] = list(store.rows(-1, MODEL))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET content = 'after' WHERE id = 1")
    assert store.write(MODEL, [(row, [1.0, 1.0])], []) == [row]
    assert fetch(postgres_dsn, f"SELECT count(*) FROM {side_table_name(table, MODEL)}") == [(0,)]


def test_the_side_table_of_a_pgvector_table_holds_typed_vectors_and_a_note(pgvector_dsn, store_factory):
    table = make_table(pgvector_dsn, ["alpha"], vector="vector(4)", old=[1, 2, 3, 4], not_null=True)
    store = store_factory(pgvector_dsn, table)
    store.prepare(MODEL, 3)
    [row] = list(store.rows(-1, MODEL))
    store.write(MODEL, [(row.model_copy(update={"note": "chunked"}), [0.5, 0.25, 1.0])], [])
    side = side_table_name(table, MODEL)
    assert fetch(pgvector_dsn, f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{side}'::regclass "
                               "AND attname = 'embedding'") == [("vector(3)",)]
    assert fetch(pgvector_dsn, f"SELECT embedding::text, note FROM {side}") == [("[0.5,0.25,1]", "chunked")]


# --- a new column, asked for by name ---


def test_a_named_new_column_gets_the_vectors_and_its_bookkeeping_beside_it(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table, target_column="embedding_v2")
    store.prepare(MODEL, 2)
    embed_all(store, {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]})
    assert fetch(postgres_dsn, f"SELECT embedding, embedding_v2, embedding_v2_model, embedding_v2_content_sha256 FROM {table} ORDER BY id") == [
        ([9.0, 9.0], [1.0, 0.0], MODEL, content_sha256("alpha")),
        ([9.0, 9.0], [0.0, 1.0], MODEL, content_sha256("beta")),
    ]


# --- in place, only when asked and only at the same dimension ---


def test_in_place_at_another_dimension_is_refused_before_any_write_or_alter(pgvector_dsn, store_factory):
    table = make_table(pgvector_dsn, ["alpha"], vector="vector(4)", old=[1, 2, 3, 4], not_null=True)
    before = table_fingerprint(pgvector_dsn, table)
    store = store_factory(pgvector_dsn, table, in_place=True)
    with pytest.raises(JobError, match=r"refused before any write: .*holds \[4\]-d vectors and the model gives 3-d.*reembed switch"):
        store.prepare(MODEL, 3)
    assert table_fingerprint(pgvector_dsn, table) == before
    assert fetch(pgvector_dsn, f"SELECT to_regclass('{side_table_name(table, MODEL)}')") == [(None,)]


def test_in_place_into_an_untyped_array_checks_the_lengths_it_holds(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"], old=[0.1] * 768)
    store = store_factory(postgres_dsn, table, in_place=True)
    with pytest.raises(JobError, match=r"holds \[768\]-d vectors and the model gives 384-d"):
        store.prepare(MODEL, 384)


def test_in_place_at_the_same_dimension_writes_and_keeps_bookkeeping_out_of_the_table(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"], not_null=True)
    columns_before = table_fingerprint(postgres_dsn, table)[0]
    store = store_factory(postgres_dsn, table, in_place=True)
    store.prepare(MODEL, 2)
    embed_all(store, {"alpha": [1.0, 0.0]}, failed=("beta",))
    assert table_fingerprint(postgres_dsn, table)[0] == columns_before
    # A NOT NULL column cannot lose beta's vector: it keeps its old one, and the job says so.
    assert fetch(postgres_dsn, f"SELECT embedding FROM {table} ORDER BY id") == [([1.0, 0.0],), ([9.0, 9.0],)]
    assert store.failure_note == "it keeps its old vector"
    assert fetch(postgres_dsn, f"SELECT row_id, model FROM {side_table_name(table, MODEL)}") == [(1, MODEL)]


def test_in_place_into_a_nullable_column_clears_a_failed_rows_vector(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table, in_place=True)
    store.prepare(MODEL, 2)
    embed_all(store, {"alpha": [1.0, 0.0]}, failed=("beta",))
    assert fetch(postgres_dsn, f"SELECT embedding FROM {table} ORDER BY id") == [([1.0, 0.0],), (None,)]
    assert store.failure_note == "its vector was cleared"


@pytest.mark.parametrize("spec, problem", [
    ({"in_place": True, "target_column": "v2"}, "choose one"),
    ({"target_column": "embedding"}, "use in_place"),
    ({"dsn": "postgresql://athena:hunter2@db/athena"}, "holds a password"),
    ({"dsn": "host=db user=athena password=hunter2"}, "holds a password"),
    ({"dsn": None}, "connection name or a dsn"),
])
def test_a_source_that_asks_for_the_impossible_is_refused_by_name(spec, problem):
    with pytest.raises(ValueError, match=problem):
        PostgresSource(**{"dsn": "postgresql://athena@db/athena", **spec})


# --- filters and named connections ---


def test_a_filter_limits_the_rows_and_the_count(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["one", "two"], project=7)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {table} (project_id, content, embedding) VALUES (8, 'three', '{{1,1}}')")
    store = store_factory(postgres_dsn, table, where={"project_id": 7})
    store.prepare(MODEL, 2)
    assert store.count() == 2
    assert [row.content for row in store.rows(-1, MODEL)] == ["one", "two"]


def test_a_filter_value_is_a_parameter_never_sql(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["one"])
    store = store_factory(postgres_dsn, table, where={"content": "one' OR '1'='1"})
    store.prepare(MODEL, 2)
    assert store.count() == 0


def test_a_filter_on_a_column_the_table_lacks_is_refused(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["one"])
    with pytest.raises(JobError, match="no column 'tenant'"):
        store_factory(postgres_dsn, table, where={"tenant": 1}).prepare(MODEL, 2)


def test_a_named_connection_comes_from_the_environment_of_the_process(postgres_dsn, monkeypatch):
    table = make_table(postgres_dsn, ["one"])
    monkeypatch.setenv("ATHENA_POSTGRES_MEMORY", postgres_dsn)
    store = PostgresStore(PostgresSource(connection="memory", table=table))
    try:
        store.prepare(MODEL, 2)
        assert store.count() == 1
    finally:
        store.close()


def test_an_unknown_named_connection_says_which_variable_to_set(monkeypatch):
    monkeypatch.delenv("ATHENA_POSTGRES_NOWHERE", raising=False)
    with pytest.raises(JobError, match="set ATHENA_POSTGRES_NOWHERE="):
        PostgresStore(PostgresSource(connection="nowhere"))


# --- what the table must hold ---


def test_postgres_rows_come_in_id_order_from_the_cursor(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, [f"memory {i}" for i in range(2500)])
    store = store_factory(postgres_dsn, table)
    store.prepare(MODEL, 3)
    assert store.count() == 2500
    rows = list(store.rows(after=1200, model=MODEL))
    assert [row.id for row in rows] == list(range(1201, 2501))
    assert not any(row.up_to_date for row in rows)


def test_postgres_null_content_is_a_problem_row(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["fine", None])
    store = store_factory(postgres_dsn, table)
    store.prepare("m", 2)
    assert [row.problem for row in store.rows(-1, "m")] == [None, "content is NULL"]


def test_postgres_names_what_is_missing(postgres_dsn, store_factory):
    with pytest.raises(JobError, match="no table 'nowhere'"):
        store_factory(postgres_dsn, "nowhere").prepare("m", 2)
    table = make_table(postgres_dsn, ["x"])
    with pytest.raises(JobError, match="no column 'body'"):
        store_factory(postgres_dsn, table, content_column="body").prepare("m", 2)


def test_postgres_refuses_a_column_that_holds_no_vectors(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["x"])
    with pytest.raises(JobError, match="is text, not a vector or real"):
        store_factory(postgres_dsn, table, embedding_column="content", in_place=True).prepare("m", 2)


def test_postgres_unreachable_is_a_job_error():
    with pytest.raises(JobError, match="cannot connect to PostgreSQL"):
        PostgresStore(PostgresSource(dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"))
