"""A PostgreSQL table shaped like Athena's `memory_vectors`, with pgvector or `real[]`.

A model migration must not hurt the live table, so where vectors go depends
on what the job asked (`PostgresSource.mode`):

- `side_table` (the default): a table the job creates beside the user's,
  holding row id, vector, model, text hash and note. The user's table is read
  and never altered, and no lock is taken on it beyond reading;
- `column`: a new column of the user's table, asked for by name, with its
  bookkeeping columns beside it;
- `in_place`: the column search reads, only when asked for and only when the
  model's dimension equals every existing vector's; the bookkeeping goes to the
  side table.

Every vector is tagged with its space (`vector_space`: model, profile, size)
in the bookkeeping's `model` column (the name is historical: it held the bare
model name before, and keeping it keeps older tables readable). A place holds
one space: a side table or target column that already holds vectors of
another space (or bare model names, as older jobs wrote) is refused, and so is
an in-place job when the bookkeeping records that the column holds another
space's vectors, from an earlier in-place job finished or not. The first
in-place job on a column cannot know what made the vectors already there
(nothing recorded them); it is trusted at the same dimension, and records
every vector it writes.

Every refusal happens in `prepare`, before any DDL or write. Each vector is
written by a statement that also checks the row's text is still the one
embedded, so a row edited during the job never gets a vector of its old text.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Iterator, Optional, Sequence

from athena_client.contract.errors import JobError
from athena_client.contract.jobs import PostgresSource
from athena_client.contract.payloads import VectorOrigin
from athena_inference.workers.reembedding.stores.rows import PAGE, StoreRow, another_space, content_sha256

CONNECTION_ENV = "ATHENA_POSTGRES_{}"
VECTOR_TYPES = ("vector", "real[]", "double precision[]")
_SHA = "encode(sha256(convert_to({text}, 'UTF8')), 'hex')"


def named_connection(name: str) -> str:
    """The DSN of a named connection, from this process's environment (never from Redis)."""
    variable = CONNECTION_ENV.format(name.upper())
    dsn = os.environ.get(variable)
    if not dsn:
        raise JobError(
            f"no PostgreSQL connection named {name!r}: set {variable}=postgresql://user:password@host/db "
            "in the environment of the process that runs the job (the jobs worker, or this command)"
        )
    return dsn


def side_table_name(table: str, model: str, dimensions: Optional[int] = None) -> str:
    """`<table>__<model>` (`<table>__<model>_<n>` for a job that asks for n
    dimensions), as a plain identifier of at most 63 characters (PostgreSQL's limit)."""
    slug = re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_") or "model"
    name = f"{table}__{slug}" + (f"_{dimensions}" if dimensions is not None else "")
    if len(name) > 63:
        name = f"{name[:54]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


