"""A JSONL file of memories, re-embedded into a `.npy` matrix or a JSONL file of vectors.

An output holds vectors of one space (`vector_space`: model, profile, size),
named on every line of it and in the `.npy` manifest; the sidecar tags each
vector with it. A job whose lane makes another space than the output or its
sidecar already holds is refused before it writes anything.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sqlite3
import unicodedata
from array import array
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Sequence, Union

from athena_client.contract.errors import JobError
from athena_client.contract.jobs import JsonlSource
from athena_client.contract.payloads import VectorOrigin
from athena_inference.workers.reembedding.stores.rows import PAGE, StoreRow, another_space, content_sha256

CHUNK_BYTES = 1 << 20

# One line of the source may hold at most this many bytes (its newline aside).
# That is far more than any memory, and many times what the server takes in one
# input (ATHENA_EMBEDDING_MAX_TOKENS; 8,192 tokens at most for nomic-embed-text,
# a few tens of KiB even with JSON's \u escapes). A longer line is a mistake (a
# file with no newlines, a blob), read past in chunks instead of held in memory.
MAX_LINE_BYTES = 1 << 20

# Ids are keys, not content: every one is kept in the SQLite sidecar, in each
# item error in Redis and in the output. Integers must fit Athena's BIGSERIAL
# (and numpy's int64); strings are capped so that one line cannot bloat all three.
MAX_ID_CHARS = 1024
INT64 = range(-(1 << 63), 1 << 63)

UTF8_BOM = b"\xef\xbb\xbf"
MANIFEST_FORMAT = "athena-reembed-npy/1"


class Malformed(ValueError):
    """Why one line of the source cannot be embedded; it becomes that row's `problem`."""


