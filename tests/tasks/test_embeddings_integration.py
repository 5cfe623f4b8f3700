"""embed and embed_batch through a real worker and a real llama-server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from athena_client.contract.errors import InvalidInput
from athena_client.contract.payloads import EmbedBatchRequest, EmbedRequest
from athena_client.contract.routes import TaskName
from tests import minilm_reference

SENTENCES = [
    "The deploy to production failed at 3am because the migration locked the users table.",
    "We decided to keep PostgreSQL and add pgvector instead of running a separate vector store.",
    "Every Friday the team reviews the on-call log and files follow-up issues.",
]


@pytest.fixture(scope="module")
def reference_vectors(provisioned) -> np.ndarray:
    return minilm_reference.reference_vectors(provisioned, SENTENCES)


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embed_batch_matches_reference_model(sender, reference_vectors):
    out = sender.call(TaskName.EMBED_BATCH, EmbedBatchRequest(texts=SENTENCES))
    assert out.dimension == 384 and len(out.embeddings) == len(SENTENCES)
    for vector, reference in zip(out.embeddings, reference_vectors, strict=True):
        assert cosine(vector, reference) >= 0.999


def test_embed_matches_reference_model(sender, reference_vectors):
    out = sender.call(TaskName.EMBED, EmbedRequest(text=SENTENCES[1]))
    assert cosine(out.embedding, reference_vectors[1]) >= 0.999
    assert out.model == "all-MiniLM-L6-v2"


def test_embed_result_and_timing_are_stored_in_redis(sender, stack):
    pending = sender.send(TaskName.EMBED, EmbedRequest(text="timing goes with the result"))
    # Kept, so it can be read again from Redis (the client deletes what it has read).
    out = sender.result(TaskName.EMBED, pending.id, 60, keep=True)
    raw = redis.Redis.from_url(stack.env["ATHENA_RESULT_BACKEND"]).get(f"celery-task-meta-{pending.id}")
    stored = json.loads(raw)
    assert stored["status"] == "SUCCESS"
    timing = stored["result"]["timing"]
    assert timing["queue"] == "embeddings" and timing["task"] == "athena.embed"
    assert timing["queue_wait_ms"] is not None and timing["queue_wait_ms"] >= 0
    assert timing["run_ms"] > 0 and timing["server"]["prompt_tokens"] > 0
    assert timing["enqueued_at"] <= timing["started_at"] <= timing["finished_at"]
    assert out.timing.model_dump(mode="json") == timing


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"text": ""}, "text"),
        ({"text": "   "}, "empty"),
        ({"text": 42}, "string"),
        ({"text": "ok", "colour": "blue"}, "colour"),
        ({}, "text"),
    ],
)
def test_bad_embed_input_fails_with_invalid_input(sender, payload, fragment):
    pending = sender.app.send_task(TaskName.EMBED.value, kwargs=payload, queue="embeddings")
    with pytest.raises(InvalidInput, match=fragment):
        pending.get(timeout=30)


def test_worker_keeps_serving_after_bad_input(sender):
    bad = sender.app.send_task(TaskName.EMBED_BATCH.value, kwargs={"texts": ["fine", ""]}, queue="embeddings")
    with pytest.raises(InvalidInput, match=r"texts\.1"):
        bad.get(timeout=30)
    out = sender.call(TaskName.EMBED, EmbedRequest(text="still here"))
    assert out.dimension == 384


def test_over_long_text_is_refused_with_its_position(sender):
    long_text = " ".join(f"word{i}" for i in range(700))
    pending = sender.app.send_task(
        TaskName.EMBED_BATCH.value, kwargs={"texts": ["short", long_text]}, queue="embeddings"
    )
    with pytest.raises(InvalidInput, match=r"positions \[1\]"):
        pending.get(timeout=60)
