"""`athena-inference exporter` scraped over HTTP while the stack runs."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import Queue, TaskName
from tests.harness import CLI, wait_for


def test_the_exporter_serves_histograms_tokens_and_every_queue_depth(sender, stack):
    sender.wait(TaskName.EMBED, sender.send(TaskName.EMBED, EmbedRequest(text="scrape me")))
    exporter = stack.start("exporter", [*CLI, "exporter"])
    url = f"http://127.0.0.1:{stack.env['ATHENA_EXPORTER_PORT']}/metrics"
    try:
        wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, "exporter", 30, exporter)
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(url, timeout=5).text)}
    finally:
        exporter.stop()
    depths = {s.labels["queue"] for s in families["athena_queue_depth"].samples}
    assert depths == {queue.value for queue in Queue}
    counts = {s.labels["kind"]: s.value for s in families["athena_task_latency_seconds"].samples if s.name.endswith("_count")}
    assert counts["athena.embed"] >= 1
    assert any(s.labels["kind"] == "athena.embed" for s in families["athena_task_tokens"].samples)
