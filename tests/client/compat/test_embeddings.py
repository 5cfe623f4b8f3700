"""The helper Athena imports beside EmbeddingModel."""

import pytest

from athena_client.compat.embeddings import cosine_similarity


def test_cosine_of_parallel_orthogonal_and_opposite_vectors():
    assert cosine_similarity([1.0, 2.0], [2.0, 4.0]) == pytest.approx(1.0)
    assert cosine_similarity([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine_similarity([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)


def test_a_zero_vector_has_cosine_zero_as_in_athena():
    assert cosine_similarity([0.0, 0.0], [1.0, 2.0]) == 0.0


def test_numpy_arrays_are_taken_too():
    np = pytest.importorskip("numpy")
    assert cosine_similarity(np.array([3.0, 4.0]), [3.0, 4.0]) == pytest.approx(1.0)


def test_vectors_of_different_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match="different lengths"):
        cosine_similarity([1.0], [1.0, 2.0])


# --- what each text is for reaches the client (the workers add the model's prefix) ---


class RecordingClient:
    """Stands in for the shared AthenaClient: records each call's purpose."""

    def __init__(self) -> None:
        self.purposes: list[str] = []

    def embed(self, text, *, purpose="document", **_):
        from types import SimpleNamespace

        self.purposes.append(purpose)
        return SimpleNamespace(embedding=[1.0, 0.0], dimension=2, model="m")

    def embed_batch(self, texts, batch_size=32, *, purpose="document", **_):
        return [self.embed(text, purpose=purpose) for text in texts]


@pytest.fixture
def recording(monkeypatch):
    from athena_client.compat import embeddings, llm_client

    client = RecordingClient()
    monkeypatch.setattr(embeddings, "shared_client", lambda timeout: client)
    monkeypatch.setattr(llm_client, "shared_client", lambda timeout: client)
    monkeypatch.setattr(embeddings, "_probe", None)
    return client


def test_embedding_model_stores_documents_unless_told_it_searches(recording):
    from athena_client.compat.embeddings import EmbeddingModel

    model = EmbeddingModel()
    model.embed("a memory")
    model.embed("what failed?", purpose="query")
    model.embed_query("what failed?")
    model.embed_batch(["one", "two"])
    model.embed_batch(["q"], purpose="query")
    # The first is construction's own probe.
    assert recording.purposes == ["document", "document", "query", "query", "document", "document", "query"]


def test_local_llm_client_embeds_take_athenas_purpose(recording):
    import asyncio

    from athena_client.compat.llm_client import LocalLLMClient

    client = LocalLLMClient()
    asyncio.run(client.embed("a memory"))
    asyncio.run(client.embed("what failed?", purpose="query"))
    asyncio.run(client.embed_batch(["q1", "q2"], purpose="query"))
    assert recording.purposes == ["document", "query", "query", "query"]