def ids_path(output: Union[str, Path]) -> Path:
    """`vectors.npy` -> `vectors.ids.jsonl`: one `{"id", "model", "profile", "space", "content_sha256"}` per matrix row."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".npy") + ".ids.jsonl")


def manifest_path(output: Union[str, Path]) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".manifest.json")


class JsonlStore:
    """A JSONL source, with work in progress in a SQLite sidecar next to the output.

    The sidecar holds one row per memory id (so a vector can never be written
    twice), survives a kill, and lets a later run skip unchanged texts. The
    output file is written from it at the end, to a temporary name and renamed.

    Every line of the source becomes one row. A line that cannot be embedded
    (not UTF-8, not JSON, no usable id or text, too long) becomes a row with its
    `problem` set, which the runner reports as an item error and goes past:
    one bad line never stops a job.
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
        # `model` holds each vector's space (a bare model name in a sidecar of an older job).
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (id TEXT PRIMARY KEY, model TEXT NOT NULL, "
            "content_sha256 TEXT NOT NULL, vector BLOB NOT NULL, note TEXT)"
        )
        # A sidecar from before notes were kept gets the column (empty: those vectors were whole-text).
        if "note" not in {column[1] for column in self.db.execute("PRAGMA table_info(vectors)")}:
            self.db.execute("ALTER TABLE vectors ADD COLUMN note TEXT")

    def describe(self) -> str:
        return f"{self.path} -> {self.output}"

    def prepare(self, origin: VectorOrigin) -> None:
        self.origin, self.space, self.dimension = origin, origin.space, origin.dimension
        found = [(tag, rows) for tag, rows in self.db.execute(
            "SELECT model, count(*) FROM vectors WHERE model IS NOT ? GROUP BY model ORDER BY count(*) DESC LIMIT 3", (self.space,)
        )]
        place = f"{self.sidecar_path.name} (the work behind {self.output.name})"
        if not found and (published := self._published_space()) is not None and published[0] != self.space:
            found, place = [published], str(self.output.name)
        if found:
            beside = [p.name for p in (self.sidecar_path, ids_path(self.output), manifest_path(self.output)) if p.exists()]
            raise another_space(
                place, found, self.space,
                f"Name another output (--output); to replace {self.output.name}, delete it"
                + (f" and {', '.join(beside)}" if beside else "") + " first.",
            )

    def _published_space(self) -> Optional[tuple[str, int]]:
        """(space, rows) of the output already published, None when there is none."""
        if self.output.suffix == ".npy":
            try:
                manifest = json.loads(manifest_path(self.output).read_bytes())
                # An older manifest names a bare model only.
                return str(manifest.get("space") or manifest["model"]), int(manifest["rows"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None
        try:
            with self.output.open("rb") as out:
                first = json.loads(out.readline())
                rows = 1 + sum(1 for line in out if line.strip())
            return str(first.get("space") or first["model"]), rows
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    # --- reading the source ---

    def count(self) -> int:
        # The same splitter as rows(), so that the job's total always matches the rows it sees.
        return sum(1 for _ in self._raw_lines())

    def _raw_lines(self) -> Iterator[tuple[int, Optional[bytes]]]:
        """(line number, bytes) of each non-blank line; None for a line over MAX_LINE_BYTES.

        Bytes, not text: a text-mode reader would also split on a bare "\\r" and
        replace invalid UTF-8 silently, so it would count other lines than
        count() and embed text the file does not hold.
        """
        with self.path.open("rb") as source:
            for number in itertools.count(1):
                line = source.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                if number == 1:
                    line = line.removeprefix(UTF8_BOM)
                if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                    _skip_rest_of_line(source)
                    yield number, None
                elif line.strip():
                    yield number, line

    def _lines(self) -> Iterator[StoreRow]:
        for position, (number, line) in enumerate(self._raw_lines()):
            yield self._parse(position, number, line)

    def _parse(self, position: int, number: int, line: Optional[bytes]) -> StoreRow:
        label = f"line {number}"
        try:
            key, item = self._keyed_object(line)
        except Malformed as exc:
            return StoreRow(position=position, id=label, problem=f"{label} {exc}")
        text = item.get(self.spec.text_field)
        try:
            _check_text(self.spec.text_field, text)
        except Malformed as exc:
            return StoreRow(position=position, id=key, problem=str(exc))
        return StoreRow(position=position, id=key, content=text, content_sha256=content_sha256(text))

    def _keyed_object(self, line: Optional[bytes]) -> tuple[Union[int, str], dict[str, Any]]:
        """The line's object and its id, or Malformed saying why not."""
        if line is None:
            raise Malformed(f"is longer than {MAX_LINE_BYTES} bytes, the limit for one memory")
        item = _load_json(_decode(line))
        if not isinstance(item, dict):
            raise Malformed(f"is {_kind(item)}, not an object")
        if self.spec.id_field not in item:
            raise Malformed(f"has no {self.spec.id_field!r}")
        key = item[self.spec.id_field]
        _check_id(key)
        return key, item

    # --- the sidecar ---

    def _recorded(self, ids: Sequence[Union[int, str]]) -> dict[str, tuple[str, str, bytes, Optional[str]]]:
        keys = [json.dumps(key) for key in ids]
        found: dict[str, tuple[str, str, bytes, Optional[str]]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, model, sha, vector, note in self.db.execute(
                f"SELECT id, model, content_sha256, vector, note FROM vectors WHERE id IN ({marks})", chunk
            ):
                found[key] = (model, sha, vector, note)
        return found

    def _with_records(self, after: int) -> Iterator[tuple[StoreRow, Optional[tuple[str, str, bytes, Optional[str]]]]]:
        """Source rows past `after`, each with what the sidecar holds for its id, a page at a time."""
        lines = (row for row in self._lines() if row.position > after)
        while page := list(itertools.islice(lines, PAGE)):
            recorded = self._recorded([row.id for row in page if row.problem is None])
            for row in page:
                yield row, recorded.get(json.dumps(row.id))

    def _is_current(self, row: StoreRow, seen: Optional[tuple]) -> bool:
        return seen is not None and seen[0] == self.space and seen[1] == row.content_sha256

    def rows(self, after: int) -> Iterator[StoreRow]:
        for row, seen in self._with_records(after):
            yield row.model_copy(update={"up_to_date": True}) if self._is_current(row, seen) else row

    def write(self, done: Sequence[tuple[StoreRow, list[float]]], failed: Sequence[StoreRow]) -> list[StoreRow]:
        # A malformed line's id is made up ("line 3") and may be a real memory's
        # id elsewhere in the file, so its failure must not clear that memory's
        # vector. Problem rows have no hash, so they never reach the output anyway.
        cleared = [row for row in failed if row.problem is None]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO vectors (id, model, content_sha256, vector, note) VALUES (?, ?, ?, ?, ?)",
                [(json.dumps(row.id), self.space, row.content_sha256, array("f", vector).tobytes(), row.note) for row, vector in done],
            )
            self.db.executemany("DELETE FROM vectors WHERE id = ?", [(json.dumps(row.id),) for row in cleared])
        return []

    # --- publishing the output ---

    def finish(self) -> None:
        if self.output.suffix == ".npy":
            self._write_npy()
        else:
            self._write_jsonl()

    def _current(self) -> Iterator[tuple[StoreRow, bytes]]:
        """Source rows in order (with how their vector was made), each with its vector, when it is of this space and for this text."""
        for row, seen in self._with_records(-1):
            if self._is_current(row, seen):
                yield row.model_copy(update={"note": seen[3]}), seen[2]

    def _write_jsonl(self) -> None:
        # One file, one rename: a reader sees the old file or the new one, whole,
        # so this output needs no manifest. The directory's fsync makes the
        # rename itself survive a power cut.
        tmp = self.output.with_name(self.output.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for row, blob in self._current():
                record = {**_entry(row, self.origin), "embedding": _floats(blob).tolist()}
                out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.output)
        _fsync_directory(self.output.parent)

    def _write_npy(self) -> None:
        """The matrix and its ids file, published as one generation.

        No rename can replace two names at once, and both names are what
        readers open (np.load on the .npy, the ids file beside it), so the pair
        cannot be swapped atomically. Instead both are written in full under
        temporary names and fsynced, renamed into place, and only then is a
        manifest with both files' SHA-256 and size renamed into place: it is
        the commit record. A crash at any step leaves a pair that either matches
        the manifest (the old generation, or the new one once complete) or does
        not, and read_npy_output() refuses the second kind.
        """
        ids_final, raw_tmp = ids_path(self.output), self.output.with_name(self.output.name + ".raw")
        ids_tmp, npy_tmp = ids_final.with_name(ids_final.name + ".tmp"), self.output.with_name(self.output.name + ".tmp.npy")
        rows, ids_file = self._write_ids_and_raw(ids_tmp, raw_tmp)
        matrix_file = self._write_matrix(raw_tmp, npy_tmp, rows)
        raw_tmp.unlink()
        os.replace(npy_tmp, self.output)
        os.replace(ids_tmp, ids_final)
        # The two renames are durable before the manifest that vouches for them is written.
        _fsync_directory(self.output.parent)
        manifest = {
            "format": MANIFEST_FORMAT,
            "generation": _generation(self.output) + 1,
            "written_at": datetime.now(timezone.utc).isoformat(),
            # What made every vector: vectors compare only within one space.
            "model": self.origin.model,
            "profile": self.origin.profile,
            "purpose": self.origin.purpose,
            "prefix": self.origin.prefix,
            "space": self.space,
            "rows": rows,
            "dimension": self.dimension,
            "files": {"matrix": {"name": self.output.name, **matrix_file}, "ids": {"name": ids_final.name, **ids_file}},
        }
        _replace_atomically(manifest_path(self.output), (json.dumps(manifest, indent=2) + "\n").encode())

    def _write_ids_and_raw(self, ids_tmp: Path, raw_tmp: Path) -> tuple[int, dict[str, Any]]:
        """The ids file (fsynced, with its digest), and the matrix's rows in a scratch file."""
        rows = 0
        with ids_tmp.open("wb") as ids_out, raw_tmp.open("wb") as raw:
            ids = HashingWriter(ids_out)
            for row, blob in self._current():
                ids.write((json.dumps(_entry(row, self.origin)) + "\n").encode())
                raw.write(blob)
                rows += 1
            ids.sync()
        return rows, ids.digest()

    def _write_matrix(self, raw_tmp: Path, npy_tmp: Path, rows: int) -> dict[str, Any]:
        import numpy as np

        # Header, then the rows copied in chunks: a memory map would count the
        # whole matrix in the runner's resident memory.
        with npy_tmp.open("wb") as npy_out, raw_tmp.open("rb") as raw:
            out = HashingWriter(npy_out)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, self.dimension)}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, CHUNK_BYTES)
            out.sync()
        return out.digest()

    def close(self) -> None:
        self.db.close()


