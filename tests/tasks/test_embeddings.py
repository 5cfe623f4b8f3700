"""The embedding tasks' own logic, run in-process over a MockTransport server."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from athena_client.contract.errors import DimensionMismatch, InputTooLong, InvalidInput
from athena_client.contract.routes import RESULT_TYPES, Queue, TaskName
from athena_inference.tasks import seams
from athena_inference.workers import long_texts
from athena_inference.tasks.embeddings import embed, embed_batch, embed_bulk
from athena_inference.workers.llama_server import LlamaServer
from tests.embedding_fakes import WordServer


def read(task, **fields) -> dict:
    """What a caller reads: the task's stored result through its result type, vectors as lists."""
    return RESULT_TYPES[TaskName(task.name)].model_validate(task(**fields)).model_dump(mode="json")


def serve_vectors(dimension: int):
    def handler(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]
        data = [{"index": i, "embedding": [float(i)] * dimension} for i in range(len(texts))]
        return httpx.Response(200, json={"model": "fake", "data": data, "usage": {"prompt_tokens": 3 * len(texts)}})

    return handler



def use_server(dimension: int) -> None:
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(serve_vectors(dimension)))
    seams.use_llama(Queue.EMBEDDINGS, server)


def test_embed_batch_returns_vectors_with_timing_and_records_metrics(metrics):
    use_server(384)
    out = read(embed_batch, texts=["a", "b"])
    assert out["dimension"] == 384 and len(out["embeddings"]) == 2
    assert out["timing"]["server"]["prompt_tokens"] == 6
    assert metrics.stats("athena.embed_batch").success == 1


def test_vectors_of_the_wrong_size_fail_with_dimension_mismatch(metrics):
    use_server(768)
    with pytest.raises(DimensionMismatch, match="profile all-MiniLM-L6-v2 makes 384"):
        embed(text="a")
    assert metrics.stats("athena.embed").failures == 1


def test_invalid_payload_fails_before_reaching_the_server(metrics):
    use_server(384)
    with pytest.raises(InvalidInput, match="text"):
        embed(text="")


