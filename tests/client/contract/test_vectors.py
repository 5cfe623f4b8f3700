"""Vectors in the contract: lists to every reader, base64 float32 on the queues' own wire."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from pydantic import BaseModel, ValidationError

from athena_client.contract.jobs import EmbedBulkResult
from athena_client.contract.payloads import EmbeddingBatchResult, EmbeddingResult
from athena_client.contract.vectors import WIRE, Vector

TIMING = {"task": "athena.embed", "queue": "embeddings", "model": "m", "started_at": "2026-12-08T00:00:00Z",
          "finished_at": "2026-12-08T00:00:00Z", "run_ms": 1.0}
# Values a float32 holds exactly, as a server's vectors are.
VALUES = [0.5, -0.25, 0.125, 3.0, -(2.0**-20)]


class Holder(BaseModel):
    vector: Vector


def test_on_the_wire_a_vector_is_the_base64_of_its_little_endian_float32s():
    wired = Holder(vector=VALUES).model_dump(mode="json", context=WIRE)["vector"]
    assert struct.unpack("<5f", base64.b64decode(wired)) == pytest.approx(tuple(VALUES), rel=1e-7)
    assert len(wired) == 4 * ((len(VALUES) * 4 + 2) // 3)


def test_a_wired_vector_reads_back_as_the_same_list_of_floats():
    result = EmbeddingResult(embedding=VALUES, model="m", dimension=5, timing=TIMING)
    again = EmbeddingResult.model_validate(result.model_dump(mode="json", context=WIRE))
    assert again.embedding == VALUES and all(type(v) is float for v in again.embedding)


def test_outside_the_wire_a_vector_is_a_list_in_python_and_in_json():
    result = EmbeddingResult(embedding=VALUES, model="m", dimension=5, timing=TIMING)
    assert result.model_dump()["embedding"] == VALUES
    assert json.loads(result.model_dump_json())["embedding"] == VALUES


def test_a_vector_made_in_python_crosses_the_wire_rounded_to_float32():
    third = [1 / 3, 2 / 3]
    again = Holder.model_validate(Holder(vector=third).model_dump(mode="json", context=WIRE)).vector
    assert again != third and again == pytest.approx(third, rel=1e-7)


def test_batches_and_bulk_results_wire_each_vector_and_keep_the_missing_ones():
    batch = EmbeddingBatchResult(embeddings=[VALUES, VALUES[:2]], model="m", dimension=5, timing=TIMING)
    wired = batch.model_dump(mode="json", context=WIRE)
    assert all(isinstance(v, str) for v in wired["embeddings"])
    assert EmbeddingBatchResult.model_validate(wired).embeddings == [VALUES, VALUES[:2]]
    bulk = EmbedBulkResult(embeddings=[VALUES, None], errors=[None, {"id": 1, "error": "InvalidInput", "message": "blank"}],
                           model="m", dimension=5, timing=TIMING)
    assert EmbedBulkResult.model_validate(bulk.model_dump(mode="json", context=WIRE)).embeddings == [VALUES, None]


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"\x00\x01\x02").decode()])
def test_text_that_is_no_float32_vector_is_refused(bad):
    with pytest.raises(ValidationError, match="base64|whole float32"):
        Holder.model_validate({"vector": bad})
