"""Request payloads are strict: no blank text, no coercion, no unknown fields, ranges enforced."""

import pytest
from pydantic import ValidationError

from athena_client.contract.payloads import MAX_BATCH_TEXTS, EmbedBatchRequest, EmbedRequest, ReasonRequest

# --- EmbedRequest ---


def test_embed_request_accepts_text():
    assert EmbedRequest(text="hello world").text == "hello world"


@pytest.mark.parametrize("text", ["", " ", "\n\t  "])
def test_embed_request_refuses_empty_or_whitespace_text(text):
    with pytest.raises(ValidationError, match="empty or only whitespace"):
        EmbedRequest(text=text)


@pytest.mark.parametrize("text", [5, 1.5, b"bytes", ["a"], None])
def test_embed_request_refuses_non_string_text(text):
    with pytest.raises(ValidationError):
        EmbedRequest.model_validate({"text": text})


def test_embed_request_refuses_unknown_fields():
    with pytest.raises(ValidationError, match="model"):
        EmbedRequest.model_validate({"text": "hi", "model": "nomic"})


def test_embed_request_refuses_missing_text():
    with pytest.raises(ValidationError):
        EmbedRequest.model_validate({})


def test_embed_request_keeps_surrounding_whitespace():
    assert EmbedRequest(text="  hi  ").text == "  hi  "


def test_requests_are_frozen():
    request = EmbedRequest(text="hi")
    with pytest.raises(ValidationError):
        request.text = "other"


# --- EmbedBatchRequest ---


def test_embed_batch_request_accepts_texts():
    assert EmbedBatchRequest(texts=["a", "b"]).texts == ["a", "b"]


def test_embed_batch_request_refuses_empty_batch():
    with pytest.raises(ValidationError):
        EmbedBatchRequest(texts=[])


def test_embed_batch_request_accepts_max_batch_size():
    assert len(EmbedBatchRequest(texts=["x"] * MAX_BATCH_TEXTS).texts) == MAX_BATCH_TEXTS


def test_embed_batch_request_refuses_batch_over_max_size():
    with pytest.raises(ValidationError):
        EmbedBatchRequest(texts=["x"] * (MAX_BATCH_TEXTS + 1))


def test_embed_batch_request_refuses_one_blank_text_among_many():
    with pytest.raises(ValidationError) as caught:
        EmbedBatchRequest(texts=["fine", "   ", "also fine"])
    assert caught.value.errors()[0]["loc"] == ("texts", 1)


def test_embed_batch_request_refuses_non_string_item():
    with pytest.raises(ValidationError):
        EmbedBatchRequest.model_validate({"texts": ["fine", 3]})


def test_embed_batch_request_refuses_a_single_string_instead_of_list():
    with pytest.raises(ValidationError):
        EmbedBatchRequest.model_validate({"texts": "just one"})


def test_embed_batch_request_refuses_unknown_fields():
    with pytest.raises(ValidationError):
        EmbedBatchRequest.model_validate({"texts": ["a"], "normalize": True})


# --- ReasonRequest ---


def test_reason_request_defaults():
    request = ReasonRequest(prompt="Why?")
    assert request.system is None
    assert request.max_tokens == 512
    assert request.temperature == 0.7
    assert request.top_p == 0.9
    assert request.stop == []


def test_reason_request_refuses_blank_prompt():
    with pytest.raises(ValidationError):
        ReasonRequest(prompt="   ")


def test_reason_request_refuses_unknown_fields():
    with pytest.raises(ValidationError):
        ReasonRequest.model_validate({"prompt": "Why?", "top_k": 40})


@pytest.mark.parametrize("temperature", [-0.1, 2.01])
def test_reason_request_refuses_out_of_range_temperature(temperature):
    with pytest.raises(ValidationError):
        ReasonRequest(prompt="Why?", temperature=temperature)


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_reason_request_accepts_temperature_bounds(temperature):
    assert ReasonRequest(prompt="Why?", temperature=temperature).temperature == temperature


def test_reason_request_accepts_int_for_float_temperature():
    request = ReasonRequest.model_validate({"prompt": "Why?", "temperature": 1})
    assert request.temperature == 1.0


def test_reason_request_refuses_string_temperature():
    with pytest.raises(ValidationError):
        ReasonRequest.model_validate({"prompt": "Why?", "temperature": "0.5"})


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.01])
def test_reason_request_refuses_out_of_range_top_p(top_p):
    with pytest.raises(ValidationError):
        ReasonRequest(prompt="Why?", top_p=top_p)


def test_reason_request_accepts_top_p_of_one():
    assert ReasonRequest(prompt="Why?", top_p=1.0).top_p == 1.0


@pytest.mark.parametrize("max_tokens", [0, -1, 32769])
def test_reason_request_refuses_out_of_range_max_tokens(max_tokens):
    with pytest.raises(ValidationError):
        ReasonRequest(prompt="Why?", max_tokens=max_tokens)


@pytest.mark.parametrize("max_tokens", [1, 32768])
def test_reason_request_accepts_max_tokens_bounds(max_tokens):
    assert ReasonRequest(prompt="Why?", max_tokens=max_tokens).max_tokens == max_tokens


@pytest.mark.parametrize("max_tokens", ["64", 64.0, True])
def test_reason_request_refuses_coerced_max_tokens(max_tokens):
    with pytest.raises(ValidationError):
        ReasonRequest.model_validate({"prompt": "Why?", "max_tokens": max_tokens})


def test_reason_request_refuses_more_than_eight_stop_strings():
    with pytest.raises(ValidationError):
        ReasonRequest(prompt="Why?", stop=[str(i) for i in range(9)])


def test_reason_request_accepts_eight_stop_strings():
    assert len(ReasonRequest(prompt="Why?", stop=[str(i) for i in range(8)]).stop) == 8


def test_reason_request_round_trips_through_json_dump():
    request = ReasonRequest(prompt="Why?", system="Be brief.", temperature=0.0, stop=["\n"])
    assert ReasonRequest.model_validate(request.model_dump(mode="json")) == request
