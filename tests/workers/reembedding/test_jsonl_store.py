"""The JSONL store: its SQLite sidecar, one row (maybe a problem row) per line, and
outputs that a crash can never leave half old and half new."""

from __future__ import annotations

import hashlib
import json
import os

import fakeredis
import numpy as np
import pytest

from athena_client.contract.errors import JobError
from athena_client.contract.jobs import JobStatus, JsonlSource
from athena_client.contract.payloads import VectorOrigin, vector_space
from athena_inference.workers.reembedding.stores import JsonlStore, content_sha256
from athena_inference.workers.reembedding.stores import jsonl as jsonl_module
from athena_inference.workers.reembedding.stores.jsonl import MAX_ID_CHARS, MAX_LINE_BYTES, ids_path, manifest_path, read_npy_output
from tests.workers.reembedding.test_runner import InProcessLane, run_job, vector_of


M = VectorOrigin(model="m", profile="m-profile", dimension=2)
SPACE = vector_space("m", "m-profile", 2)


def source_of(tmp_path, lines: list[str | bytes]):
    """A source file from whole lines, bytes kept as they are (so they may be invalid UTF-8)."""
    path = tmp_path / "memories.jsonl"
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def open_store(tmp_path, lines: list[str | bytes], output: str = "out.jsonl") -> JsonlStore:
    store = JsonlStore(JsonlSource(path=str(source_of(tmp_path, lines)), output=str(tmp_path / output)))
    store.prepare(M)
    return store


def only_row(tmp_path, line: str | bytes):
    store = open_store(tmp_path, [line])
    [row] = list(store.rows(-1))
    store.close()
    return row


def embed_all(store: JsonlStore, vector: list[float]) -> None:
    rows = [row for row in store.rows(-1) if row.problem is None]
    store.write([(row, vector) for row in rows], [])


# --- the sidecar (moved from test_stores.py) ---


def test_jsonl_sidecar_keeps_one_vector_per_id(tmp_path):
    source = tmp_path / "m.jsonl"
    source.write_text(json.dumps({"id": "a", "content": "one"}) + "\n\n" + json.dumps({"id": "b", "content": "two"}) + "\n")
    store = JsonlStore(JsonlSource(path=str(source), output=str(tmp_path / "out.jsonl")))
    store.prepare(M)
    assert store.count() == 2
    rows = list(store.rows(-1))
    store.write([(rows[0], [1.0, 2.0])], [])
    store.write([(rows[0], [3.0, 4.0]), (rows[1], [5.0, 6.0])], [])
    store.finish()
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(w["id"], w["embedding"]) for w in written] == [("a", [3.0, 4.0]), ("b", [5.0, 6.0])]


def test_jsonl_needs_its_source_and_a_distinct_output(tmp_path):
    with pytest.raises(JobError, match="no JSONL file"):
        JsonlStore(JsonlSource(path=str(tmp_path / "missing.jsonl"), output=str(tmp_path / "o.jsonl")))
    with pytest.raises(ValueError, match="output must differ"):
        JsonlSource(path="same.jsonl", output="same.jsonl")


# --- one malformed line is one problem row ---


def test_a_lone_surrogate_in_the_text_is_a_problem_row_under_its_id(tmp_path):
    row = only_row(tmp_path, json.dumps({"id": 1, "content": "\ud800"}))
    assert (row.id, row.content) == (1, "")
    assert "lone UTF-16 surrogate" in row.problem


def test_a_lone_surrogate_in_the_id_is_a_problem_row_under_its_line(tmp_path):
    row = only_row(tmp_path, json.dumps({"id": "memory-\udc00", "content": "fine"}))
    assert row.id == "line 1"
    assert "id with a lone UTF-16 surrogate" in row.problem


@pytest.mark.parametrize("number", ["1.0", "1.5", "1e3", "1e400", "NaN", "-Infinity"])
def test_an_id_that_is_not_an_integer_number_is_a_problem_row(tmp_path, number):
    row = only_row(tmp_path, '{"id": %s, "content": "fine"}' % number)
    assert (row.id, row.problem) == ("line 1", "line 1 has an id that is a number with a fraction or an exponent; ids are strings or integers")


def test_a_boolean_id_is_a_problem_row(tmp_path):
    assert only_row(tmp_path, json.dumps({"id": True, "content": "fine"})).problem == "line 1 has an id that is a boolean; ids are strings or integers"


