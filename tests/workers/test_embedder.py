"""The embedding seam's rules, over a fake server that counts words (tests/embedding_fakes.py)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from athena_client.contract.errors import DimensionMismatch, InputTooLong, InvalidInput
from athena_inference.config.embedding_profiles import KNOWN_PROFILES, EmbeddingProfile
from athena_inference.workers.embedder import Embedder, matryoshka
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.server_pool import ServerPool
from tests.embedding_fakes import WordServer

# One word each, so the fake server counts each prefix as one token; "search_…"
# starts with neither "a" nor "b", so it shows in a vector's third count.
PREFIXED = EmbeddingProfile(
    name="prefixed", document_prefix="search_document: ", query_prefix="search_query: ", dimension=384, dimensions=(128, 64)
)
# Ten "alpha" then four "beta": with a limit of 10 tokens, two special ones and a one-token prefix, windows hold 7 words.
LONG = " ".join(["alpha"] * 10 + ["beta"] * 4)


def embedder(fake: WordServer, profile: EmbeddingProfile = PREFIXED, dimension: int = 384) -> Embedder:
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(fake))
    return Embedder(ServerPool([server]), profile, dimension)


def test_each_purpose_sends_its_prefix_and_the_result_says_so():
    fake = WordServer(limit=10)
    seam = embedder(fake)
    stored = seam.embed(["alpha beta"], purpose="document")
    searched = seam.embed(["alpha beta"], purpose="query")
    assert fake.embedded() == [["search_document: alpha beta"], ["search_query: alpha beta"]]
    assert (stored.origin.purpose, stored.origin.prefix, stored.origin.profile) == ("document", "search_document: ", "prefixed")
    assert searched.origin.prefix == "search_query: " and searched.origin.dimension == 384
    assert stored.origin.space == "fake [prefixed, 384-d]"


def test_a_profile_without_prefixes_sends_the_text_as_given():
    fake = WordServer(limit=10)
    embedder(fake, KNOWN_PROFILES["all-MiniLM-L6-v2"]).embed(["alpha"], purpose="query")
    assert fake.embedded() == [["alpha"]]


@pytest.mark.parametrize("purpose, prefix", [("document", "search_document: "), ("query", "search_query: ")])
def test_every_window_of_a_chunked_text_carries_the_prefix_and_fits_with_it(purpose, prefix):
    fake = WordServer(limit=10)
    out = embedder(fake).embed(["gamma", LONG], purpose=purpose, long_text="chunk")
    refused, served = fake.embedded()
    assert refused == [prefix + "gamma", prefix + LONG]
    assert all(window.startswith(prefix) for window in served)
    # Two special tokens, the prefix and the words: each input within the limit.
    assert all(len(window.split()) + 2 <= 10 for window in served)
    windows = [window[len(prefix) :] for window in served[1:]]
    assert " ".join(windows).split() == LONG.split()
    assert out.notes == [None, "chunked"]
    # The prefix word counts in the third dimension of every window's vector, so of the mean too.
    assert out.vectors[1][2] > 0


def test_truncate_keeps_the_prefix_and_the_first_window():
    fake = WordServer(limit=10)
    out = embedder(fake).embed([LONG], purpose="query", long_text="truncate")
    assert fake.embedded()[-1] == ["search_query:  " + " ".join(["alpha"] * 7)]
    assert out.notes == ["truncated"]


def test_a_blank_text_is_refused_before_the_prefix_could_make_it_look_like_text():
    fake = WordServer(limit=10)
    with pytest.raises(InvalidInput, match="text 1: text is empty or only whitespace"):
        embedder(fake).embed(["alpha", "   "])
    assert fake.requests == []


def test_a_prefix_that_leaves_no_room_is_an_input_too_long():
    long_prefix = EmbeddingProfile(name="wordy", document_prefix=" ".join(["instruction"] * 9) + " ", dimension=384)
    with pytest.raises(InputTooLong):
        embedder(WordServer(limit=10), long_prefix).embed([LONG], long_text="chunk")


def test_vectors_of_another_size_than_the_profiles_are_a_dimension_mismatch():
    with pytest.raises(DimensionMismatch, match="profile prefixed makes 384"):
        embedder(WordServer(limit=10, dimension=768)).embed(["alpha"])


# --- Matryoshka sizes ---


def test_a_matryoshka_size_is_a_slice_of_the_full_vector_made_unit_length():
    fake = WordServer(limit=10)
    seam = embedder(fake)
    full = seam.embed(["alpha beta beta"]).vectors[0]
    cut = seam.embed(["alpha beta beta"], dimensions=64)
    head = np.asarray(full[:64])
    assert cut.vectors[0] == pytest.approx(list(head / np.linalg.norm(head)))
    assert len(cut.vectors[0]) == 64 and cut.origin.dimension == 64
    assert cut.origin.space == "fake [prefixed, 64-d]"


def test_the_lanes_own_size_applies_when_a_call_asks_for_none():
    out = embedder(WordServer(limit=10), dimension=128).embed(["alpha"])
    assert len(out.vectors[0]) == 128 and out.origin.dimension == 128


def test_nomics_cut_layer_normalises_the_full_vector_first():
    rng = np.random.default_rng(7)
    vector = rng.normal(size=768)
    vector /= np.linalg.norm(vector)
    # nomic's model card: layer_norm over the full embedding, slice, L2-normalise.
    normed = (vector - vector.mean()) / np.sqrt(vector.var() + 1e-5)
    expected = normed[:256] / np.linalg.norm(normed[:256])
    assert matryoshka(vector.tolist(), 256, layer_norm=True) == pytest.approx(expected.tolist())
    # And the server's unit scaling does not change it.
    assert matryoshka((vector * 3.5).tolist(), 256, layer_norm=True) == pytest.approx(expected.tolist())


@pytest.mark.parametrize("size", [300, 384 + 1, 0])
def test_a_size_the_model_was_not_trained_for_is_refused_before_the_server_is_asked(size):
    fake = WordServer(limit=10)
    with pytest.raises(InvalidInput, match=f"dimensions={size}: prefixed vectors can be 384, 128, 64 dimensions long"):
        embedder(fake).embed(["alpha"], dimensions=size)
    assert fake.requests == []


def test_a_lane_whose_size_its_profile_forbids_cannot_be_made():
    with pytest.raises(DimensionMismatch, match="all-MiniLM-L6-v2 makes 384-dimensional vectors and cannot be cut"):
        embedder(WordServer(limit=10), KNOWN_PROFILES["all-MiniLM-L6-v2"], dimension=128)


# --- a batch where each text stands alone (the bulk lane) ---


def test_items_that_cannot_be_embedded_get_their_own_errors_and_the_rest_their_vectors():
    fake = WordServer(limit=10)
    out = embedder(fake).embed_items(["alpha", "", LONG, "beta"], purpose="document", long_text="fail", dimensions=64)
    assert [e and e.error for e in out.errors] == [None, "InvalidInput", "InputTooLong", None]
    assert [v is None for v in out.vectors] == [False, True, True, False]
    assert all(len(v) == 64 for v in out.vectors if v is not None)
    assert fake.embedded()[-1] == ["search_document: alpha", "search_document: beta"]
    assert out.origin.model == "fake" and out.origin.dimension == 64


def test_items_none_of_which_can_be_embedded_still_say_which_profile_would_have():
    out = embedder(WordServer(limit=10)).embed_items([" ", "\x00"], purpose="query")
    assert out.vectors == [None, None] and out.timing is None
    assert (out.origin.profile, out.origin.prefix) == ("prefixed", "search_query: ")
