"""The PostgreSQL store on a real server: where vectors go, what it refuses before writing,
filters and named connections. `real[]` tables on the machine's PostgreSQL, `vector(n)`
ones on a pgvector server of the test session's own."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from athena_client.contract.errors import JobError
from athena_client.contract.jobs import PostgresSource
from athena_client.contract.payloads import VectorOrigin, vector_space
from athena_inference.workers.reembedding.stores import PostgresStore, content_sha256
from athena_inference.workers.reembedding.stores.postgres import side_table_name

MODEL = "new-model"
PROFILE = "new-model-profile"


def origin(dimension: int, profile: str = PROFILE) -> VectorOrigin:
    return VectorOrigin(model=MODEL, profile=profile, dimension=dimension)


def space(dimension: int, profile: str = PROFILE) -> str:
    return vector_space(MODEL, profile, dimension)


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
    rows = list(store.rows(-1))
    done = [(row, vectors[row.content]) for row in rows if row.content in vectors]
    return store.write(done, [row for row in rows if row.content in failed])


# --- the default: a side table; the user's table untouched ---


def test_by_default_vectors_go_to_a_side_table_and_the_table_is_not_altered(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    before = table_fingerprint(postgres_dsn, table)
    store = store_factory(postgres_dsn, table)
    store.prepare(origin(3))
    assert embed_all(store, {"alpha": [0.5, 0.25, 1.0], "beta": [1.0, 2.0, 3.0]}) == []
    assert table_fingerprint(postgres_dsn, table) == before
    side = side_table_name(table, MODEL)
    assert fetch(postgres_dsn, f"SELECT row_id, embedding, model, content_sha256 FROM {side} ORDER BY row_id") == [
        (1, [0.5, 0.25, 1.0], space(3), content_sha256("alpha")),
        (2, [1.0, 2.0, 3.0], space(3), content_sha256("beta")),
    ]


def test_a_second_run_finds_every_row_up_to_date_in_the_side_table(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table)
    store.prepare(origin(2))
    embed_all(store, {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]})
    again = store_factory(postgres_dsn, table)
    again.prepare(origin(2))
    assert [row.up_to_date for row in again.rows(-1)] == [True, True]


def test_a_failed_row_loses_its_side_vector_and_keeps_its_own(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table)
    store.prepare(origin(2))
    embed_all(store, {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]})
    embed_all(store, {"alpha": [1.0, 1.0]}, failed=("beta",))
    assert fetch(postgres_dsn, f"SELECT row_id FROM {side_table_name(table, MODEL)}") == [(1,)]
    assert fetch(postgres_dsn, f"SELECT embedding FROM {table} ORDER BY id") == [([9.0, 9.0],), ([9.0, 9.0],)]


def test_a_vector_for_a_text_changed_meanwhile_is_refused(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["before"])
    store = store_factory(postgres_dsn, table)
    store.prepare(origin(2))
    [row] = list(store.rows(-1))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET content = 'after' WHERE id = 1")
    assert store.write([(row, [1.0, 1.0])], []) == [row]
    assert fetch(postgres_dsn, f"SELECT count(*) FROM {side_table_name(table, MODEL)}") == [(0,)]


def test_the_side_table_of_a_pgvector_table_holds_typed_vectors_and_a_note(pgvector_dsn, store_factory):
    table = make_table(pgvector_dsn, ["alpha"], vector="vector(4)", old=[1, 2, 3, 4], not_null=True)
    store = store_factory(pgvector_dsn, table)
    store.prepare(origin(3))
    [row] = list(store.rows(-1))
    store.write([(row.model_copy(update={"note": "chunked"}), [0.5, 0.25, 1.0])], [])
    side = side_table_name(table, MODEL)
    assert fetch(pgvector_dsn, f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{side}'::regclass "
                               "AND attname = 'embedding'") == [("vector(3)",)]
    assert fetch(pgvector_dsn, f"SELECT embedding::text, note FROM {side}") == [("[0.5,0.25,1]", "chunked")]


# --- a new column, asked for by name ---


def test_a_named_new_column_gets_the_vectors_and_its_bookkeeping_beside_it(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table, target_column="embedding_v2")
    store.prepare(origin(2))
    embed_all(store, {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]})
    assert fetch(postgres_dsn, f"SELECT embedding, embedding_v2, embedding_v2_model, embedding_v2_content_sha256 FROM {table} ORDER BY id") == [
        ([9.0, 9.0], [1.0, 0.0], space(2), content_sha256("alpha")),
        ([9.0, 9.0], [0.0, 1.0], space(2), content_sha256("beta")),
    ]


# --- in place, only when asked and only at the same dimension ---


def test_in_place_at_another_dimension_is_refused_before_any_write_or_alter(pgvector_dsn, store_factory):
    table = make_table(pgvector_dsn, ["alpha"], vector="vector(4)", old=[1, 2, 3, 4], not_null=True)
    before = table_fingerprint(pgvector_dsn, table)
    store = store_factory(pgvector_dsn, table, in_place=True)
    with pytest.raises(JobError, match=r"refused before any write: .*holds \[4\]-d vectors and the model gives 3-d.*reembed switch"):
        store.prepare(origin(3))
    assert table_fingerprint(pgvector_dsn, table) == before
    assert fetch(pgvector_dsn, f"SELECT to_regclass('{side_table_name(table, MODEL)}')") == [(None,)]


def test_in_place_into_an_untyped_array_checks_the_lengths_it_holds(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"], old=[0.1] * 768)
    store = store_factory(postgres_dsn, table, in_place=True)
    with pytest.raises(JobError, match=r"holds \[768\]-d vectors and the model gives 384-d"):
        store.prepare(origin(384))


def test_in_place_at_the_same_dimension_writes_and_keeps_bookkeeping_out_of_the_table(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"], not_null=True)
    columns_before = table_fingerprint(postgres_dsn, table)[0]
    store = store_factory(postgres_dsn, table, in_place=True)
    store.prepare(origin(2))
    embed_all(store, {"alpha": [1.0, 0.0]}, failed=("beta",))
    assert table_fingerprint(postgres_dsn, table)[0] == columns_before
    # A NOT NULL column cannot lose beta's vector: it keeps its old one, and the job says so.
    assert fetch(postgres_dsn, f"SELECT embedding FROM {table} ORDER BY id") == [([1.0, 0.0],), ([9.0, 9.0],)]
    assert store.failure_note == "it keeps its old vector"
    assert fetch(postgres_dsn, f"SELECT row_id, model FROM {side_table_name(table, MODEL)}") == [(1, space(2))]


def test_in_place_into_a_nullable_column_clears_a_failed_rows_vector(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table, in_place=True)
    store.prepare(origin(2))
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
    store.prepare(origin(2))
    assert store.count() == 2
    assert [row.content for row in store.rows(-1)] == ["one", "two"]


def test_a_filter_value_is_a_parameter_never_sql(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["one"])
    store = store_factory(postgres_dsn, table, where={"content": "one' OR '1'='1"})
    store.prepare(origin(2))
    assert store.count() == 0


def test_a_filter_on_a_column_the_table_lacks_is_refused(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["one"])
    with pytest.raises(JobError, match="no column 'tenant'"):
        store_factory(postgres_dsn, table, where={"tenant": 1}).prepare(origin(2))


def test_a_named_connection_comes_from_the_environment_of_the_process(postgres_dsn, monkeypatch):
    table = make_table(postgres_dsn, ["one"])
    monkeypatch.setenv("ATHENA_POSTGRES_MEMORY", postgres_dsn)
    store = PostgresStore(PostgresSource(connection="memory", table=table))
    try:
        store.prepare(origin(2))
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
    store.prepare(origin(3))
    assert store.count() == 2500
    rows = list(store.rows(after=1200))
    assert [row.id for row in rows] == list(range(1201, 2501))
    assert not any(row.up_to_date for row in rows)


def test_postgres_null_content_is_a_problem_row(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["fine", None])
    store = store_factory(postgres_dsn, table)
    store.prepare(origin(2))
    assert [row.problem for row in store.rows(-1)] == [None, "content is NULL"]


def test_postgres_names_what_is_missing(postgres_dsn, store_factory):
    with pytest.raises(JobError, match="no table 'nowhere'"):
        store_factory(postgres_dsn, "nowhere").prepare(origin(2))
    table = make_table(postgres_dsn, ["x"])
    with pytest.raises(JobError, match="no column 'body'"):
        store_factory(postgres_dsn, table, content_column="body").prepare(origin(2))


def test_postgres_refuses_a_column_that_holds_no_vectors(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["x"])
    with pytest.raises(JobError, match="is text, not a vector or real"):
        store_factory(postgres_dsn, table, embedding_column="content", in_place=True).prepare(origin(2))


def test_postgres_unreachable_is_a_job_error():
    with pytest.raises(JobError, match="cannot connect to PostgreSQL"):
        PostgresStore(PostgresSource(dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"))


# --- one vector space per place ---


def side_rows(dsn: str, side: str) -> list[tuple]:
    return fetch(dsn, f"SELECT row_id, embedding::text, model, content_sha256, note, embedded_at FROM {side} ORDER BY row_id")


def test_a_side_table_of_another_space_at_the_same_dimension_is_refused_and_keeps_its_vectors(pgvector_dsn, store_factory):
    table = make_table(pgvector_dsn, ["alpha", "beta"], vector="vector(4)", old=[1, 2, 3, 4], not_null=True)
    store = store_factory(pgvector_dsn, table)
    store.prepare(origin(3))
    embed_all(store, {"alpha": [1.0, 0.0, 0.0], "beta": [0.0, 1.0, 0.0]})
    side = side_table_name(table, MODEL)
    before = (table_fingerprint(pgvector_dsn, table), side_rows(pgvector_dsn, side))

    other = store_factory(pgvector_dsn, table)
    with pytest.raises(JobError, match=rf"refused before any write: side table {side} holds vectors of another space "
                                       rf"\(2 of 'new-model \[new-model-profile, 3-d\]'\) and the bulk lane makes "
                                       rf"'new-model \[prefixed, 3-d\]'.*--side-table {side}_2"):
        other.prepare(origin(3, profile="prefixed"))
    assert (table_fingerprint(pgvector_dsn, table), side_rows(pgvector_dsn, side)) == before


def test_a_side_table_of_another_space_is_refused_whatever_the_model_it_is_named_after(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha"])
    store = store_factory(postgres_dsn, table, side_table="shared_side")
    store.prepare(origin(2))
    embed_all(store, {"alpha": [1.0, 0.0]})
    elsewhere = PostgresStore(PostgresSource(dsn=postgres_dsn, table=table, side_table="shared_side"))
    try:
        with pytest.raises(JobError, match="side table shared_side holds vectors of another space"):
            elsewhere.prepare(VectorOrigin(model="another-model", profile="another-model", dimension=2))
    finally:
        elsewhere.close()


def test_the_same_space_skips_unchanged_rows_and_redoes_an_edited_one(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table)
    store.prepare(origin(2))
    embed_all(store, {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]})
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET content = 'beta, edited' WHERE id = 2")
    again = store_factory(postgres_dsn, table)
    again.prepare(origin(2))
    assert [(row.content, row.up_to_date) for row in again.rows(-1)] == [("alpha", True), ("beta, edited", False)]


def test_a_side_table_written_before_vectors_named_their_space_is_refused_with_how_to_adopt_it(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha"])
    side = side_table_name(table, MODEL)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        # As an older job left it: the bare model name in `model`.
        conn.execute(f"CREATE TABLE {side} (row_id bigint PRIMARY KEY, embedding real[], model text NOT NULL, content_sha256 text NOT NULL, "
                     "note text, embedded_at timestamptz NOT NULL DEFAULT now())")
        conn.execute(f"INSERT INTO {side} (row_id, embedding, model, content_sha256) VALUES (1, '{{1,0}}', %s, %s)", (MODEL, content_sha256("alpha")))
    before = side_rows(postgres_dsn, side)
    with pytest.raises(JobError, match=r"\(1 of 'new-model'\).*'new-model' is a bare model name.*Vectors of older jobs"):
        store_factory(postgres_dsn, table).prepare(origin(2))
    assert side_rows(postgres_dsn, side) == before


def test_a_target_column_of_another_space_is_refused_and_keeps_its_vectors(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table, target_column="embedding_v2")
    store.prepare(origin(2))
    embed_all(store, {"alpha": [1.0, 0.0]})
    before = table_fingerprint(postgres_dsn, table)
    with pytest.raises(JobError, match=r"column .*\.embedding_v2 holds vectors of another space \(1 of 'new-model \[new-model-profile, 2-d\]'\)"
                                       r".*--target-column embedding_v2_2"):
        store_factory(postgres_dsn, table, target_column="embedding_v2").prepare(origin(2, profile="prefixed"))
    assert table_fingerprint(postgres_dsn, table) == before
    # The same space goes on where it stopped.
    again = store_factory(postgres_dsn, table, target_column="embedding_v2")
    again.prepare(origin(2))
    assert [row.up_to_date for row in again.rows(-1)] == [True, False]


def test_a_target_column_holding_vectors_no_job_recorded_is_refused(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha"])
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN by_hand real[]")
        conn.execute(f"UPDATE {table} SET by_hand = '{{1,2}}'")
    with pytest.raises(JobError, match=r"holds vectors of another space \(1 that no job recorded\)"):
        store_factory(postgres_dsn, table, target_column="by_hand").prepare(origin(2))


def test_a_target_column_job_makes_no_side_table_and_ignores_one_of_another_space(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha"])
    side_job = store_factory(postgres_dsn, table)
    side_job.prepare(origin(2, profile="prefixed"))
    embed_all(side_job, {"alpha": [1.0, 0.0]})
    column_job = store_factory(postgres_dsn, table, target_column="embedding_v2", side_table="not_made")
    column_job.prepare(origin(2))
    assert fetch(postgres_dsn, "SELECT to_regclass('not_made')") == [(None,)]


def test_in_place_after_a_half_finished_in_place_job_of_another_space_is_refused(postgres_dsn, store_factory):
    table = make_table(postgres_dsn, ["alpha", "beta", "gamma"], not_null=True)
    first = store_factory(postgres_dsn, table, in_place=True)
    first.prepare(origin(2))
    # Stopped after one row: the column now holds one vector of this space and two of whatever made them before.
    embed_all(first, {"alpha": [1.0, 0.0]})
    before = (table_fingerprint(postgres_dsn, table), side_rows(postgres_dsn, side_table_name(table, MODEL)))
    with pytest.raises(JobError, match=r"refused before any write: .*\.embedding \(its bookkeeping in .*, from an earlier in-place job, "
                                       r"finished or not\) holds vectors of another space \(1 of 'new-model \[new-model-profile, 2-d\]'\)"
                                       r".*reembed switch"):
        store_factory(postgres_dsn, table, in_place=True).prepare(origin(2, profile="prefixed"))
    assert (table_fingerprint(postgres_dsn, table), side_rows(postgres_dsn, side_table_name(table, MODEL))) == before
    # Its own space finishes it, skipping the row already done.
    again = store_factory(postgres_dsn, table, in_place=True)
    again.prepare(origin(2))
    assert [row.up_to_date for row in again.rows(-1)] == [True, False, False]


def test_a_job_that_asks_for_a_matryoshka_size_gets_a_default_side_table_of_its_own(postgres_dsn):
    table = make_table(postgres_dsn, ["alpha"])
    assert side_table_name(table, MODEL, 256) == f"{side_table_name(table, MODEL)}_256"
    store = PostgresStore(PostgresSource(dsn=postgres_dsn, table=table), dimensions=2)
    try:
        store.prepare(origin(2))
        assert store.side_name == f"{table}__new_model_2"
    finally:
        store.close()
    assert fetch(postgres_dsn, f"SELECT to_regclass('{table}__new_model_2') IS NOT NULL") == [(True,)]


def test_switch_refuses_a_side_table_holding_more_than_the_jobs_space(postgres_dsn, store_factory):
    from datetime import datetime, timezone

    from athena_client.contract.jobs import JobState, JobStatus, ReembedRequest
    from athena_inference.workers.reembedding.switch import Switch

    table = make_table(postgres_dsn, ["alpha", "beta"])
    store = store_factory(postgres_dsn, table)
    store.prepare(origin(2))
    embed_all(store, {"alpha": [1.0, 0.0], "beta": [0.0, 1.0]})
    side = side_table_name(table, MODEL)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        # What no job writes, but a hand (or jobs from before vectors named their space) may have.
        conn.execute(f"UPDATE {side} SET model = 'new-model' WHERE row_id = 2")
    job = JobState(
        job_id="mixed-side-table", status=JobStatus.COMPLETED, request=ReembedRequest(source=PostgresSource(dsn=postgres_dsn, table=table)),
        created_at=datetime.now(timezone.utc), model=MODEL, profile=PROFILE, dimension=2, space=space(2),
    )
    before = table_fingerprint(postgres_dsn, table)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        with pytest.raises(JobError, match=rf"refused, nothing changed: side table {side} holds vectors of more spaces than the job's "
                                           rf"'new-model \[new-model-profile, 2-d\]' \(1 of .*1 of 'new-model'\)"):
            Switch(job, conn).switch(allow_null=True)
    assert table_fingerprint(postgres_dsn, table) == before