def test_a_null_id_is_a_problem_row(tmp_path):
    assert only_row(tmp_path, json.dumps({"id": None, "content": "fine"})).problem == "line 1 has an id that is null; ids are strings or integers"


@pytest.mark.parametrize("key, kind", [({"n": 1}, "an object"), ([1], "an array")])
def test_an_object_or_array_id_is_a_problem_row(tmp_path, key, kind):
    assert only_row(tmp_path, json.dumps({"id": key, "content": "fine"})).problem == f"line 1 has an id that is {kind}; ids are strings or integers"


@pytest.mark.parametrize("line, kind", [("[1, 2]", "an array"), ('"text"', "a string"), ("42", "a number"), ("null", "null")])
def test_a_line_that_is_not_an_object_is_a_problem_row(tmp_path, line, kind):
    row = only_row(tmp_path, line)
    assert (row.id, row.problem) == ("line 1", f"line 1 is {kind}, not an object")


def test_an_empty_object_is_a_problem_row(tmp_path):
    row = only_row(tmp_path, "{}")
    assert (row.id, row.problem) == ("line 1", "line 1 has no 'id'")


@pytest.mark.parametrize("key", [1 << 63, -(1 << 63) - 1, 10**40])
def test_an_integer_id_beyond_64_bits_is_a_problem_row(tmp_path, key):
    row = only_row(tmp_path, json.dumps({"id": key, "content": "fine"}))
    assert row.id == "line 1"
    assert "integer ids must fit in 64 bits" in row.problem


def test_the_64_bit_extremes_are_valid_ids(tmp_path):
    store = open_store(tmp_path, [json.dumps({"id": key, "content": "fine"}) for key in (-(1 << 63), (1 << 63) - 1)])
    assert [(row.id, row.problem) for row in store.rows(-1)] == [(-(1 << 63), None), ((1 << 63) - 1, None)]


def test_an_integer_id_with_more_digits_than_python_reads_is_a_problem_row(tmp_path):
    row = only_row(tmp_path, '{"id": %s, "content": "fine"}' % ("9" * 5000))
    assert row.id == "line 1"
    assert row.problem.startswith("line 1 is not JSON")


def test_a_string_id_over_the_cap_is_a_problem_row(tmp_path):
    row = only_row(tmp_path, json.dumps({"id": "k" * (MAX_ID_CHARS + 1), "content": "fine"}))
    assert (row.id, row.problem) == ("line 1", f"line 1 has an id of {MAX_ID_CHARS + 1} characters; string ids may have at most {MAX_ID_CHARS}")


def test_a_nul_only_text_is_a_problem_row(tmp_path):
    row = only_row(tmp_path, json.dumps({"id": 7, "content": "\u0000\u0000 \u0000"}))
    assert (row.id, row.problem) == (7, "'content' holds only control characters (such as NUL) and whitespace")


def test_a_text_with_a_nul_among_words_is_embedded_as_it_is(tmp_path):
    row = only_row(tmp_path, json.dumps({"id": 7, "content": "before\u0000after"}))
    assert (row.problem, row.content) == (None, "before\x00after")


def test_a_blank_text_is_left_to_the_runner_to_name(tmp_path):
    row = only_row(tmp_path, json.dumps({"id": 7, "content": "  "}))
    assert (row.problem, row.content) == (None, "  ")


def test_invalid_utf8_is_a_problem_row_not_replacement_characters(tmp_path):
    row = only_row(tmp_path, b'{"id": 1, "content": "caf\xe9"}')
    assert (row.id, row.problem) == ("line 1", "line 1 is not valid UTF-8 (byte 0xe9 at offset 25)")


def test_a_line_over_the_size_cap_is_a_problem_row(tmp_path):
    line = json.dumps({"id": 1, "content": "x" * MAX_LINE_BYTES})
    row = only_row(tmp_path, line)
    assert (row.id, row.problem) == ("line 1", f"line 1 is longer than {MAX_LINE_BYTES} bytes, the limit for one memory")


def test_a_line_of_exactly_the_size_cap_is_read(tmp_path):
    head = '{"id": 1, "content": "'
    line = head + "x" * (MAX_LINE_BYTES - len(head) - 2) + '"}'
    assert len(line) == MAX_LINE_BYTES
    row = only_row(tmp_path, line)
    assert (row.problem, len(row.content)) == (None, MAX_LINE_BYTES - len(head) - 2)


