"""A PostgreSQL table shaped like Athena's `memory_vectors`, with pgvector or `real[]`."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

from athena_client.errors import JobError
from athena_client.jobs import PostgresSource
from athena_inference.workers.reembedding.stores.rows import PAGE, StoreRow, content_sha256


class PostgresStore:
    """A `memory_vectors`-shaped table, read in id order by keyset pages.

    Each vector is written with its model and content hash in one UPDATE that
    also checks the text is still the one embedded, so a row edited during the
    job never gets a vector of its old text.
    """

    def __init__(self, spec: PostgresSource) -> None:
        import psycopg
        from psycopg import sql

        self.spec, self.sql = spec, sql
        try:
            self.conn = psycopg.connect(spec.dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise JobError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
        self.table = sql.Identifier(spec.table)
        self.id_col, self.text_col = sql.Identifier(spec.id_column), sql.Identifier(spec.content_column)
        self.col = sql.Identifier(spec.column)
        self.model_col = sql.Identifier(f"{spec.column}_model")
        self.sha_col = sql.Identifier(f"{spec.column}_content_sha256")
        self.pgvector = False

    def describe(self) -> str:
        return f"PostgreSQL {self.spec.table}.{self.spec.content_column} -> {self.spec.column}"

    def _column_type(self, column: str) -> Optional[str]:
        row = self.conn.execute(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped AND a.attnum > 0",
            (self.spec.table, column),
        ).fetchone()
        return row[0] if row else None

    def prepare(self, model: str, dimension: int) -> None:
        sql = self.sql
        if self.conn.execute("SELECT to_regclass(%s)", (self.spec.table,)).fetchone()[0] is None:
            raise JobError(f"PostgreSQL has no table {self.spec.table!r}")
        for column in (self.spec.id_column, self.spec.content_column):
            if self._column_type(column) is None:
                raise JobError(f"table {self.spec.table!r} has no column {column!r}")
        self.pgvector = bool(self.conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone())
        existing = self._column_type(self.spec.column)
        wanted = f"vector({dimension})" if self.pgvector else "real[]"
        if existing is None:
            kind = sql.SQL(wanted)
            self.conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(self.table, self.col, kind))
        elif existing.startswith("vector(") and existing != f"vector({dimension})":
            raise JobError(
                f"{self.spec.table}.{self.spec.column} is {existing} but the model gives {dimension}-d vectors; "
                "re-embed into a new column (target_column) for a change of dimension"
            )
        elif existing not in ("vector", f"vector({dimension})", "real[]", "double precision[]"):
            raise JobError(f"{self.spec.table}.{self.spec.column} is {existing}, not a vector or real[] column")
        self.pgvector = (existing or wanted).startswith("vector")
        for column in (self.model_col, self.sha_col):
            self.conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(self.table, column))

    def count(self) -> int:
        return self.conn.execute(self.sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()[0]

    def rows(self, after: int, model: str) -> Iterator[StoreRow]:
        query = self.sql.SQL("SELECT {}, {}, {}, {} FROM {} WHERE {} > %s ORDER BY {} LIMIT %s").format(
            self.id_col, self.text_col, self.model_col, self.sha_col, self.table, self.id_col, self.id_col
        )
        last = after
        while page := self.conn.execute(query, (last, PAGE)).fetchall():
            for key, text, recorded_model, recorded_sha in page:
                if text is None:
                    yield StoreRow(position=key, id=key, problem="content is NULL")
                    continue
                sha = content_sha256(text)
                current = recorded_model == model and recorded_sha == sha
                yield StoreRow(position=key, id=key, content=text, content_sha256=sha, up_to_date=current)
            last = page[-1][0]

    def write(self, model: str, done: Sequence[tuple[StoreRow, list[float]]], failed: Sequence[StoreRow]) -> list[StoreRow]:
        sql = self.sql
        cast = sql.SQL("::vector" if self.pgvector else "::real[]")
        update = sql.SQL(
            "UPDATE {t} SET {col} = %s{cast}, {m} = %s, {h} = %s WHERE {id} = %s "
            "AND encode(sha256(convert_to({text}, 'UTF8')), 'hex') = %s RETURNING {id}"
        ).format(t=self.table, col=self.col, cast=cast, m=self.model_col, h=self.sha_col, id=self.id_col, text=self.text_col)
        clear = sql.SQL("UPDATE {t} SET {col} = NULL, {m} = NULL, {h} = NULL WHERE {id} = %s").format(
            t=self.table, col=self.col, m=self.model_col, h=self.sha_col, id=self.id_col
        )
        written: set = set()
        with self.conn.transaction(), self.conn.cursor() as cur:
            if done:
                params = [
                    (_vector_text(vector) if self.pgvector else vector, model, row.content_sha256, row.id, row.content_sha256)
                    for row, vector in done
                ]
                cur.executemany(update, params, returning=True)
                while True:
                    written.update(r[0] for r in cur.fetchall())
                    if not cur.nextset():
                        break
            if failed:
                cur.executemany(clear, [(row.id,) for row in failed])
        return [row for row, _ in done if row.id not in written]

    def finish(self, model: str) -> None:
        pass

    def close(self) -> None:
        self.conn.close()


def _vector_text(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in vector) + "]"
