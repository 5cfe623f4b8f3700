"""The health report as terminal text."""

from athena_client.contract.health import HealthReport, QueueHealth, ServerHealth
from athena_client.contract.payloads import CompressorStatus
from athena_inference.workers.ops.reports import health_lines


def report(server: ServerHealth) -> HealthReport:
    queue = QueueHealth(queue="embeddings", workers=["embeddings@a"]).with_server(server)
    return HealthReport(queues={"embeddings": queue}, compression=CompressorStatus(ready=True))


def test_a_ready_lane_shows_its_model_and_profile():
    lines = health_lines(report(ServerHealth(ready=True, detail="ok", model="nomic", profile="nomic-embed-text-v1.5")), ["embeddings"], "redis")
    assert "server: ready (nomic, profile nomic-embed-text-v1.5)" in lines[1]
    assert lines[-1] == "healthy"


def test_a_lane_serving_another_model_than_its_profile_says_why_not_its_model():
    seen = ServerHealth(ready=False, detail="m returned [384]-dimensional vectors but its profile p makes 768", model="m")
    lines = health_lines(report(seen), ["embeddings"], "redis")
    assert "NOT READY (m returned [384]-dimensional vectors but its profile p makes 768)" in lines[1]
    assert lines[-1] == "UNHEALTHY"
