"""Swapping a completed job's new vectors in for the old ones, and back.

A job writes its vectors beside the live column (a side table, or a new
column), so search keeps reading the old model's vectors until the user
switches. `switch` does it in one transaction under a short lock timeout:

1. count the rows: with a current new vector, with a vector for a text that
   has changed since, with none at all;
2. refuse, changing nothing, when rows would be left without a vector in a
   NOT NULL column (unless `allow_null`), or when the new vectors are not all
   of the job's vector space (jobs never mix spaces in one place; a table
   written by hand, or by jobs from before vectors named their space, may);
3. fill a new column from the side table (only vectors whose text is still
   the one embedded), rename the old column aside (kept until the user drops
   it), rename the new one into its place, and create on it the indexes the
   old column had (IVFFlat, HNSW, ...), with the same method, operator class
   and options.

`undo` puts the old column back in place, in one transaction: from a side
table, the copied column is dropped (the side table still holds every new
vector, and a later switch copies them afresh); a target column gets its own
name back. Each switch is recorded in `athena_reembed_switches`, a
table of our own in the user's database.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel

from athena_client.contract.errors import JobError
from athena_client.contract.jobs import JobState, JobStatus, PostgresSource
from athena_inference.workers.reembedding.stores.postgres import named_connection, side_table_name

SWITCHES = "athena_reembed_switches"
LOCK_TIMEOUT = "10s"
_SHA = "encode(sha256(convert_to(t.{text}, 'UTF8')), 'hex')"


class SwitchReport(BaseModel):
    job_id: str
    table: str
    column: str
    source: str
    total_rows: int
    with_new_vector: int
    changed_since: int
    without_vector: int
    old_column_not_null: bool
    # Where the old vectors go (switch) or come back from (undo).
    old_column: str
    indexes: list[str] = []
    state: str = "planned"

    @property
    def missing(self) -> int:
        return self.total_rows - self.with_new_vector

    def lines(self) -> list[str]:
        return [
            f"table {self.table}, column {self.column}; new vectors from {self.source}",
            f"  rows: {self.total_rows}",
            f"  with a current new vector: {self.with_new_vector}",
            f"  with a new vector for a text that has changed since: {self.changed_since}",
            f"  with no new vector (failed, blank, or outside the job's filter): {self.without_vector}",
            f"  old vectors kept as column {self.old_column}",
            *(f"  index to create: {index}" for index in self.indexes),
        ]


def _spec(job: JobState) -> PostgresSource:
    source = job.request.source
    if not isinstance(source, PostgresSource) or source.mode == "in_place":
        raise JobError(f"job {job.job_id} did not write beside the live column (a side table or a new column): nothing to switch")
    return source


def connect(job: JobState):
    import psycopg

    spec = _spec(job)
    try:
        # Autocommit: each switch or undo is one explicit transaction, and looking commits nothing.
        return psycopg.connect(spec.dsn if spec.dsn is not None else named_connection(spec.connection or ""), autocommit=True)
    except psycopg.OperationalError as exc:
        raise JobError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from None


class Switch:
    """One job's switch, over an open psycopg connection in autocommit mode (each action is one transaction)."""

    def __init__(self, job: JobState, conn) -> None:
        from psycopg import sql

        self.job, self.conn, self.sql = job, conn, sql
        self.spec = _spec(job)
        self.short = job.job_id[:8]
        self.table = sql.Identifier(self.spec.table)
        self.column = self.spec.embedding_column
        self.side = self.spec.side_table or side_table_name(self.spec.table, job.model or "", job.request.dimensions)

    # --- looking ---

    def _not_null(self, column: str) -> Optional[bool]:
        row = self.conn.execute(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped",
            (self.spec.table, column),
        ).fetchone()
        return None if row is None else bool(row[0])

    def _exists(self, column: str) -> bool:
        return self._not_null(column) is not None

    def _recorded(self) -> Optional[tuple[str, str, Optional[str]]]:
        """(state, old column, parked column) of this job's last switch, if any."""
        if self.conn.execute("SELECT to_regclass(%s)", (SWITCHES,)).fetchone()[0] is None:
            return None
        return self.conn.execute(
            f"SELECT state, old_column, parked_column FROM {SWITCHES} WHERE job_id = %s", (self.job.job_id,)
        ).fetchone()

    def _old_name(self) -> str:
        name = f"{self.column}__old"
        return name if not self._exists(name) else f"{self.column}__old_{self.short}"

    def _counts(self) -> tuple[int, int, int]:
        """(rows, rows with a current new vector, rows whose new vector is for a changed text)."""
        sql = self.sql
        sha = sql.SQL(_SHA).format(text=sql.Identifier(self.spec.content_column))
        ident = sql.Identifier(self.spec.id_column)
        if self.spec.mode == "column":
            target = sql.Identifier(self.spec.target_column)
            recorded = sql.Identifier(f"{self.spec.target_column}_content_sha256")
            query = sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE t.{v} IS NOT NULL AND t.{h} = {sha}), "
                "count(*) FILTER (WHERE t.{v} IS NOT NULL AND t.{h} IS DISTINCT FROM {sha}) FROM {t} t"
            ).format(v=target, h=recorded, sha=sha, t=self.table)
        else:
            query = sql.SQL(
                "SELECT count(*), count(s.row_id) FILTER (WHERE s.content_sha256 = {sha} AND s.embedding IS NOT NULL), "
                "count(s.row_id) FILTER (WHERE s.content_sha256 IS DISTINCT FROM {sha}) "
                "FROM {t} t LEFT JOIN {s} s ON s.row_id = t.{id}"
            ).format(sha=sha, t=self.table, s=sql.Identifier(self.side), id=ident)
        total, current, stale = self.conn.execute(query).fetchone()
        return int(total), int(current), int(stale)

    def _spaces(self) -> list[tuple[Optional[str], int]]:
        """(tag, rows) of every vector space among the new vectors, most rows first."""
        sql = self.sql
        if self.spec.mode == "column":
            target = sql.Identifier(self.spec.target_column)
            query = sql.SQL("SELECT {m}, count(*) FROM {t} WHERE {v} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC").format(
                m=sql.Identifier(f"{self.spec.target_column}_model"), t=self.table, v=target
            )
        else:
            query = sql.SQL("SELECT model, count(*) FROM {} WHERE embedding IS NOT NULL GROUP BY 1 ORDER BY 2 DESC").format(sql.Identifier(self.side))
        return [(tag, int(rows)) for tag, rows in self.conn.execute(query).fetchall()]

    def _indexes(self, column: str) -> list[dict[str, Any]]:
        """The single-column indexes on `column`: name, method, operator class, options."""
        rows = self.conn.execute(
            "SELECT i.relname, am.amname, opc.opcname, i.reloptions FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam "
            "JOIN pg_opclass opc ON opc.oid = x.indclass[0] "
            "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] "
            "WHERE x.indrelid = to_regclass(%s) AND x.indnatts = 1 AND a.attname = %s",
            (self.spec.table, column),
        ).fetchall()
        return [{"name": n, "method": m, "opclass": o, "options": list(opts or [])} for n, m, o, opts in rows]

    def plan(self) -> SwitchReport:
        if self.job.status is not JobStatus.COMPLETED:
            raise JobError(f"job {self.job.job_id} is {self.job.status.value}, not completed; finish it (reembed resume) before switching")
        total, current, stale = self._counts()
        source = f"side table {self.side}" if self.spec.mode == "side_table" else f"column {self.spec.target_column}"
        indexes = [f"{i['method']} ({self.column} {i['opclass']})" + (f" WITH ({', '.join(i['options'])})" if i["options"] else "")
                   for i in self._indexes(self.column)]
        return SwitchReport(
            job_id=self.job.job_id, table=self.spec.table, column=self.column, source=source, total_rows=total,
            with_new_vector=current, changed_since=stale, without_vector=total - current - stale,
            old_column_not_null=bool(self._not_null(self.column)), old_column=self._old_name(), indexes=indexes,
        )

    # --- acting ---

    def switch(self, *, allow_null: bool = False) -> SwitchReport:
        sql = self.sql
        with self.conn.transaction():
            self.conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            self.conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(self.table))
            recorded = self._recorded()
            if recorded is not None and recorded[0] == "switched":
                raise JobError(f"job {self.job.job_id} is switched in already; `reembed switch {self.job.job_id} --undo` undoes it")
            report = self.plan()
            spaces = self._spaces()
            expected = self.job.space or self.job.model
            if [tag for tag, _ in spaces if tag != expected]:
                held = ", ".join(f"{rows} of {tag!r}" for tag, rows in spaces)
                raise JobError(
                    f"refused, nothing changed: {report.source} holds vectors of more spaces than the job's {expected!r} "
                    f"({held}); search would compare them as one. Re-embed into a new side table (--side-table) and switch that job"
                )
            if report.missing and report.old_column_not_null and not allow_null:
                raise JobError(
                    f"refused, nothing changed: {report.missing} of {report.total_rows} rows have no current new vector "
                    f"({report.changed_since} changed since the job, {report.without_vector} without one) and "
                    f"{report.table}.{report.column} is NOT NULL. Resume the job to embed the changed rows, give the "
                    "failed ones text or delete them; or pass --allow-null to switch with those rows' vectors NULL "
                    "(invisible to search)"
                )
            old_indexes = self._indexes(self.column)
            incoming = self._incoming()
            if report.old_column_not_null and not report.missing:
                self.conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(self.table, sql.Identifier(incoming)))
            self._rename(self.column, report.old_column)
            self._rename(incoming, self.column)
            created = [self._create_index(index) for index in old_indexes if not self._has_index_like(index)]
            self._record("switched", report.old_column, None, created)
        return report.model_copy(update={"state": "switched"})

    def _incoming(self) -> str:
        """The column to rename into place: the job's target column, or a fresh copy of the side table's vectors."""
        sql = self.sql
        if self.spec.mode == "column":
            target, recorded_sha = self.spec.target_column, f"{self.spec.target_column}_content_sha256"
            sha = sql.SQL(_SHA).format(text=sql.Identifier(self.spec.content_column))
            # A vector for a text that has changed since must not come into search.
            self.conn.execute(
                sql.SQL("UPDATE {t} t SET {v} = NULL WHERE t.{h} IS DISTINCT FROM {sha}").format(
                    t=self.table, v=sql.Identifier(target), h=sql.Identifier(recorded_sha), sha=sha
                )
            )
            return target
        incoming = f"{self.column}__new_{self.short}"
        kind = self.conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
            (self.side,),
        ).fetchone()[0]
        self.conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(self.table, sql.Identifier(incoming), sql.SQL(kind)))
        self.conn.execute(
            sql.SQL("UPDATE {t} t SET {v} = s.embedding FROM {s} s WHERE s.row_id = t.{id} AND s.content_sha256 = {sha}").format(
                t=self.table, v=sql.Identifier(incoming), s=sql.Identifier(self.side), id=sql.Identifier(self.spec.id_column),
                sha=sql.SQL(_SHA).format(text=sql.Identifier(self.spec.content_column)),
            )
        )
        return incoming

    def undo(self) -> SwitchReport:
        sql = self.sql
        with self.conn.transaction():
            self.conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            self.conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(self.table))
            recorded = self._recorded()
            if recorded is None or recorded[0] != "switched":
                raise JobError(f"job {self.job.job_id} is not switched in; nothing to undo")
            _, old_column, _ = recorded
            if self.spec.mode == "side_table":
                # The side table still holds every new vector: the copy (and the index made on it) goes.
                self.conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(self.table, sql.Identifier(self.column)))
                parked = None
            else:
                parked = self.spec.target_column
                self._rename(self.column, parked)
            self._rename(old_column, self.column)
            self._record("undone", old_column, parked, [])
            report = self.plan()
        return report.model_copy(update={"state": "undone", "old_column": old_column})

    def _rename(self, old: str, new: str) -> None:
        sql = self.sql
        self.conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(self.table, sql.Identifier(old), sql.Identifier(new)))

    def _has_index_like(self, index: dict[str, Any]) -> bool:
        """An index of the same method already on the column (a parked column keeps the one made at its first switch)."""
        return any(i["method"] == index["method"] for i in self._indexes(self.column))

    def _create_index(self, index: dict[str, Any]) -> str:
        sql = self.sql
        name = f"{index['name'][:54]}__{self.short}"
        statement = sql.SQL("CREATE INDEX {name} ON {t} USING {method} ({col} {opclass})").format(
            name=sql.Identifier(name), t=self.table, method=sql.Identifier(index["method"]),
            col=sql.Identifier(self.column), opclass=sql.Identifier(index["opclass"]),
        )
        if index["options"]:
            statement += sql.SQL(" WITH ({})").format(sql.SQL(", ").join(sql.SQL(option) for option in index["options"]))
        self.conn.execute(statement)
        return name

    def _record(self, state: str, old_column: str, parked: Optional[str], indexes: list[str]) -> None:
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SWITCHES} (job_id text PRIMARY KEY, table_name text NOT NULL, column_name text NOT NULL, "
            "old_column text NOT NULL, parked_column text, indexes text[] NOT NULL DEFAULT '{}', state text NOT NULL, "
            "changed_at timestamptz NOT NULL DEFAULT now())"
        )
        self.conn.execute(
            f"INSERT INTO {SWITCHES} (job_id, table_name, column_name, old_column, parked_column, indexes, state) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (job_id) DO UPDATE SET old_column = EXCLUDED.old_column, "
            f"parked_column = EXCLUDED.parked_column, indexes = {SWITCHES}.indexes || EXCLUDED.indexes, "
            "state = EXCLUDED.state, changed_at = now()",
            (self.job.job_id, self.spec.table, self.column, old_column, parked, indexes, state),
        )
