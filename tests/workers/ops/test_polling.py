"""The one polling loop `up` and the local stack wait with."""

from __future__ import annotations

import pytest

from athena_inference.workers.ops.polling import GoneWhileWaiting, poll_until


def test_an_error_from_the_check_is_not_ready_yet_and_the_wait_goes_on():
    answers = iter([ConnectionError("loading"), False, True])

    def check():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert poll_until(check, timeout=5, interval=0.01) is True


def test_a_check_that_never_holds_is_false_after_the_timeout():
    assert poll_until(lambda: False, timeout=0.05, interval=0.01) is False


def test_what_stopped_while_it_was_waited_on_ends_the_wait_at_once():
    with pytest.raises(GoneWhileWaiting):
        poll_until(lambda: False, timeout=60, interval=0.01, alive=lambda: False)
