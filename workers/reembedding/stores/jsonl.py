"""A JSONL file of memories, re-embedded into a `.npy` matrix or a JSONL file of vectors."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
from array import array
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from athena_client.errors import JobError
from athena_client.jobs import JsonlSource
from athena_inference.workers.reembedding.stores.rows import PAGE, StoreRow, content_sha256

CHUNK_BYTES = 1 << 20


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
