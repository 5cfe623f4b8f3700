"""CompressRequest: what a caller may ask of the compression queue."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from athena_client.contract.payloads import CompressRequest


def test_neither_rate_nor_target_keeps_half():
    assert CompressRequest(context="text").effective_rate == 0.5


def test_target_tokens_alone_has_no_rate():
    assert CompressRequest(context="text", target_tokens=100).effective_rate is None


@pytest.mark.parametrize("rate", [0, -0.1, 1.01, 2])
def test_rate_outside_zero_to_one_is_refused(rate):
    with pytest.raises(ValidationError, match="rate"):
        CompressRequest(context="text", rate=rate)


def test_rate_of_one_is_allowed():
    assert CompressRequest(context="text", rate=1).rate == 1.0


def test_rate_and_target_together_are_refused():
    with pytest.raises(ValidationError, match="not both"):
        CompressRequest(context="text", rate=0.5, target_tokens=10)


@pytest.mark.parametrize("context", ["", "  \n "])
def test_empty_context_is_refused(context):
    with pytest.raises(ValidationError, match="context"):
        CompressRequest(context=context)


def test_blank_force_token_is_refused():
    with pytest.raises(ValidationError, match="force_tokens"):
        CompressRequest(context="text", force_tokens=[" "])
