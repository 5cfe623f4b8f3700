"""A worker's task events reach Flower's channel a batch at a time, not a message each."""

from __future__ import annotations

import pytest
import redis

from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import TaskName

pytestmark = pytest.mark.integration


def publishes(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)


def test_twenty_embeds_one_after_another_publish_their_results_and_a_few_event_messages(sender, stack):
    client = redis.Redis.from_url(stack.env["ATHENA_BROKER_URL"])
    before = publishes(client)
    for i in range(20):
        sender.call(TaskName.EMBED, EmbedRequest(text=f"a memory told one at a time ({i})"))
    # One PUBLISH per result; a task-received and a task-succeeded event each, unbatched, would add 40.
    assert publishes(client) - before <= 20 + 10