# --- reading a published .npy output ---


def _entry(row: StoreRow, origin: VectorOrigin) -> dict[str, Any]:
    """A row's line in the output: id, what made its vector (model, profile,
    space) and its text's hash, and `note` when the vector was not made from the whole text."""
    entry = {"id": row.id, "model": origin.model, "profile": origin.profile, "space": origin.space, "content_sha256": row.content_sha256}
    return {**entry, "note": row.note} if row.note else entry


def read_npy_output(output: Union[str, Path]) -> tuple[Any, list[dict[str, Any]]]:
    """The matrix and its ids entries (`{"id", "model", "profile", "space", "content_sha256"}`, one per row).

    Both files are checked against the manifest, so a pair left by a crash
    while it was being published is refused (JobError) instead of pairing one
    generation's vectors with another's ids.
    """
    import numpy as np

    output = Path(output).expanduser()
    # Opened before the manifest is read, and parsed from the same handles that
    # are hashed: a publish racing with this read makes it refuse, never mix generations.
    with _open_output(output) as matrix_file, _open_output(ids_path(output)) as ids_file:
        manifest = _read_manifest(output)
        _verify(output, matrix_file, manifest["files"]["matrix"])
        _verify(output, ids_file, manifest["files"]["ids"])
        matrix = np.load(matrix_file, allow_pickle=False)
        entries = [json.loads(line) for line in ids_file]
    if matrix.shape != (manifest["rows"], manifest["dimension"]) or len(entries) != manifest["rows"]:
        raise _interrupted(output, f"{matrix.shape} and {len(entries)} ids, the manifest says {manifest['rows']} x {manifest['dimension']}")
    return matrix, entries


