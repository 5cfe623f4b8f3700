"""The embedding seam against the real embedded MiniLM server, through real workers.

MiniLM needs no prefixes; a profile that gives it some (and Matryoshka sizes)
shows by the vectors alone that every input reached the server with its
prefix, each window of a chunked text included, and that a cut vector is a
slice of the full one made unit length again. What only nomic's own weights
can show (that its prefixes help retrieval) is said in docs/settings.md.
"""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from athena_client.contract.consolidation import Pattern
from athena_client.contract.errors import DimensionMismatch, InvalidInput
from athena_client.contract.payloads import EmbedBatchRequest, EmbedRequest
from athena_client.contract.routes import TaskName
from athena_client.sender import TaskSender
from athena_inference.tasks.consolidation.stages import ConsolidationState
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.long_texts import cut, pooled
from tests.harness import Stack, local_stack_env, redis_port
from tests.minilm_reference import SAME_TEXT_COSINE

DOCUMENT, QUERY = "passage for storage: ", "question to search with: "
PROFILES = {
    # MiniLM's own vectors, with prefixes and cut sizes it was not trained for: plumbing only.
    "minilm-prefixed": {"dimension": 384, "document_prefix": DOCUMENT, "query_prefix": QUERY, "dimensions": [128, 64]},
    # A profile that says 768 for a server that makes 384: the lane runs another model than its settings say.
    "claims-768": {"dimension": 768},
}
TEXT = "The nightly backup of the billing database moved from 2am to 4am after the index rebuild overlapped it."


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def profiled_lane(stack: Stack, tmp_path_factory, profile: str) -> TaskSender:
    """An embeddings worker of its own (own Redis) under `profile`, in front of the session's MiniLM server."""
    env = local_stack_env(
        LLAMACPP_EMBEDDINGS_URL=stack.env["LLAMACPP_EMBEDDINGS_URL"],
        ATHENA_EMBEDDING_PROFILE=profile,
        ATHENA_EMBEDDING_PROFILES=json.dumps(PROFILES),
    )
    lane = Stack(tmp_path_factory.mktemp(profile), env)
    lane.redis(redis_port(env))
    lane.worker("embeddings", profile)
    sender = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
    lane.wait_for_workers(sender, {f"embeddings@{profile}"})
    return lane, sender


@pytest.fixture(scope="module")
def prefixed(stack, tmp_path_factory):
    lane, sender = profiled_lane(stack, tmp_path_factory, "minilm-prefixed")
    yield sender
    sender.close()
    lane.stop_all()


@pytest.fixture(scope="module")
def server(stack):
    """The session's MiniLM server, in-process, to compute what the worker should have sent."""
    seam = LlamaServer(stack.env["LLAMACPP_EMBEDDINGS_URL"], timeout=httpx.Timeout(60.0))
    yield seam
    seam.close()


def test_each_purpose_reaches_the_server_with_its_prefix(prefixed, sender):
    stored = prefixed.call(TaskName.EMBED, EmbedRequest(text=TEXT, purpose="document"))
    searched = prefixed.call(TaskName.EMBED, EmbedRequest(text=TEXT, purpose="query"))
    # The plain lane (no prefixes) embedding the prefixed texts gives the same vectors.
    by_hand = sender.call(TaskName.EMBED_BATCH, EmbedBatchRequest(texts=[DOCUMENT + TEXT, QUERY + TEXT, TEXT]))
    # Alone or in a batch of three, one text's vectors agree to SAME_TEXT_COSINE (a Q8_0 model); without its prefix, far less.
    assert cosine(stored.embedding, by_hand.embeddings[0]) > SAME_TEXT_COSINE
    assert cosine(searched.embedding, by_hand.embeddings[1]) > SAME_TEXT_COSINE
    assert cosine(stored.embedding, by_hand.embeddings[2]) < 0.99
    assert (stored.profile, stored.purpose, stored.prefix, stored.dimension) == ("minilm-prefixed", "document", DOCUMENT, 384)
    assert searched.prefix == QUERY and stored.space == "all-MiniLM-L6-v2 [minilm-prefixed, 384-d]"


def test_every_window_of_a_chunked_text_carries_the_prefix(prefixed, server):
    long_text = " ".join(f"Event {i}: the on-call engineer restarted the ingest worker after the queue grew past its bound." for i in range(60))
    out = prefixed.call(TaskName.EMBED, EmbedRequest(text=long_text, purpose="query", long_text="chunk"), timeout=240)
    assert out.note == "chunked"
    # The same windows, each after the prefix, embedded by the server and pooled as the seam pools them.
    windows = cut(server, long_text, "chunk", limit=512, prefix=QUERY)
    assert len(windows) >= 2
    expected = pooled(server.embed([QUERY + w.text for w in windows]).vectors, [w.tokens for w in windows])
    assert cosine(out.embedding, expected) > SAME_TEXT_COSINE
    # Without the prefix on every window the vector differs.
    unprefixed = pooled(server.embed([w.text for w in windows]).vectors, [w.tokens for w in windows])
    assert cosine(out.embedding, unprefixed) < 0.999


def test_a_matryoshka_cut_is_a_slice_of_the_full_vector_made_unit_length(prefixed):
    full = prefixed.call(TaskName.EMBED, EmbedRequest(text=TEXT))
    short = prefixed.call(TaskName.EMBED_BATCH, EmbedBatchRequest(texts=[TEXT], dimensions=128))
    head = np.asarray(full.embedding[:128])
    assert short.dimension == 128 and len(short.embeddings[0]) == 128
    assert short.embeddings[0] == pytest.approx(list(head / np.linalg.norm(head)), abs=1e-6)
    assert np.linalg.norm(short.embeddings[0]) == pytest.approx(1.0, abs=1e-6)


def test_a_size_the_profile_does_not_allow_is_refused_and_the_worker_goes_on(prefixed):
    with pytest.raises(InvalidInput, match="dimensions=100: minilm-prefixed vectors can be 384, 128, 64 dimensions long"):
        prefixed.call(TaskName.EMBED, EmbedRequest(text=TEXT, dimensions=100))
    assert prefixed.call(TaskName.EMBED, EmbedRequest(text=TEXT, dimensions=64)).dimension == 64


def test_the_consolidation_stage_refuses_vectors_of_the_wrong_dimension(stack, tmp_path_factory):
    lane, sender = profiled_lane(stack, tmp_path_factory, "claims-768")
    try:
        pattern = Pattern(description="Backups moved to 4am", type="fact", confidence=0.9, source_events=["e1"])
        state = ConsolidationState(
            options={"embed_patterns": True}, event_ids=["e1"], event_text="[e1] backups", dropped_event_ids=[],
            patterns=[pattern], remaining=[], started_at=time.time(),
        )
        with pytest.raises(DimensionMismatch, match="returned \\[384\\]-dimensional vectors but its profile claims-768 makes 768"):
            sender.call(TaskName.CONSOLIDATE_EMBED, state, timeout=60)
    finally:
        sender.close()
        lane.stop_all()