def refuse_long_texts(limit_chars: int):
    """A server that refuses any batch holding a text over `limit_chars` (one token per character)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": list(range(len(json.loads(request.content)["content"])))})
        texts = json.loads(request.content)["input"]
        longest = max(len(t) for t in texts)
        if longest > limit_chars:
            message = f"input ({longest} tokens) is too large to process. increase the physical batch size (current batch size: {limit_chars})"
            return httpx.Response(500, json={"error": {"message": message}})
        data = [{"index": i, "embedding": [float(len(t))] * 384} for i, t in enumerate(texts)]
        return httpx.Response(200, json={"model": "fake", "data": data, "usage": {"prompt_tokens": 1}})

    return handler


def test_embed_bulk_fails_bad_texts_one_by_one_and_embeds_the_rest(metrics):
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(refuse_long_texts(10)))
    seams.use_llama(Queue.EMBEDDINGS_BULK, server)
    out = read(embed_bulk, texts=["short", "", "x" * 50, "tiny", "y" * 11])
    assert [e and e["error"] for e in out["errors"]] == [None, "InvalidInput", "InputTooLong", None, "InputTooLong"]
    assert [v and v[0] for v in out["embeddings"]] == [5.0, None, None, 4.0, None]
    assert out["model"] == "fake" and out["dimension"] == 384


def test_embed_bulk_with_nothing_embeddable_still_answers(metrics):
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(refuse_long_texts(10)))
    seams.use_llama(Queue.EMBEDDINGS_BULK, server)
    out = read(embed_bulk, texts=[" ", "z" * 20])
    assert out["embeddings"] == [None, None]
    assert [e["error"] for e in out["errors"]] == ["InvalidInput", "InputTooLong"]


def test_embed_bulk_that_cuts_nothing_has_no_notes(metrics):
    server = LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(refuse_long_texts(10)))
    seams.use_llama(Queue.EMBEDDINGS_BULK, server)
    assert embed_bulk(texts=["short", "x" * 50])["notes"] == []


# --- texts longer than the server takes: the long_text policy ---


def use_word_server(limit: int = 10, queue: Queue = Queue.EMBEDDINGS, **options) -> WordServer:
    fake = WordServer(limit, **options)
    seams.use_llama(queue, LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(fake)))
    return fake


# Ten "alpha" then four "beta": with a limit of 10 tokens (8 beside the two
# special ones), the windows are eight "alpha" and then two "alpha", four "beta".
LONG = " ".join(["alpha"] * 10 + ["beta"] * 4)


def unit(vector):
    return list(np.asarray(vector) / np.linalg.norm(vector))


@pytest.mark.parametrize("policy", ["fail", "truncate", "chunk"])
def test_a_batch_that_fits_is_one_server_request_under_every_policy(metrics, policy):
    fake = use_word_server()
    out = read(embed_batch, texts=["alpha beta", "gamma"], long_text=policy)
    assert fake.paths() == ["/v1/embeddings"]
    assert out["notes"] == []


def test_fail_refuses_an_over_long_text_naming_its_position(metrics):
    use_word_server()
    with pytest.raises(InputTooLong, match=r"positions \[1\]"):
        embed_batch(texts=["gamma", LONG], long_text="fail")


def test_fail_is_the_default_policy(metrics):
    use_word_server()
    with pytest.raises(InputTooLong):
        embed(text=LONG)


def test_truncate_embeds_the_first_window_of_tokens_that_fits(metrics):
    fake = use_word_server()
    out = read(embed, text=LONG, long_text="truncate")
    assert fake.embedded()[-1] == [" " + " ".join(["alpha"] * 8)]
    assert out["note"] == "truncated"
    assert out["embedding"][:3] == pytest.approx([1.0, 0.0, 0.0])


def test_chunk_gives_the_token_weighted_mean_of_the_windows_unit_vectors_made_unit_again(metrics):
    use_word_server()
    out = read(embed, text=LONG, long_text="chunk")
    # Window 1: eight "alpha" -> unit [1, 0], weight 8; window 2: two "alpha", four "beta" -> unit [2, 4]/|.|, weight 6.
    expected = unit(8 * np.array([1.0, 0.0]) + 6 * np.array(unit([2.0, 4.0])))
    assert out["embedding"][:2] == pytest.approx(expected)
    assert np.linalg.norm(out["embedding"]) == pytest.approx(1.0)
    assert out["note"] == "chunked" and out["dimension"] == 384


def test_chunk_sends_the_windows_and_the_other_texts_in_one_request(metrics):
    fake = use_word_server()
    out = read(embed_batch, texts=["gamma", LONG, "beta"], long_text="chunk")
    refused, served = fake.embedded()
    assert refused == ["gamma", LONG, "beta"]
    assert served == ["gamma", " " + " ".join(["alpha"] * 8), " alpha alpha beta beta beta beta", "beta"]
    assert out["notes"] == [None, "chunked", None]
    assert out["embeddings"][0][:3] == [0.0, 0.0, 1.0] and out["embeddings"][2][:3] == [0.0, 1.0, 0.0]


def test_only_the_over_long_texts_are_cut_into_tokens_and_back(metrics):
    fake = use_word_server()
    embed_batch(texts=["gamma", LONG], long_text="chunk")
    cut_into_tokens = [body["content"] for path, body in fake.requests if path == "/tokenize" and not body["add_special"]]
    assert LONG in cut_into_tokens and "gamma" not in cut_into_tokens
    words = {i: w for w, i in fake.vocabulary.items()}
    detokenized = {words[t] for path, body in fake.requests if path == "/detokenize" for t in body["tokens"]}
    assert detokenized == {"alpha", "beta"}


def test_a_window_that_re_tokenizes_longer_than_the_limit_is_made_shorter(metrics):
    fake = use_word_server()
    # "x_y" is one token but detokenizes to two words.
    text = " ".join(["alpha"] * 7 + ["x_y"] + ["beta"] * 6)
    out = read(embed, text=text, long_text="chunk")
    served = fake.embedded()[-1]
    assert all(len(window.split()) + 2 <= 10 for window in served)
    assert " ".join(served).split() == " ".join(["alpha"] * 7 + ["x", "y"] + ["beta"] * 6).split()
    assert out["note"] == "chunked"


def test_a_text_no_window_of_which_fits_fails_with_input_too_long_after_bounded_tries(metrics):
    fake = use_word_server()
    # "boom" detokenizes to twenty words: no window holding it fits, however short.
    with pytest.raises(InputTooLong, match="could not be cut"):
        embed(text=" ".join(["alpha"] * 12 + ["boom"]), long_text="chunk")
    assert fake.paths().count("/detokenize") <= 10


def test_a_server_that_does_not_state_its_limit_gets_no_guessed_windows(metrics):
    fake = use_word_server(state_limit=False)
    with pytest.raises(InputTooLong, match="did not state its limit"):
        embed(text=LONG, long_text="chunk")
    assert "/detokenize" not in fake.paths()


def test_window_vectors_of_the_wrong_size_fail_with_dimension_mismatch(metrics):
    use_word_server(dimension=768)
    with pytest.raises(DimensionMismatch):
        embed(text=LONG, long_text="chunk")


def test_embed_bulk_chunks_an_over_long_text_and_notes_it_among_the_others(metrics):
    fake = use_word_server(queue=Queue.EMBEDDINGS_BULK)
    out = read(embed_bulk, texts=["gamma", " ", LONG, "beta"], long_text="chunk")
    assert out["errors"] == [None, {"id": 1, "error": "InvalidInput", "message": "text is empty or only whitespace"}, None, None]
    assert out["notes"] == [None, None, "chunked", None]
    assert [v is not None for v in out["embeddings"]] == [True, False, True, True]
    assert len(fake.embedded()) == 2


def test_embed_bulk_truncates_when_asked(metrics):
    use_word_server(queue=Queue.EMBEDDINGS_BULK)
    out = read(embed_bulk, texts=[LONG, "gamma"], long_text="truncate")
    assert out["notes"] == ["truncated", None]
    assert out["embeddings"][0][:3] == pytest.approx([1.0, 0.0, 0.0])


def test_embed_bulk_gives_a_text_that_cannot_be_cut_its_own_error(metrics):
    use_word_server(queue=Queue.EMBEDDINGS_BULK)
    out = read(embed_bulk, texts=[LONG, " ".join(["alpha"] * 12 + ["boom"]), "gamma"], long_text="chunk")
    assert [e and e["error"] for e in out["errors"]] == [None, "InputTooLong", None]
    assert "could not be cut" in out["errors"][1]["message"]
    assert out["notes"] == ["chunked", None, None]
    assert out["embeddings"][1] is None and out["embeddings"][2][:3] == [0.0, 0.0, 1.0]


def test_cut_takes_the_window_size_as_a_parameter(metrics):
    use_word_server()
    windows = long_texts.cut(seams.llama(Queue.EMBEDDINGS), LONG, "chunk", limit=10, window=4)
    assert [w.tokens for w in windows] == [4, 4, 4, 2]
    assert [w.text.split() for w in windows][-1] == ["beta", "beta"]
