"""No path embeds without the seam: every task that embeds, found in the code, goes through `Embedder`."""

from __future__ import annotations

import ast
import inspect
import time
from pathlib import Path

import httpx
import pytest

from athena_client.contract.consolidation import Pattern
from athena_client.contract.errors import DimensionMismatch
from athena_client.contract.routes import SERVER_HEALTH, Queue, TaskName
from athena_inference.tasks import seams
from athena_inference.config.celery import app
from athena_inference.config.registry import lane_of
from athena_inference.config.servers import EMBEDDING_QUEUES
from athena_inference.tasks.consolidation.stages import ConsolidationState, embed_stage
from athena_inference.tasks.health import HEALTH_TASKS
from athena_inference.workers.ops.sample_payloads import valid_payloads
from athena_inference.workers import embedder as embedder_module
from athena_inference.workers.llama_server import LlamaServer
from tests.embedding_fakes import WordServer

ROOT = Path(__file__).resolve().parents[2]
# The seam itself, the module it cuts long texts with, and the server seam that defines `embed`.
SEAM = {"workers/embedder.py", "workers/long_texts.py", "workers/llama_server.py"}
# seams.py hands the interactive server's `embed` to the coalescer, which only an Embedder calls (`via`).
HANDS_ON_TO_THE_SEAM = {"tasks/seams.py"}
# A health check embeds a probe, to see that the server makes the profile's size
# (tasks/health.py makes one for every embedding lane of the registry).
HEALTH = {SERVER_HEALTH[queue] for queue in EMBEDDING_QUEUES}


def sources() -> dict[str, ast.Module]:
    files = [*ROOT.glob("tasks/**/*.py"), *ROOT.glob("workers/**/*.py")]
    return {str(f.relative_to(ROOT)): ast.parse(f.read_text()) for f in files}


def _is_embedder_call(node: ast.AST) -> bool:
    """`seams.embedder(...)` or `embedder(...)`."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "embedder") or (isinstance(func, ast.Name) and func.id == "embedder")


def _task_name(function: ast.FunctionDef) -> str | None:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", None) == "task":
            for keyword in decorator.keywords:
                if keyword.arg == "name":
                    # name=TaskName.X.value
                    return TaskName[keyword.value.value.attr].value  # type: ignore[attr-defined]
    return None


def tasks_that_embed() -> set[TaskName]:
    """Every task whose body asks for an embedder, found in the code."""
    found = set()
    for tree in sources().values():
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef) and (name := _task_name(function)):
                if any(_is_embedder_call(node) for node in ast.walk(function)):
                    found.add(TaskName(name))
    return found


EMBEDDING_TASKS = tasks_that_embed()


def test_the_tasks_that_embed_are_found_in_the_code():
    assert {TaskName.EMBED, TaskName.EMBED_BATCH, TaskName.EMBED_BULK, TaskName.CONSOLIDATE_EMBED} <= EMBEDDING_TASKS


def test_every_embedding_lanes_health_check_embeds_through_its_seam():
    source = ast.parse((ROOT / "tasks" / "health.py").read_text())
    health_body = next(node for node in ast.walk(source) if isinstance(node, ast.FunctionDef) and node.name == "health")
    assert any(_is_embedder_call(node) for node in ast.walk(health_body))
    assert {SERVER_HEALTH[queue] for queue in HEALTH_TASKS} >= HEALTH


def test_nothing_outside_the_seam_touches_a_servers_embed():
    strays = []
    for path, tree in sources().items():
        if path in SEAM or path in HANDS_ON_TO_THE_SEAM:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("embed", "embed_items") and not _is_embedder_call(node.value):
                strays.append(f"{path}:{node.lineno}")
    assert strays == []


@pytest.fixture
def through_the_seam(monkeypatch):
    """Every server embed, with whether an Embedder was on the stack when it was sent."""
    calls: list[bool] = []
    original = LlamaServer.embed
    seam_file = inspect.getsourcefile(embedder_module)

    def watched(self, texts):
        calls.append(any(frame.filename == seam_file for frame in inspect.stack()))
        return original(self, texts)

    monkeypatch.setattr(LlamaServer, "embed", watched)
    return calls


def use_word_server(queue: Queue, dimension: int = 384) -> WordServer:
    fake = WordServer(limit=64, dimension=dimension)
    seams.use_llama(queue, LlamaServer("http://fake", timeout=httpx.Timeout(1.0), transport=httpx.MockTransport(fake)))
    return fake


def consolidation_state() -> dict:
    pattern = Pattern(description="backups run nightly", type="fact", confidence=0.8, source_events=["e1"])
    return ConsolidationState(
        options={"embed_patterns": True}, event_ids=["e1"], event_text="[e1] backups", dropped_event_ids=[],
        patterns=[pattern], remaining=[], started_at=time.time(),
    ).model_dump(mode="json")


def run_with_its_sample(task: TaskName):
    """The task run in this process with its sample payload (the consolidation stage with a pattern to embed)."""
    payload = consolidation_state() if task is TaskName.CONSOLIDATE_EMBED else valid_payloads()[task]
    return lambda: app.tasks[task.value](**payload)


# Each task that embeds, and each embedding lane's health check, with the lane it embeds on.
RUNS = {task: (lane_of(task).queue, run_with_its_sample(task)) for task in EMBEDDING_TASKS | HEALTH}


@pytest.mark.parametrize("task", sorted(RUNS, key=lambda t: t.value))
def test_each_embedding_task_reaches_its_server_only_through_the_seam(metrics, through_the_seam, task):
    queue, run = RUNS[task]
    fake = use_word_server(queue)
    run()
    assert fake.embedded() and through_the_seam and all(through_the_seam)


@pytest.mark.parametrize("task", sorted(set(RUNS) - HEALTH, key=lambda t: t.value))
def test_each_embedding_task_refuses_vectors_of_the_wrong_size(metrics, task):
    queue, run = RUNS[task]
    use_word_server(queue, dimension=768)
    with pytest.raises(DimensionMismatch):
        run()


@pytest.mark.parametrize("task", sorted(HEALTH, key=lambda t: t.value))
def test_a_lane_whose_server_makes_another_size_is_not_healthy(metrics, task):
    queue, run = RUNS[task]
    use_word_server(queue, dimension=768)
    seen = run()
    assert not seen["ready"] and "profile all-MiniLM-L6-v2 makes 384" in seen["detail"]
    use_word_server(queue)
    assert run() == {"ready": True, "detail": "ok", "model": "fake", "profile": "all-MiniLM-L6-v2"}


def test_consolidation_says_what_made_its_pattern_embeddings(metrics):
    use_word_server(Queue.EMBEDDINGS)
    out = embed_stage(**consolidation_state())
    assert out["embedding_origin"] == {"model": "fake", "profile": "all-MiniLM-L6-v2", "purpose": "document", "prefix": "", "dimension": 384}
    assert len(Pattern.model_validate(out["patterns"][0]).embedding) == 384