def test_lines_after_an_over_long_line_keep_their_numbers_and_positions(tmp_path):
    store = open_store(tmp_path, ["x" * (3 * MAX_LINE_BYTES), "", json.dumps({"id": 2, "content": "after"})])
    assert store.count() == 2
    assert [(row.position, row.id, row.problem is None) for row in store.rows(-1)] == [(0, "line 1", False), (1, 2, True)]


def test_deeply_nested_json_is_a_problem_row(tmp_path):
    row = only_row(tmp_path, "[" * 100_000 + "]" * 100_000)
    assert (row.id, row.problem) == ("line 1", "line 1 nests JSON too deeply to be read")


def test_a_utf8_byte_order_mark_before_the_first_line_is_ignored(tmp_path):
    row = only_row(tmp_path, b"\xef\xbb\xbf" + json.dumps({"id": 1, "content": "fine"}).encode())
    assert (row.id, row.problem) == (1, None)


def test_count_and_rows_agree_on_a_bare_carriage_return(tmp_path):
    # A text-mode reader splits this line in two; count() never did.
    store = open_store(tmp_path, [json.dumps({"id": 1, "content": "a"}) + "\r" + json.dumps({"id": 2, "content": "b"})])
    assert store.count() == len(list(store.rows(-1))) == 1


def test_a_malformed_line_never_clears_the_vector_of_a_memory_whose_id_looks_like_its_label(tmp_path):
    store = open_store(tmp_path, [json.dumps({"id": "line 2", "content": "a real memory"}), "{not json"])
    real, broken = list(store.rows(-1))
    store.write([(real, [1.0, 2.0])], [])
    store.write([], [broken])
    assert [row.up_to_date for row in store.rows(-1)] == [True, False]


def test_a_job_over_every_kind_of_malformed_line_completes_and_embeds_every_good_row(tmp_path):
    good = [json.dumps({"id": f"good-{i}", "content": f"memory {i}"}) for i in range(5)]
    bad = [
        json.dumps({"id": 1, "content": "\ud800"}),
        json.dumps({"id": "\ud800", "content": "fine"}),
        '{"id": 1.5, "content": "fine"}',
        '{"id": true, "content": "fine"}',
        '{"id": null, "content": "fine"}',
        '{"id": {}, "content": "fine"}',
        "[1, 2]",
        "{}",
        json.dumps({"id": 1 << 70, "content": "fine"}),
        json.dumps({"id": "k" * (MAX_ID_CHARS + 1), "content": "fine"}),
        json.dumps({"id": 2, "content": "\u0000"}),
        b'{"id": 3, "content": "\xff"}',
        "x" * (MAX_LINE_BYTES + 1),
        "[" * 100_000,
    ]
    source_of(tmp_path, [good[0], *bad[:7], good[1], good[2], *bad[7:], good[3], good[4]])
    redis_client = fakeredis.FakeRedis()
    lane = InProcessLane()
    jobs, job_id, runner = run_job(tmp_path, redis_client, lane)
    state = runner.run()
    assert state.status is JobStatus.COMPLETED
    counts = state.counts
    assert (counts.total, counts.completed, counts.failed, counts.skipped) == (19, 5, 14, 0)
    assert sorted(str(error.id) for error in jobs.errors(job_id)) == sorted(["1", "2", *(f"line {n}" for n in (3, 4, 5, 6, 7, 8, 11, 12, 13, 15, 16, 17))])
    assert {error.error for error in jobs.errors(job_id)} == {"InvalidInput"}
    assert sorted(lane.embedded) == [f"memory {i}" for i in range(5)]
    matrix, ids = read_npy_output(tmp_path / "out.npy")
    assert [entry["id"] for entry in ids] == [f"good-{i}" for i in range(5)]
    np.testing.assert_allclose(matrix, [vector_of(f"memory {i}") for i in range(5)], rtol=1e-6)


# --- outputs published whole ---


def memories(edited: bool = False) -> list[str]:
    return [json.dumps({"id": i, "content": f"memory {i}" + (", edited" if edited else "")}) for i in range(3)]


