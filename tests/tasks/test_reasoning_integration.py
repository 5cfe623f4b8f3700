"""reason through a real worker and the real SmolLM2 instruct model."""

from __future__ import annotations

import pytest

from athena_client.contract.errors import InvalidInput
from athena_client.contract.payloads import ReasonRequest
from athena_client.contract.routes import TaskName


def test_reason_returns_text_with_token_counts_and_timings(sender):
    out = sender.call(
        TaskName.REASON,
        ReasonRequest(prompt="Name one colour of the sky.", system="Answer in a few words.", max_tokens=16, temperature=0.0),
    )
    assert out.text.strip()
    assert out.model == "SmolLM2-135M-Instruct"
    server = out.timing.server
    assert server.prompt_tokens > 0 and 0 < server.generated_tokens <= 16
    assert server.prompt_ms > 0 and server.generated_ms > 0 and server.tokens_per_second > 0
    assert out.timing.queue == "reasoning" and out.timing.queue_wait_ms is not None
    assert out.timing.run_ms >= server.request_ms


def test_stop_sequence_ends_generation(sender):
    out = sender.call(
        TaskName.REASON,
        ReasonRequest(prompt="Count from 1 to 20, separated by commas.", max_tokens=64, temperature=0.0, stop=["5"]),
    )
    assert "5" not in out.text and "6" not in out.text


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"prompt": "hi", "temperature": 5}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": "12"}, "max_tokens"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_reason_input_fails_with_invalid_input(sender, payload, fragment):
    pending = sender.app.send_task(TaskName.REASON.value, kwargs=payload, queue="reasoning")
    with pytest.raises(InvalidInput, match=fragment):
        pending.get(timeout=30)
