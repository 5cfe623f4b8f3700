"""compress_prompt through real compression workers running LLMLingua on the default model."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

from athena_client.contract.errors import InvalidInput
from athena_client.contract.payloads import CompressionResult, CompressorStatus, CompressRequest
from athena_client.contract.routes import TaskName
from athena_client.sender import TaskSender
from athena_inference.workers.metrics import MetricsStore
from athena_inference.workers.ops.sample_payloads import INCIDENT_EVENTS, INCIDENT_MEMORY as MEMORY
from tests.harness import recorded, side_url
from tests.workers.compressor_fixtures import tiny_bert_classifier



def compress(sender: TaskSender, request: CompressRequest, timeout: float = 300) -> CompressionResult:
    pending = sender.app.send_task(TaskName.COMPRESS_PROMPT.value, kwargs=request.model_dump(mode="json"), queue="compression")
    return CompressionResult.model_validate(pending.get(timeout=timeout))


def test_compression_is_shorter_and_close_to_the_rate_asked(sender):
    out = compress(sender, CompressRequest(context=MEMORY, instruction="Summarise the incident.", rate=0.5))
    assert out.compressed and out.method == "perplexity" and out.tokenizer == "cl100k_base"
    assert out.compressed_tokens < out.original_tokens
    assert len(out.compressed_prompt) < len(MEMORY)
    assert abs(out.ratio - 0.5) <= 0.15 * 0.5
    assert out.tokens_saved == out.original_tokens - out.compressed_tokens > 0
    assert out.money_saved_usd == pytest.approx(out.tokens_saved * 3.0 / 1e6)


def test_tokens_and_money_saved_go_into_the_shared_metrics(sender, stack):
    compress(sender, CompressRequest(context=MEMORY, rate=0.5))
    stats = recorded(MetricsStore.from_url(side_url(stack.env)), TaskName.COMPRESS_PROMPT.value, lambda stats: stats.success >= 1)
    assert stats.totals["tokens_saved"] > 0 and stats.totals["money_saved_usd"] > 0


def test_second_identical_request_is_a_cache_hit(sender):
    request = CompressRequest(context=MEMORY, instruction="Summarise the incident.", rate=0.5)
    first = compress(sender, request)
    second = compress(sender, request)
    assert second.cache_hit
    assert second.compressed_prompt == first.compressed_prompt
    assert second.latency_ms < first.latency_ms or first.cache_hit


def test_force_tokens_survive_compression(sender):
    forced = ["PostgreSQL", "Maria", "214"]
    out = compress(sender, CompressRequest(context=MEMORY, rate=0.3, force_tokens=forced))
    assert out.compressed and out.ratio < 0.6
    for token in forced:
        assert out.compressed_prompt.count(token) == MEMORY.count(token)


def test_consolidation_events_compress_to_the_rate_keeping_every_event_id(sender):
    from athena_inference.tasks.consolidation.prompt import render_event

    # What a consolidation's compression stage sends: one line per event, each id forced.
    events = "\n".join(render_event(e) for e in INCIDENT_EVENTS)
    ids = [f"[{e.id}]" for e in INCIDENT_EVENTS]
    out = compress(sender, CompressRequest(context=events, rate=0.5, force_tokens=ids))
    assert out.compressed and abs(out.ratio - 0.5) <= 0.15 * 0.5
    for token in ids:
        assert out.compressed_prompt.count(token) == 1


def test_compressor_reports_ready_with_its_method(sender):
    pending = sender.app.send_task(TaskName.COMPRESSOR_STATUS.value, queue="compression")
    status = CompressorStatus.model_validate(pending.get(timeout=120))
    assert status.ready and status.method == "perplexity" and status.load_ms > 0


def test_compressor_is_loaded_once_per_worker_process_not_per_task(sender, stack):
    for rate in (0.6, 0.7):
        compress(sender, CompressRequest(context=MEMORY, rate=rate))
    log = next(p for p in stack.procs if p.name == "compression-worker-main").log_path.read_text()
    assert log.count("compressor ready: perplexity") == 1


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"context": ""}, "context"),
        ({"context": "text", "rate": 0}, "rate"),
        ({"context": "text", "rate": 1.5}, "rate"),
        ({"context": "text", "rate": 0.5, "target_tokens": 10}, "not both"),
    ],
)
def test_bad_compression_input_fails_with_invalid_input(sender, payload, fragment):
    pending = sender.app.send_task(TaskName.COMPRESS_PROMPT.value, kwargs=payload, queue="compression")
    with pytest.raises(InvalidInput, match=fragment):
        pending.get(timeout=120)


@contextlib.contextmanager
def side_worker(stack, node: str, extra_env: dict[str, str]) -> Iterator[TaskSender]:
    """A compression worker of its own under `extra_env`, on Redis databases of its own; stopped afterwards."""
    env = stack.isolated_env(**extra_env)
    worker = stack.worker("compression", node, env)
    sender = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
    try:
        stack.wait_for_workers(sender, {f"compression@{node}"})
        yield sender
    finally:
        sender.close()
        worker.stop()


def test_compression_works_with_the_network_unreachable(stack):
    nowhere = "http://127.0.0.1:9"
    offline = {"HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere, "ALL_PROXY": nowhere,
               "http_proxy": nowhere, "https_proxy": nowhere, "NO_PROXY": "", "no_proxy": ""}
    with side_worker(stack, "offline", offline) as sender:
        out = compress(sender, CompressRequest(context=MEMORY, rate=0.5))
    assert out.compressed and out.compressed_tokens < out.original_tokens


def test_missing_model_shows_in_status_and_result_not_as_a_crash(stack, tmp_path):
    missing = tmp_path / "no-such-model"
    with side_worker(stack, "nomodel", {"ATHENA_COMPRESSION_LM_PATH": str(missing)}) as sender:
        status = CompressorStatus.model_validate(
            sender.app.send_task(TaskName.COMPRESSOR_STATUS.value, queue="compression").get(timeout=60)
        )
        assert not status.ready and str(missing) in status.reason
        out = compress(sender, CompressRequest(context=MEMORY, instruction="Summarise.", rate=0.5))
    assert not out.compressed and str(missing) in out.reason
    assert out.compressed_prompt == "Summarise.\n\n" + MEMORY
    assert out.compressed_tokens == out.original_tokens and out.tokens_saved == 0


def test_llmlingua2_worker_returns_instruction_and_question_whole_and_counts_what_it_returns(stack, tmp_path):
    # A tiny random classifier (plumbing, not quality), in a folder named for the other family.
    folder = tiny_bert_classifier(tmp_path / "llmlingua-2-xlm-roberta-large-meetingbank", MEMORY)
    llmlingua2 = {"ATHENA_COMPRESSION_METHOD": "llmlingua2", "ATHENA_COMPRESSION_LLMLINGUA2_MODEL": str(folder)}
    request = CompressRequest(context=MEMORY, instruction="Summarise the incident.", question="What was the real defect?", rate=0.5)
    with side_worker(stack, "llmlingua2", llmlingua2) as sender:
        out = compress(sender, request)
    assert out.compressed and out.method == "llmlingua2", out.reason
    assert out.compressed_prompt.startswith("Summarise the incident.\n\n")
    assert out.compressed_prompt.endswith("\n\nWhat was the real defect?")
    assert out.ratio == out.compressed_tokens / out.original_tokens and abs(out.ratio - 0.5) <= 0.15 * 0.5