def old_hashes() -> set[str]:
    return {content_sha256(f"memory {i}") for i in range(3)}


def new_hashes() -> set[str]:
    return {content_sha256(f"memory {i}, edited") for i in range(3)}


def two_generations(tmp_path, output: str = "out.npy") -> JsonlStore:
    """A store whose output was published once, and whose texts were all edited and embedded again since."""
    store = open_store(tmp_path, memories(), output=output)
    embed_all(store, [1.0, 2.0])
    store.finish()
    source_of(tmp_path, memories(edited=True))
    embed_all(store, [3.0, 4.0])
    return store


def fail_os_replace_after(monkeypatch, calls: int) -> None:
    """os.replace works `calls` times, then raises, like a process killed at that point."""
    real, done = os.replace, []

    def replace(src, dst):
        if len(done) >= calls:
            raise KeyboardInterrupt("killed while publishing")
        done.append(dst)
        real(src, dst)

    monkeypatch.setattr(jsonl_module.os, "replace", replace)


def test_a_finished_npy_output_verifies_against_its_manifest(tmp_path):
    store = open_store(tmp_path, [json.dumps({"id": i, "content": f"memory {i}"}) for i in range(3)], output="out.npy")
    embed_all(store, [1.0, 2.0])
    store.finish()
    matrix, ids = read_npy_output(tmp_path / "out.npy")
    np.testing.assert_array_equal(matrix, [[1.0, 2.0]] * 3)
    assert ids == [
        {"id": i, "model": "m", "profile": "m-profile", "space": SPACE, "content_sha256": content_sha256(f"memory {i}")} for i in range(3)
    ]


def test_the_manifest_names_generation_rows_what_made_the_vectors_and_both_files(tmp_path):
    store = open_store(tmp_path, [json.dumps({"id": 1, "content": "one"})], output="out.npy")
    embed_all(store, [1.0, 2.0])
    store.finish()
    manifest = json.loads(manifest_path(tmp_path / "out.npy").read_text())
    assert (manifest["generation"], manifest["rows"], manifest["dimension"]) == (1, 1, 2)
    assert (manifest["model"], manifest["profile"], manifest["purpose"], manifest["prefix"], manifest["space"]) == (
        "m", "m-profile", "document", "", SPACE
    )
    for role, path in (("matrix", tmp_path / "out.npy"), ("ids", tmp_path / "out.ids.jsonl")):
        assert manifest["files"][role]["name"] == path.name
        assert manifest["files"][role]["bytes"] == path.stat().st_size
        assert manifest["files"][role]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_each_publish_is_the_next_generation(tmp_path):
    two_generations(tmp_path).finish()
    assert json.loads(manifest_path(tmp_path / "out.npy").read_text())["generation"] == 2
    matrix, ids = read_npy_output(tmp_path / "out.npy")
    np.testing.assert_array_equal(matrix, [[3.0, 4.0]] * 3)
    assert {entry["content_sha256"] for entry in ids} == new_hashes()


def test_a_crash_between_the_two_renames_is_refused_by_the_reader(tmp_path, monkeypatch):
    store = two_generations(tmp_path)
    fail_os_replace_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        store.finish()
    # The matrix is the new generation's, its ids still the old one's: exactly the pair that must not be read.
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [[3.0, 4.0]] * 3)
    assert json.loads(ids_path(tmp_path / "out.npy").read_text().splitlines()[0])["content_sha256"] == content_sha256("memory 0")
    with pytest.raises(JobError, match="was interrupted while being written; run the job again"):
        read_npy_output(tmp_path / "out.npy")


def test_a_crash_after_both_renames_but_before_the_manifest_is_refused(tmp_path, monkeypatch):
    store = two_generations(tmp_path)
    fail_os_replace_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        store.finish()
    with pytest.raises(JobError, match="was interrupted while being written; run the job again"):
        read_npy_output(tmp_path / "out.npy")


