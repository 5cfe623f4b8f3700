"""The seam to a memory store being re-embedded: a JSONL file or a PostgreSQL table.

A store yields its rows in a stable order, each with a position the runner
checkpoints, and writes vectors back with the model id and the hash of the
text they were computed from. A row whose recorded model and hash match is up
to date and is skipped. Reading is streamed in pages, so memory does not grow
with the store.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sqlite3
from array import array
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence, Union

from pydantic import BaseModel

from athena_client.errors import JobError
from athena_client.jobs import JsonlSource, PostgresSource

PAGE = 1000
CHUNK_BYTES = 1 << 20


def content_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StoreRow(BaseModel):
    position: int
    id: Union[int, str]
    content: str = ""
    content_sha256: str = ""
    up_to_date: bool = False
    # Why this row cannot be embedded at all (a malformed line, a NULL text).
    problem: Optional[str] = None


class MemoryStore(Protocol):
    def describe(self) -> str: ...

    def prepare(self, model: str, dimension: int) -> None:
        """Make room for vectors of `model` (columns, sidecar), or refuse clearly."""

    def count(self) -> int: ...

    def rows(self, after: int, model: str) -> Iterator[StoreRow]:
        """Rows with a position past `after`, in position order."""

    def write(self, model: str, done: Sequence[tuple[StoreRow, list[float]]], failed: Sequence[StoreRow]) -> list[StoreRow]:
        """Store vectors (and clear failed rows' old ones); return rows whose text changed meanwhile."""

    def finish(self, model: str) -> None:
        """Publish the result, once every row has been dealt with."""

    def close(self) -> None: ...


def open_store(spec: Union[JsonlSource, PostgresSource]) -> MemoryStore:
    if isinstance(spec, JsonlSource):
        return JsonlStore(spec)
    return PostgresStore(spec)


# --- JSONL ---


class JsonlStore:
    """A JSONL source, with work in progress in a SQLite sidecar next to the output.

    The sidecar holds one row per memory id (so a vector can never be written
    twice), survives a kill, and lets a later run skip unchanged texts. The
    output file is written from it at the end, to a temporary name and renamed.
    """

    def __init__(self, spec: JsonlSource) -> None:
        self.spec = spec
        self.path = Path(spec.path).expanduser()
        self.output = Path(spec.output).expanduser()
        if not self.path.is_file():
            raise JobError(f"no JSONL file at {self.path}")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.sidecar_path = self.output.with_name(self.output.name + ".state.sqlite")
        self.db = sqlite3.connect(self.sidecar_path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (id TEXT PRIMARY KEY, model TEXT NOT NULL, "
            "content_sha256 TEXT NOT NULL, vector BLOB NOT NULL)"
        )

    def describe(self) -> str:
        return f"{self.path} -> {self.output}"

    def prepare(self, model: str, dimension: int) -> None:
        self.dimension = dimension

    def count(self) -> int:
        with self.path.open("rb") as source:
            return sum(1 for line in source if line.strip())

    def _lines(self) -> Iterator[StoreRow]:
        with self.path.open("r", encoding="utf-8", errors="replace") as source:
            position = -1
            for number, line in enumerate(source, start=1):
                if not line.strip():
                    continue
                position += 1
                yield self._parse(position, number, line)

    def _parse(self, position: int, number: int, line: str) -> StoreRow:
        try:
            item = json.loads(line)
        except ValueError as exc:
            return StoreRow(position=position, id=f"line {number}", problem=f"line {number} is not JSON: {exc}")
        if not isinstance(item, dict) or self.spec.id_field not in item:
            return StoreRow(position=position, id=f"line {number}", problem=f"line {number} has no {self.spec.id_field!r}")
        key = item[self.spec.id_field]
        if not isinstance(key, (int, str)) or isinstance(key, bool):
            return StoreRow(position=position, id=f"line {number}", problem=f"line {number}: id must be a string or an integer")
        text = item.get(self.spec.text_field)
        if not isinstance(text, str):
            return StoreRow(position=position, id=key, problem=f"{self.spec.text_field!r} is missing or not a string")
        return StoreRow(position=position, id=key, content=text, content_sha256=content_sha256(text))

    def _recorded(self, ids: Sequence[Union[int, str]]) -> dict[str, tuple[str, str, bytes]]:
        keys = [json.dumps(key) for key in ids]
        found: dict[str, tuple[str, str, bytes]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, model, sha, vector in self.db.execute(
                f"SELECT id, model, content_sha256, vector FROM vectors WHERE id IN ({marks})", chunk
            ):
                found[key] = (model, sha, vector)
        return found

    def _with_records(self, after: int) -> Iterator[tuple[StoreRow, Optional[tuple[str, str, bytes]]]]:
        """Source rows past `after`, each with what the sidecar holds for its id, a page at a time."""
        lines = (row for row in self._lines() if row.position > after)
        while page := list(itertools.islice(lines, PAGE)):
            recorded = self._recorded([row.id for row in page if row.problem is None])
            for row in page:
                yield row, recorded.get(json.dumps(row.id))

    @staticmethod
    def _is_current(row: StoreRow, seen: Optional[tuple[str, str, bytes]], model: str) -> bool:
        return seen is not None and seen[0] == model and seen[1] == row.content_sha256

    def rows(self, after: int, model: str) -> Iterator[StoreRow]:
        for row, seen in self._with_records(after):
            yield row.model_copy(update={"up_to_date": True}) if self._is_current(row, seen, model) else row

    def write(self, model: str, done: Sequence[tuple[StoreRow, list[float]]], failed: Sequence[StoreRow]) -> list[StoreRow]:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO vectors (id, model, content_sha256, vector) VALUES (?, ?, ?, ?)",
                [(json.dumps(row.id), model, row.content_sha256, array("f", vector).tobytes()) for row, vector in done],
            )
            self.db.executemany("DELETE FROM vectors WHERE id = ?", [(json.dumps(row.id),) for row in failed])
        return []

    def finish(self, model: str) -> None:
        if self.output.suffix == ".npy":
            self._write_npy(model)
        else:
            self._write_jsonl(model)

    def _current(self, model: str) -> Iterator[tuple[StoreRow, bytes]]:
        """Source rows in order, each with its vector, when it is this model's and for this text."""
        for row, seen in self._with_records(-1):
            if self._is_current(row, seen, model):
                yield row, seen[2]

    def _write_jsonl(self, model: str) -> None:
        tmp = self.output.with_name(self.output.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for row, blob in self._current(model):
                vector = array("f")
                vector.frombytes(blob)
                record = {"id": row.id, "model": model, "content_sha256": row.content_sha256, "embedding": vector.tolist()}
                out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.output)

    def _write_npy(self, model: str) -> None:
        import numpy as np

        ids_path = self.output.with_name(self.output.name.removesuffix(".npy") + ".ids.jsonl")
        ids_tmp, raw_tmp = ids_path.with_name(ids_path.name + ".tmp"), self.output.with_name(self.output.name + ".raw")
        rows = 0
        with ids_tmp.open("w", encoding="utf-8") as ids, raw_tmp.open("wb") as raw:
            for row, blob in self._current(model):
                ids.write(json.dumps({"id": row.id, "model": model, "content_sha256": row.content_sha256}) + "\n")
                raw.write(blob)
                rows += 1
        # Header, then the rows copied in chunks: a memory map would count the
        # whole matrix in the runner's resident memory.
        npy_tmp = self.output.with_name(self.output.name + ".tmp.npy")
        with npy_tmp.open("wb") as out, raw_tmp.open("rb") as raw:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, self.dimension)}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        os.replace(npy_tmp, self.output)
        os.replace(ids_tmp, ids_path)
        raw_tmp.unlink()

    def close(self) -> None:
        self.db.close()


# --- PostgreSQL ---


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
