"""athena.rerank through a real worker and the rerank lane's own llama-server.

Malformed payloads (no documents, a blank query, a NUL document) are refused
typed with every other task's, in tests/tasks/test_malformed_payloads.py."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from athena_client.contract.payloads import RerankRequest
from athena_client.contract.routes import Queue, TaskName
from tests import minilm_reference

QUERY = "Why did last night's deploy fail?"
DOCUMENTS = [
    "Every Friday the team reviews the on-call log and files follow-up issues.",
    "The deploy to production failed at 3am because the migration locked the users table.",
    "We decided to keep PostgreSQL and add pgvector instead of running a separate vector store.",
    "Lunch on Thursday is at the Italian place across the street.",
]


@pytest.fixture(scope="module")
def reference_scores(provisioned) -> np.ndarray:
    """The query's cosine with each document, from the same model in transformers."""
    vectors = minilm_reference.reference_vectors(provisioned, [QUERY, *DOCUMENTS])
    return vectors[1:] @ vectors[0]


def prompt_tokens_served(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(re.search(r"^llamacpp:prompt_tokens_total (\S+)", text, re.MULTILINE).group(1))


def test_documents_come_back_best_first_with_the_models_own_scores(sender, reference_scores):
    out = sender.call(TaskName.RERANK, RerankRequest(query=QUERY, documents=DOCUMENTS))
    assert [r.index for r in out.results] == list(np.argsort(-reference_scores, kind="stable"))
    assert out.results[0].index == 1
    for ranked in out.results:
        # The served file is Q8_0, the reference the float checkpoint: their cosines differ in the third decimal.
        assert ranked.score == pytest.approx(reference_scores[ranked.index], abs=5e-3)
    assert (out.model, out.profile, out.method) == ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "bi-encoder")
    assert out.timing.server.prompt_tokens > 0


def test_top_n_keeps_only_the_best(sender):
    out = sender.call(TaskName.RERANK, RerankRequest(query=QUERY, documents=DOCUMENTS, top_n=2))
    assert [r.index for r in out.results][:1] == [1] and len(out.results) == 2


def test_a_rerank_runs_on_its_own_server_and_never_on_the_interactive_one(sender, stack):
    rerank, embeddings = stack.env["ATHENA_RERANK_URL"], stack.env["LLAMACPP_EMBEDDINGS_URL"]
    before = prompt_tokens_served(rerank), prompt_tokens_served(embeddings)
    sender.call(TaskName.RERANK, RerankRequest(query=QUERY, documents=DOCUMENTS))
    after = prompt_tokens_served(rerank), prompt_tokens_served(embeddings)
    assert after[0] > before[0] and after[1] == before[1]


def test_health_names_the_rerank_lanes_profile(sender):
    queue = sender.health(timeout=30).queues[Queue.RERANK.value]
    assert queue.healthy and queue.profile == "all-MiniLM-L6-v2"