class PostgresStore:
    """A `memory_vectors`-shaped table, read in id order by keyset pages."""

    def __init__(self, spec: PostgresSource, *, dimensions: Optional[int] = None) -> None:
        import psycopg
        from psycopg import sql

        self.spec, self.sql = spec, sql
        # The Matryoshka size the job asked for, which names its default side table.
        self.dimensions = dimensions
        dsn = spec.dsn if spec.dsn is not None else named_connection(spec.connection or "")
        try:
            self.conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise JobError(f"cannot connect to PostgreSQL: {_without_password(str(exc).strip(), dsn)}") from None
        self.table = sql.Identifier(spec.table)
        self.id_col, self.text_col = sql.Identifier(spec.id_column), sql.Identifier(spec.content_column)
        self.mode = spec.mode
        # Where the vectors go, and the bookkeeping of the `column` mode.
        self.column = spec.target_column or spec.embedding_column
        self.col = sql.Identifier(self.column)
        self.model_col = sql.Identifier(f"{self.column}_model")
        self.sha_col = sql.Identifier(f"{self.column}_content_sha256")
        self.note_col = sql.Identifier(f"{self.column}_note")
        self.side_name: Optional[str] = spec.side_table
        self.pgvector = False
        # The space every vector is written in and compared by; set by prepare().
        self.space = ""
        # What happens to a row that gets no vector, said in its item error.
        self.failure_note: Optional[str] = None

    def describe(self) -> str:
        where = {"side_table": f"side table {self.side_name or '(per model)'}", "column": f"new column {self.column}"}
        return f"PostgreSQL {self.spec.table}.{self.spec.content_column} -> {where.get(self.mode, f'{self.column} in place')}"

    # --- what the table holds ---

    def _column(self, table: str, column: str) -> Optional[tuple[str, bool]]:
        """(type, NOT NULL) of a column, or None when it does not exist."""
        return self.conn.execute(
            "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped AND a.attnum > 0",
            (table, column),
        ).fetchone()

    def _filters(self) -> tuple[Any, list[Any]]:
        """`AND col = %s ...` for the job's `where`, with its values as parameters."""
        sql = self.sql
        clauses = [sql.SQL(" AND {} = %s").format(sql.Identifier(column)) for column in self.spec.where]
        return sql.SQL("").join(clauses), list(self.spec.where.values())

    def _dimensions(self, column: str) -> set[int]:
        """The lengths of the vectors the column holds now."""
        sql = self.sql
        ident = sql.Identifier(column)
        typed_vector = self._column(self.spec.table, column)[0].startswith("vector")
        length = sql.SQL("vector_dims({})" if typed_vector else "array_length({}, 1)").format(ident)
        rows = self.conn.execute(
            sql.SQL("SELECT DISTINCT {} FROM {} WHERE {} IS NOT NULL").format(length, self.table, ident)
        ).fetchall()
        return {int(r[0]) for r in rows if r[0] is not None}

    # --- before anything is written ---

    def prepare(self, origin: VectorOrigin) -> None:
        spec, dimension = self.spec, origin.dimension
        if self.conn.execute("SELECT to_regclass(%s)", (spec.table,)).fetchone()[0] is None:
            raise JobError(f"PostgreSQL has no table {spec.table!r}")
        for column in (spec.id_column, spec.content_column, *spec.where):
            if self._column(spec.table, column) is None:
                raise JobError(f"table {spec.table!r} has no column {column!r}")
        self.pgvector = bool(self.conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone())
        self.vector_type = f"vector({dimension})" if self.pgvector else "real[]"
        self.side_name = spec.side_table or side_table_name(spec.table, origin.model, self.dimensions)
        self.space = origin.space
        if self.mode == "column":
            self._check_new_column(dimension)
        else:
            if self.mode == "in_place":
                self._check_in_place(dimension)
            self._check_side_table(dimension)
        self._check_space()
        # Every check has passed: only now is anything created. A target
        # column keeps its bookkeeping beside it, and needs no side table.
        if self.mode == "column":
            self._create_column()
        else:
            self._create_side_table()
        # Vectors are sent as pgvector text or as arrays, whichever the column they go to holds.
        held_in = (self.side_name, "embedding") if self.mode == "side_table" else (spec.table, self.column)
        self.pgvector = self._column(*held_in)[0].startswith("vector")

    def _check_new_column(self, dimension: int) -> None:
        existing = self._column(self.spec.table, self.column)
        if existing is None:
            return
        kind = existing[0]
        if kind.startswith("vector(") and kind != f"vector({dimension})":
            raise JobError(
                f"{self.spec.table}.{self.column} is {kind} but the model gives {dimension}-d vectors; "
                "name another target column, or leave it out to re-embed into a side table"
            )
        if not kind.startswith(VECTOR_TYPES):
            raise JobError(f"{self.spec.table}.{self.column} is {kind}, not a vector or real[] column")

    def _check_in_place(self, dimension: int) -> None:
        table, column = self.spec.table, self.column
        existing = self._column(table, column)
        instead = (
            f"re-embed into a side table instead (leave out --in-place), check the counts, then "
            f"`athena-inference reembed switch JOB`; or into a new column (--target-column {column}_new)"
        )
        if existing is None:
            raise JobError(f"table {table!r} has no column {column!r} to write in place; {instead}")
        kind, not_null = existing
        if not kind.startswith(VECTOR_TYPES):
            raise JobError(f"{table}.{column} is {kind}, not a vector or real[] column")
        held = {int(kind[len("vector("):-1])} if kind.startswith("vector(") else self._dimensions(column)
        if held - {dimension}:
            raise JobError(
                f"refused before any write: {table}.{column} holds {sorted(held)}-d vectors and the model gives "
                f"{dimension}-d ones; writing them in place would leave search comparing two models. {instead}"
            )
        # A NOT NULL column cannot lose a failed row's vector: the row keeps its old one.
        self.failure_note = "it keeps its old vector" if not_null else "its vector was cleared"

    def _other_spaces(self, held) -> list[tuple[Optional[str], int]]:
        """(tag, rows) of each space other than the job's among `held` (a query of tags), most rows first."""
        query = self.sql.SQL(
            "SELECT tag, count(*) FROM ({}) held WHERE tag IS DISTINCT FROM %s GROUP BY tag ORDER BY count(*) DESC LIMIT 3"
        ).format(held)
        return [(tag, int(rows)) for tag, rows in self.conn.execute(query, [self.space]).fetchall()]

    def _check_space(self) -> None:
        """Refuse a place that holds vectors of another space: one side table, one column, one space."""
        if self.mode == "column":
            self._check_column_space()
        elif self._column(self.side_name, "model") is not None:
            self._check_side_table_space()

    def _check_column_space(self) -> None:
        sql = self.sql
        if self._column(self.spec.table, self.column) is None:
            return
        # A vector with no tag beside it was written by something else than a job: of no known space.
        tagged = self._column(self.spec.table, f"{self.column}_model") is not None
        tag = self.model_col if tagged else sql.SQL("NULL::text")
        found = self._other_spaces(sql.SQL("SELECT {} AS tag FROM {} WHERE {} IS NOT NULL").format(tag, self.table, self.col))
        if found:
            raise another_space(
                f"column {self.spec.table}.{self.column}", found, self.space,
                f"Name another target column (--target-column {self.column}_2), or re-embed into a side table "
                f"(leave out --target-column); to replace these vectors, drop the column and its "
                f"{self.column}_model, {self.column}_content_sha256 and {self.column}_note first.",
            )

    def _check_side_table_space(self) -> None:
        found = self._other_spaces(self.sql.SQL("SELECT model AS tag FROM {}").format(self.sql.Identifier(self.side_name)))
        if not found:
            return
        if self.mode == "in_place":
            # The column itself holds those vectors: its bookkeeping says so.
            raise another_space(
                f"{self.spec.table}.{self.column} (its bookkeeping in {self.side_name}, from an earlier in-place job, finished or not)",
                found, self.space,
                "Finish or redo that job with the bulk lane on its space (reembed resume JOB), or re-embed into a side "
                "table (leave out --in-place) and `athena-inference reembed switch JOB`.",
            )
        raise another_space(
            f"side table {self.side_name}", found, self.space,
            f"Name another side table (--side-table {self.side_name}_2); to replace these vectors, DROP TABLE {self.side_name} first.",
        )

    def _check_side_table(self, dimension: int) -> None:
        existing = self._column(self.side_name, "embedding")
        if existing is not None and existing[0].startswith("vector(") and existing[0] != f"vector({dimension})":
            raise JobError(
                f"side table {self.side_name} holds {existing[0]} vectors but the model gives {dimension}-d ones; "
                "name another side table (--side-table)"
            )

    def _create_column(self) -> None:
        sql = self.sql
        self.conn.execute(
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(self.table, self.col, sql.SQL(self.vector_type))
        )
        for column in (self.model_col, self.sha_col, self.note_col):
            self.conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(self.table, column))

    def _create_side_table(self) -> None:
        sql = self.sql
        id_type = self._column(self.spec.table, self.spec.id_column)[0]
        # No foreign key: creating one would lock the user's table.
        self.conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {side} (row_id {id_type} PRIMARY KEY, embedding {vector}, model text NOT NULL, "
                "content_sha256 text NOT NULL, note text, embedded_at timestamptz NOT NULL DEFAULT now())"
            ).format(side=sql.Identifier(self.side_name), id_type=sql.SQL(id_type), vector=sql.SQL(self.vector_type))
        )

    # --- reading ---

    def count(self) -> int:
        filters, params = self._filters()
        query = self.sql.SQL("SELECT count(*) FROM {} WHERE TRUE").format(self.table) + filters
        return self.conn.execute(query, params).fetchone()[0]

    def rows(self, after: int) -> Iterator[StoreRow]:
        sql = self.sql
        filters, params = self._filters()
        if self.mode == "column":
            recorded = sql.SQL("t.{}, t.{} FROM {} t").format(self.model_col, self.sha_col, self.table)
        else:
            recorded = sql.SQL("s.model, s.content_sha256 FROM {} t LEFT JOIN {} s ON s.row_id = t.{}").format(
                self.table, sql.Identifier(self.side_name), self.id_col
            )
        query = (
            sql.SQL("SELECT t.{}, t.{}, ").format(self.id_col, self.text_col)
            + recorded
            + sql.SQL(" WHERE t.{} > %s").format(self.id_col)
            + filters
            + sql.SQL(" ORDER BY t.{} LIMIT %s").format(self.id_col)
        )
        last = after
        while page := self.conn.execute(query, [last, *params, PAGE]).fetchall():
            for key, text, recorded_space, recorded_sha in page:
                if text is None:
                    yield StoreRow(position=key, id=key, problem="content is NULL")
                    continue
                sha = content_sha256(text)
                current = recorded_space == self.space and recorded_sha == sha
                yield StoreRow(position=key, id=key, content=text, content_sha256=sha, up_to_date=current)
            last = page[-1][0]

    # --- writing ---

    def write(self, done: Sequence[tuple[StoreRow, list[float]]], failed: Sequence[StoreRow]) -> list[StoreRow]:
        with self.conn.transaction(), self.conn.cursor() as cur:
            written = self._write_vectors(cur, done) if done else set()
            if failed:
                self._forget(cur, [row.id for row in failed])
        return [row for row, _ in done if row.id not in written]

    def _vector(self, vector: Sequence[float]) -> Any:
        return _vector_text(vector) if self.pgvector else list(vector)

    def _write_vectors(self, cur, done: Sequence[tuple[StoreRow, list[float]]]) -> set:
        sql, space = self.sql, self.space
        cast = sql.SQL("::vector" if self.pgvector else "::real[]")
        still_same = sql.SQL(_SHA).format(text=self.text_col)
        if self.mode == "column":
            statement = sql.SQL(
                "UPDATE {t} SET {col} = %s{cast}, {m} = %s, {h} = %s, {n} = %s WHERE {id} = %s AND {same} = %s RETURNING {id}"
            ).format(t=self.table, col=self.col, cast=cast, m=self.model_col, h=self.sha_col, n=self.note_col, id=self.id_col, same=still_same)
            params = [(self._vector(v), space, row.content_sha256, row.note, row.id, row.content_sha256) for row, v in done]
            return _returned(cur, statement, params)
        if self.mode == "in_place":
            statement = sql.SQL("UPDATE {t} SET {col} = %s{cast} WHERE {id} = %s AND {same} = %s RETURNING {id}").format(
                t=self.table, col=self.col, cast=cast, id=self.id_col, same=still_same
            )
            written = _returned(cur, statement, [(self._vector(v), row.id, row.content_sha256) for row, v in done])
            self._record(cur, [row for row, _ in done if row.id in written])
            return written
        statement = sql.SQL(
            "INSERT INTO {s} (row_id, embedding, model, content_sha256, note) "
            "SELECT %s, %s{cast}, %s, %s, %s WHERE EXISTS (SELECT 1 FROM {t} WHERE {id} = %s AND {same} = %s) "
            "ON CONFLICT (row_id) DO UPDATE SET embedding = EXCLUDED.embedding, model = EXCLUDED.model, "
            "content_sha256 = EXCLUDED.content_sha256, note = EXCLUDED.note, embedded_at = now() RETURNING row_id"
        ).format(s=sql.Identifier(self.side_name), cast=cast, t=self.table, id=self.id_col, same=still_same)
        params = [(row.id, self._vector(v), space, row.content_sha256, row.note, row.id, row.content_sha256) for row, v in done]
        return _returned(cur, statement, params)

    def _record(self, cur, rows: Sequence[StoreRow]) -> None:
        """The in-place mode's bookkeeping, in the side table (the vector itself is in the user's column)."""
        if not rows:
            return
        statement = self.sql.SQL(
            "INSERT INTO {s} (row_id, model, content_sha256, note) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (row_id) DO UPDATE SET model = EXCLUDED.model, content_sha256 = EXCLUDED.content_sha256, "
            "note = EXCLUDED.note, embedded_at = now()"
        ).format(s=self.sql.Identifier(self.side_name))
        cur.executemany(statement, [(row.id, self.space, row.content_sha256, row.note) for row in rows])

    def _forget(self, cur, ids: list) -> None:
        """A row that got no vector keeps none from this model (and, in place, loses its old one where the column allows)."""
        sql = self.sql
        if self.mode == "column" or (self.mode == "in_place" and self.failure_note == "its vector was cleared"):
            cur.executemany(sql.SQL("UPDATE {} SET {} = NULL WHERE {} = %s").format(self.table, self.col, self.id_col), [(i,) for i in ids])
        if self.mode == "column":
            cur.executemany(
                sql.SQL("UPDATE {} SET {} = NULL, {} = NULL, {} = NULL WHERE {} = %s").format(
                    self.table, self.model_col, self.sha_col, self.note_col, self.id_col
                ),
                [(i,) for i in ids],
            )
        else:
            cur.executemany(sql.SQL("DELETE FROM {} WHERE row_id = %s").format(sql.Identifier(self.side_name)), [(i,) for i in ids])

    def finish(self) -> None:
        pass

    def close(self) -> None:
        self.conn.close()


def _returned(cur, statement, params: list) -> set:
    """The ids an `executemany ... RETURNING` wrote."""
    written: set = set()
    cur.executemany(statement, params, returning=True)
    while True:
        written.update(r[0] for r in cur.fetchall())
        if not cur.nextset():
            break
    return written


def _vector_text(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in vector) + "]"


def _without_password(message: str, dsn: str) -> str:
    """libpq's message, with the DSN's password (if it has one) taken out."""
    from urllib.parse import urlsplit

    password = urlsplit(dsn).password if "://" in dsn else None
    return message.replace(password, "***") if password else message