def _open_output(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise JobError(f"no re-embedding output at {path}") from None


def _read_manifest(output: Path) -> dict[str, Any]:
    path = manifest_path(output)
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _interrupted(output, f"{path.name} is missing") from None
    except ValueError:
        raise _interrupted(output, f"{path.name} is not JSON") from None
    if not _is_manifest(manifest):
        raise _interrupted(output, f"{path.name} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def _is_manifest(manifest: Any) -> bool:
    files = manifest.get("files") if isinstance(manifest, dict) else None
    return (
        manifest.get("format") == MANIFEST_FORMAT
        and isinstance(files, dict)
        and all(isinstance(files.get(name), dict) for name in ("matrix", "ids"))
        and isinstance(manifest.get("rows"), int)
        and isinstance(manifest.get("dimension"), int)
    )


def _verify(output: Path, file: IO[bytes], expected: dict[str, Any]) -> None:
    found = _digest_of(file)
    file.seek(0)
    if (found["sha256"], found["bytes"]) != (expected.get("sha256"), expected.get("bytes")):
        raise _interrupted(output, f"{expected.get('name')} does not match its manifest")


def _interrupted(output: Path, detail: str) -> JobError:
    return JobError(f"the re-embedding output {output} was interrupted while being written; run the job again ({detail})")


# --- one line of the source ---


def _skip_rest_of_line(source: IO[bytes]) -> None:
    while (chunk := source.readline(CHUNK_BYTES)) and not chunk.endswith(b"\n"):
        pass


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(f"is not valid UTF-8 (byte 0x{line[exc.start]:02x} at offset {exc.start})") from None


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Malformed(f"is not JSON: {exc}") from None
    except RecursionError:
        # json's decoder recurses once per nesting level; a line of "[[[[..." overflows the stack.
        raise Malformed("nests JSON too deeply to be read") from None


def _check_id(key: Any) -> None:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise Malformed(f"has an id that is {_kind(key)}; ids are strings or integers")
    if isinstance(key, int) and key not in INT64:
        raise Malformed(f"has an integer id of {len(str(abs(key)))} digits; integer ids must fit in 64 bits")
    if isinstance(key, str) and len(key) > MAX_ID_CHARS:
        raise Malformed(f"has an id of {len(key)} characters; string ids may have at most {MAX_ID_CHARS}")
    if isinstance(key, str) and not _is_unicode(key):
        # Such an id could be stored nowhere else: Redis, PostgreSQL and UTF-8 files all refuse it.
        raise Malformed("has an id with a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not Unicode text")


def _check_text(field: str, text: Any) -> None:
    if not isinstance(text, str):
        raise Malformed(f"{field!r} is missing or not a string")
    if not _is_unicode(text):
        # It can be neither hashed nor sent to the server, both of which need UTF-8.
        raise Malformed(f"{field!r} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not Unicode text")
    if text.strip() and not _has_visible_character(text):
        # An empty or blank text is left to the runner, which names it the same way for every store.
        raise Malformed(f"{field!r} holds only control characters (such as NUL) and whitespace")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_visible_character(text: str) -> bool:
    return any(not char.isspace() and unicodedata.category(char) != "Cc" for char in text)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number with a fraction or an exponent"
    return {dict: "an object", list: "an array", str: "a string", int: "a number"}.get(type(value), type(value).__name__)


# --- files ---


class HashingWriter:
    """Writes through to a binary file, keeping the SHA-256 and size of what it wrote."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def sync(self) -> None:
        self.out.flush()
        os.fsync(self.out.fileno())

    def digest(self) -> dict[str, Any]:
        return {"sha256": self.sha.hexdigest(), "bytes": self.size}


def _digest_of(file: IO[bytes]) -> dict[str, Any]:
    sha, size = hashlib.sha256(), 0
    while chunk := file.read(CHUNK_BYTES):
        sha.update(chunk)
        size += len(chunk)
    return {"sha256": sha.hexdigest(), "bytes": size}


def _floats(blob: bytes) -> array:
    vector = array("f")
    vector.frombytes(blob)
    return vector


def _generation(output: Path) -> int:
    """The published manifest's generation; 0 when there is none to read."""
    try:
        generation = json.loads(manifest_path(output).read_bytes())["generation"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return generation if isinstance(generation, int) else 0


def _replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the renames in `directory` durable: a rename lives in the directory, not in the file."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
