"""The one retry policy: exponential backoff, capped."""

import pytest
from pydantic import ValidationError

from athena_inference.config.retry import RetryPolicy


def test_retry_delay_doubles_from_backoff_and_is_capped():
    policy = RetryPolicy(attempts=8, backoff_s=0.5, backoff_max_s=3.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_a_cap_below_the_base_delay_is_refused():
    with pytest.raises(ValidationError, match="backoff_max_s"):
        RetryPolicy(backoff_s=2.0, backoff_max_s=1.0)
