"""Payload parsing fails as InvalidInput naming the model and every bad field."""

import pytest

from athena_client.contract.errors import InvalidInput
from athena_client.contract.payloads import EmbedBatchRequest, EmbedRequest, ReasonRequest
from athena_client.contract.validation import parse as validate


def test_validate_returns_the_parsed_request():
    request = validate(EmbedRequest, {"text": "hello"})
    assert isinstance(request, EmbedRequest)
    assert request.text == "hello"


def test_validate_blank_text_raises_invalid_input_naming_the_field():
    with pytest.raises(InvalidInput) as caught:
        validate(EmbedRequest, {"text": "   "})
    assert "text" in str(caught.value)
    assert "EmbedRequest" in str(caught.value)


def test_validate_out_of_range_temperature_names_temperature():
    with pytest.raises(InvalidInput, match="temperature"):
        validate(ReasonRequest, {"prompt": "Why?", "temperature": 5.0})


def test_validate_unknown_field_names_that_field():
    with pytest.raises(InvalidInput, match="colour"):
        validate(EmbedRequest, {"text": "hi", "colour": "blue"})


def test_validate_missing_field_names_that_field():
    with pytest.raises(InvalidInput, match="prompt"):
        validate(ReasonRequest, {})


def test_validate_names_the_position_of_a_bad_batch_item():
    with pytest.raises(InvalidInput, match=r"texts\.1"):
        validate(EmbedBatchRequest, {"texts": ["ok", ""]})


def test_validate_names_every_bad_field():
    with pytest.raises(InvalidInput) as caught:
        validate(ReasonRequest, {"prompt": "Why?", "max_tokens": 0, "top_p": 2.0})
    assert "max_tokens" in str(caught.value)
    assert "top_p" in str(caught.value)