def test_a_crash_before_the_first_rename_leaves_the_previous_generation_readable(tmp_path, monkeypatch):
    store = two_generations(tmp_path)
    fail_os_replace_after(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        store.finish()
    matrix, ids = read_npy_output(tmp_path / "out.npy")
    np.testing.assert_array_equal(matrix, [[1.0, 2.0]] * 3)
    assert {entry["content_sha256"] for entry in ids} == old_hashes()


def test_an_npy_output_without_its_manifest_is_refused(tmp_path):
    store = open_store(tmp_path, [json.dumps({"id": 1, "content": "one"})], output="out.npy")
    embed_all(store, [1.0, 2.0])
    store.finish()
    manifest_path(tmp_path / "out.npy").unlink()
    with pytest.raises(JobError, match=r"run the job again \(out.npy.manifest.json is missing\)"):
        read_npy_output(tmp_path / "out.npy")


def test_an_ids_file_changed_after_publishing_is_refused(tmp_path):
    store = open_store(tmp_path, [json.dumps({"id": 1, "content": "one"})], output="out.npy")
    embed_all(store, [1.0, 2.0])
    store.finish()
    ids_path(tmp_path / "out.npy").write_text(json.dumps({"id": 2, "model": "m", "content_sha256": "x"}) + "\n")
    with pytest.raises(JobError, match="out.ids.jsonl does not match its manifest"):
        read_npy_output(tmp_path / "out.npy")


def test_a_crash_while_publishing_a_jsonl_output_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    store = open_store(tmp_path, memories())
    embed_all(store, [1.0, 2.0])
    store.finish()
    before = (tmp_path / "out.jsonl").read_bytes()
    source_of(tmp_path, memories(edited=True))
    embed_all(store, [3.0, 4.0])
    fail_os_replace_after(monkeypatch, 0)
    with pytest.raises(KeyboardInterrupt):
        store.finish()
    assert (tmp_path / "out.jsonl").read_bytes() == before


# --- one space per output ---

OTHER = VectorOrigin(model="m", profile="m-with-prefix", prefix="passage: ", dimension=2)


def reopened(tmp_path, output: str) -> JsonlStore:
    return JsonlStore(JsonlSource(path=str(tmp_path / "memories.jsonl"), output=str(tmp_path / output)))


def test_every_jsonl_output_line_names_the_model_profile_and_space(tmp_path):
    store = open_store(tmp_path, memories())
    embed_all(store, [1.0, 2.0])
    store.finish()
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {(w["model"], w["profile"], w["space"]) for w in written} == {("m", "m-profile", SPACE)}


def test_the_same_space_finds_unchanged_rows_up_to_date(tmp_path):
    store = open_store(tmp_path, memories(), output="out.npy")
    embed_all(store, [1.0, 2.0])
    store.finish()
    store.close()
    again = reopened(tmp_path, "out.npy")
    again.prepare(M)
    assert [row.up_to_date for row in again.rows(-1)] == [True, True, True]


@pytest.mark.parametrize("output", ["out.npy", "out.jsonl"])
def test_another_space_is_refused_and_the_output_and_its_sidecar_are_kept(tmp_path, output):
    store = open_store(tmp_path, memories(), output=output)
    embed_all(store, [1.0, 2.0])
    store.finish()
    store.close()
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name.startswith("out")}
    other = reopened(tmp_path, output)
    with pytest.raises(JobError, match=rf"refused before any write: {output}.state.sqlite .*\(3 of 'm \[m-profile, 2-d\]'\) "
                                       rf"and the bulk lane makes 'm \[m-with-prefix, 2-d\]'.*Name another output"):
        other.prepare(OTHER)
    other.close()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.name.startswith("out")} == before


def test_a_published_output_of_another_space_is_refused_without_its_sidecar(tmp_path):
    store = open_store(tmp_path, memories(), output="out.npy")
    embed_all(store, [1.0, 2.0])
    store.finish()
    store.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"out.npy.state.sqlite{suffix}").unlink(missing_ok=True)
    with pytest.raises(JobError, match=r"out.npy holds vectors of another space \(3 of 'm \[m-profile, 2-d\]'\)"):
        reopened(tmp_path, "out.npy").prepare(OTHER)


def test_vectors_of_an_older_job_tagged_with_a_bare_model_name_count_as_another_space(tmp_path):
    source_of(tmp_path, memories())
    (tmp_path / "out.jsonl").write_text(json.dumps({"id": 0, "model": "m", "content_sha256": "x", "embedding": [1.0, 2.0]}) + "\n")
    with pytest.raises(JobError, match=r"\(1 of 'm'\).*'m' is a bare model name.*Vectors of older jobs"):
        reopened(tmp_path, "out.jsonl").prepare(M)
