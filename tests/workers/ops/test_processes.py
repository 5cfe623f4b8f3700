"""The command lines of the stack's processes, and the Procfile that names them."""

import os
import sys
from pathlib import Path

import pytest

from athena_client.contract.routes import Queue
from athena_inference.config.settings import load_settings
from athena_inference.config.servers import MODEL_ALIASES, server_config
from athena_inference.workers.ops.processes import (
    flower_argv,
    host_port,
    llama_server_argv,
    procfile,
    server_cpus,
    worker_argv,
    worker_concurrency,
)

PROCFILE = Path(__file__).resolve().parents[3] / "Procfile"
BINARY = Path("/opt/llama/llama-server")
MODEL = Path("/models/model.gguf")


pytestmark = pytest.mark.usefixtures("clean_settings_env")


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("LLAMACPP_EMBEDDINGS_URL", "http://127.0.0.1:9101")
    monkeypatch.setenv("LLAMACPP_REASONING_URL", "http://127.0.0.1:9102")
    monkeypatch.setenv("LLAMACPP_N_THREADS", "3")
    monkeypatch.setenv("ATHENA_EMBEDDINGS_SLOTS", "4")
    monkeypatch.setenv("ATHENA_REASONING_SLOTS", "2")
    monkeypatch.setenv("ATHENA_EMBEDDING_MAX_TOKENS", "256")
    monkeypatch.setenv("ATHENA_REASONING_CTX", "2048")
    return load_settings()


def value_after(argv, flag):
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return argv[argv.index(flag) + 1]


# --- llama-server ---


def test_llama_server_argv_starts_with_binary_and_model(settings):
    argv = llama_server_argv(Queue.EMBEDDINGS, settings, BINARY, MODEL)
    assert argv[0] == str(BINARY)
    assert value_after(argv, "-m") == str(MODEL)


def test_embeddings_server_runs_in_embedding_mode_with_mean_pooling(settings):
    argv = llama_server_argv(Queue.EMBEDDINGS, settings, BINARY, MODEL)
    assert "--embedding" in argv
    assert value_after(argv, "--pooling") == "mean"


def test_each_embedding_server_pools_as_its_lanes_profile_says(monkeypatch, settings):
    # A migration: the bulk lane on bge (CLS pooling), search still on MiniLM (mean).
    monkeypatch.setenv("ATHENA_EMBEDDINGS_BULK_PROFILE", "bge-small-en-v1.5")
    monkeypatch.setenv("ATHENA_EMBEDDINGS_BULK_MODEL_PATH", "/models/bge-small.gguf")
    migrating = load_settings()
    assert value_after(llama_server_argv(Queue.EMBEDDINGS, migrating, BINARY, MODEL), "--pooling") == "mean"
    bulk = llama_server_argv(Queue.EMBEDDINGS_BULK, migrating, BINARY, MODEL)
    assert value_after(bulk, "--pooling") == "cls"
    # Its own model keeps its own name: the vectors are not recorded as MiniLM's.
    assert "--alias" not in bulk


def test_embeddings_server_batch_and_ubatch_equal_embedding_max_tokens(settings):
    argv = llama_server_argv(Queue.EMBEDDINGS, settings, BINARY, MODEL)
    assert value_after(argv, "-b") == "256"
    assert value_after(argv, "-ub") == "256"


def test_embeddings_server_slots_threads_and_context(settings):
    argv = llama_server_argv(Queue.EMBEDDINGS, settings, BINARY, MODEL)
    assert value_after(argv, "-np") == "4"
    assert value_after(argv, "-t") == "3"
    assert value_after(argv, "-c") == str(256 * 4)


@pytest.mark.parametrize("queue", [Queue.EMBEDDINGS_BULK, Queue.RERANK])
def test_an_embedding_server_with_one_slot_still_reads_texts_per_pass_texts_together(queue):
    one_request_at_a_time = load_settings(embedding_texts_per_pass=4, embedding_max_tokens=512)
    argv = llama_server_argv(queue, one_request_at_a_time, BINARY, MODEL)
    assert (value_after(argv, "-np"), value_after(argv, "-c")) == ("4", str(512 * 4))
    # The worker still sends one request per slot: the backlog waits in the broker.
    server = server_config(queue, one_request_at_a_time)
    assert worker_concurrency(queue, one_request_at_a_time) == server.slots * server.copies == server.copies


def test_a_reasoning_server_has_exactly_its_slots_whatever_texts_per_pass_says():
    argv = llama_server_argv(Queue.REASONING, load_settings(reasoning_slots=1, embedding_texts_per_pass=8), BINARY, MODEL)
    assert value_after(argv, "-np") == "1"


def test_embeddings_server_listens_on_port_from_llamacpp_embeddings_url(settings):
    argv = llama_server_argv(Queue.EMBEDDINGS, settings, BINARY, MODEL)
    assert value_after(argv, "--port") == "9101"
    assert value_after(argv, "--host") == "127.0.0.1"


def test_reasoning_server_context_is_per_slot_context_times_slots(settings):
    argv = llama_server_argv(Queue.REASONING, settings, BINARY, MODEL)
    assert value_after(argv, "-c") == str(2048 * 2)
    assert value_after(argv, "-np") == "2"
    assert value_after(argv, "-t") == "3"
    assert value_after(argv, "--port") == "9102"


def test_reasoning_server_is_not_in_embedding_mode(settings):
    argv = llama_server_argv(Queue.REASONING, settings, BINARY, MODEL)
    assert "--embedding" not in argv
    assert "--pooling" not in argv


def test_default_models_get_readable_alias(settings):
    assert value_after(llama_server_argv(Queue.EMBEDDINGS, settings, BINARY, MODEL), "--alias") == (
        MODEL_ALIASES[Queue.EMBEDDINGS]
    )
    assert value_after(llama_server_argv(Queue.REASONING, settings, BINARY, MODEL), "--alias") == (
        MODEL_ALIASES[Queue.REASONING]
    )


def test_custom_embedding_model_keeps_its_own_name(monkeypatch, settings):
    monkeypatch.setenv("ATHENA_EMBEDDINGS_MODEL_PATH", "/models/nomic.gguf")
    custom = load_settings()
    assert "--alias" not in llama_server_argv(Queue.EMBEDDINGS, custom, BINARY, MODEL)


def test_host_port_falls_back_to_default_port():
    assert host_port("http://example.internal", 80) == ("example.internal", 80)
    assert host_port("redis://127.0.0.1:6390/1", 6379) == ("127.0.0.1", 6390)


# --- celery workers ---


@pytest.mark.parametrize("queue, slots", [(Queue.EMBEDDINGS, "4"), (Queue.REASONING, "2")])
def test_a_prefork_workers_concurrency_equals_its_servers_slots(settings, queue, slots):
    argv = worker_argv(queue, settings.model_copy(update={"embeddings_pool": "prefork"}))
    assert value_after(argv, "-P") == "prefork"
    assert value_after(argv, "-c") == slots


def test_a_prefork_worker_replaces_its_children_by_memory_and_task_count(settings):
    argv = worker_argv(Queue.REASONING, settings)
    assert value_after(argv, "--max-memory-per-child") == str(settings.worker_max_memory_per_child_mb * 1024)
    assert value_after(argv, "--max-tasks-per-child") == str(settings.worker_max_tasks_per_child)


def test_the_threaded_embeddings_worker_runs_as_many_embeds_as_it_may_merge(settings):
    argv = worker_argv(Queue.EMBEDDINGS, settings.model_copy(update={"embed_coalesce_tasks": 24}))
    assert value_after(argv, "-P") == "threads"
    assert value_after(argv, "-c") == "24"
    # Threads have no child process to replace.
    assert "--max-memory-per-child" not in argv and "--max-tasks-per-child" not in argv


@pytest.mark.parametrize("queue", [Queue.REASONING, Queue.EMBEDDINGS_BULK, Queue.COMPRESSION, Queue.JOBS])
def test_every_other_worker_runs_a_prefork_pool(settings, queue):
    assert value_after(worker_argv(queue, settings), "-P") == "prefork"


@pytest.mark.parametrize("queue", [Queue.COMPRESSION, Queue.CONSOLIDATION])
def test_worker_for_queue_without_server_runs_one_process(settings, queue):
    assert worker_concurrency(queue, settings) == 1
    assert value_after(worker_argv(queue, settings), "-c") == "1"


@pytest.mark.parametrize("queue", list(Queue))
def test_worker_consumes_only_its_queue_with_task_events(settings, queue):
    argv = worker_argv(queue, settings)
    assert value_after(argv, "-Q") == queue.value
    assert "-E" in argv
    assert value_after(argv, "-A") == "athena_inference.config.celery"
    assert "worker" in argv


def test_worker_node_name_carries_queue(settings):
    argv = worker_argv(Queue.REASONING, settings, node_suffix="box1")
    assert value_after(argv, "-n") == "reasoning@box1"


def test_worker_runs_with_this_python(settings):
    assert worker_argv(Queue.EMBEDDINGS, settings)[:3] == [sys.executable, "-m", "celery"]


def test_flower_argv_uses_port_and_address(settings):
    argv = flower_argv(settings)
    assert f"--port={settings.flower_port}" in argv
    assert "--address=127.0.0.1" in argv


def test_flower_runs_through_our_launcher_with_this_python(settings):
    assert flower_argv(settings)[:3] == [sys.executable, "-m", "athena_inference.workers.ops.flower_app"]


@pytest.fixture
def launched_flower(monkeypatch):
    """Runs `athena-inference flower`'s launcher up to its exec; returns the argv it would exec."""
    from athena_inference.workers.ops import launch

    # Recorded by monkeypatch, so whatever the launcher sets is undone after the test.
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "left:over")
    execed: list[list[str]] = []
    monkeypatch.setattr(launch, "_exec", execed.append)

    def run() -> list[str]:
        launch.run_flower(load_settings())
        [argv] = execed
        return argv

    return run


def test_flower_password_is_in_the_launchers_environment_not_its_argv(monkeypatch, launched_flower):
    monkeypatch.setenv("ATHENA_FLOWER_BASIC_AUTH", "admin:s3cret-pw")
    argv = launched_flower()
    assert not [arg for arg in argv if "s3cret-pw" in arg]
    assert os.environ["FLOWER_BASIC_AUTH"] == "admin:s3cret-pw"


def test_flower_without_a_password_inherits_no_stray_login(monkeypatch, launched_flower):
    monkeypatch.setenv("ATHENA_FLOWER_UNAUTHENTICATED", "true")
    launched_flower()
    assert "FLOWER_BASIC_AUTH" not in os.environ


def test_flower_refuses_to_start_open_unless_told(clean_settings_env, capsys):
    from athena_inference.config.settings import get_settings
    from athena_inference.workers.ops.cli import main

    get_settings.cache_clear()
    try:
        assert main(["flower"]) == 2
    finally:
        get_settings.cache_clear()
    assert "ATHENA_FLOWER_UNAUTHENTICATED=true" in capsys.readouterr().err


# --- Procfile ---


def _procfile_entries():
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        entries[name.strip()] = command.strip()
    return entries


def test_the_checked_in_procfile_is_the_one_the_registry_makes():
    assert PROCFILE.read_text() == procfile()


@pytest.mark.parametrize("queue", list(Queue))
def test_procfile_has_a_worker_entry_for_every_queue_spelled_with_dashes(queue):
    entries = _procfile_entries()
    name = f"{queue.value.replace('_', '-')}-worker"
    assert entries[name].split()[-2:] == ["worker", queue.value]


@pytest.mark.parametrize("name", ["embeddings-server", "reasoning-server", "embeddings-bulk-server", "redis", "flower", "exporter"])
def test_procfile_has_servers_redis_and_flower(name):
    assert name in _procfile_entries()


def test_procfile_servers_serve_their_own_kind():
    entries = _procfile_entries()
    assert entries["embeddings-server"].endswith("serve embeddings")
    assert entries["reasoning-server"].endswith("serve reasoning")
    assert entries["embeddings-bulk-server"].endswith("serve embeddings-bulk")


def test_auto_pins_the_two_servers_to_separate_cpus():
    settings = load_settings()
    assert server_cpus(Queue.EMBEDDINGS, settings, [0, 1]) == {0}
    assert server_cpus(Queue.REASONING, settings, [0, 1]) == {1}


def test_auto_leaves_servers_unpinned_when_cpus_are_too_few():
    settings = load_settings(n_threads=2)
    assert server_cpus(Queue.EMBEDDINGS, settings, [0, 1, 2]) == set()


def test_the_bulk_server_floats_unless_pinned_by_a_list():
    assert server_cpus(Queue.EMBEDDINGS_BULK, load_settings(), [0, 1, 2, 3]) == set()
    assert server_cpus(Queue.EMBEDDINGS_BULK, load_settings(embeddings_bulk_cpus="3"), [0, 1, 2, 3]) == {3}


def test_explicit_cpu_lists_and_none_are_honoured():
    settings = load_settings(embeddings_cpus="0,2", reasoning_cpus="none")
    assert server_cpus(Queue.EMBEDDINGS, settings, [0, 1, 2, 3]) == {0, 2}
    assert server_cpus(Queue.REASONING, settings, [0, 1, 2, 3]) == set()


def test_the_bulk_server_serves_the_embedding_model_under_the_same_name(settings, monkeypatch):
    monkeypatch.setenv("ATHENA_EMBEDDINGS_BULK_URL", "http://127.0.0.1:9103")
    monkeypatch.setenv("ATHENA_EMBEDDINGS_BULK_SLOTS", "6")
    bulk = llama_server_argv(Queue.EMBEDDINGS_BULK, load_settings(), Path("/bin/llama-server"), Path("/m.gguf"))
    interactive = llama_server_argv(Queue.EMBEDDINGS, load_settings(), Path("/bin/llama-server"), Path("/m.gguf"))
    assert bulk[bulk.index("--port") + 1] == "9103"
    assert bulk[bulk.index("-np") + 1] == "6"
    assert bulk[bulk.index("--alias") + 1] == interactive[interactive.index("--alias") + 1]
    assert "--embedding" in bulk


# --- the bulk lane's copies ---


def test_each_bulk_copy_listens_on_its_own_port_with_the_same_model_and_settings(settings):
    lane = settings.model_copy(update={"embeddings_bulk_url": "http://127.0.0.1:9103", "embeddings_bulk_servers": 2})
    first = llama_server_argv(Queue.EMBEDDINGS_BULK, lane, BINARY, MODEL, 0)
    second = llama_server_argv(Queue.EMBEDDINGS_BULK, lane, BINARY, MODEL, 1)
    assert (value_after(first, "--port"), value_after(second, "--port")) == ("9103", "9104")
    assert [a for a in first if a != "9103"] == [a for a in second if a != "9104"]
    with pytest.raises(ValueError, match="has 2 copies; there is no copy 2"):
        llama_server_argv(Queue.EMBEDDINGS_BULK, lane, BINARY, MODEL, 2)


def test_the_bulk_worker_runs_a_task_per_slot_of_every_copy(settings):
    lane = settings.model_copy(update={"embeddings_bulk_servers": 3, "embeddings_bulk_slots": 2})
    assert worker_concurrency(Queue.EMBEDDINGS_BULK, lane) == 6
    assert value_after(worker_argv(Queue.EMBEDDINGS_BULK, lane), "-c") == "6"


def test_the_embeddings_worker_logs_no_line_per_task_and_the_slower_lanes_do():
    settings = load_settings()
    assert value_after(worker_argv(Queue.EMBEDDINGS, settings), "--loglevel") == "WARNING"
    assert value_after(worker_argv(Queue.REASONING, settings), "--loglevel") == "INFO"
    assert value_after(worker_argv(Queue.EMBEDDINGS_BULK, settings), "--loglevel") == "INFO"


@pytest.mark.parametrize("queue", [Queue.EMBEDDINGS, Queue.EMBEDDINGS_BULK, Queue.RERANK])
def test_an_embedding_server_logs_warnings_and_errors_only(queue):
    assert value_after(llama_server_argv(queue, load_settings(), BINARY, MODEL), "--log-verbosity") == "2"
    assert "--log-verbosity" not in llama_server_argv(Queue.REASONING, load_settings(), BINARY, MODEL)


@pytest.mark.parametrize(("server_slots", "warned"), [(4, False), (2, False), (1, True)])
def test_a_worker_warns_only_when_its_server_has_fewer_slots_than_it_has_requests_out(monkeypatch, capsys, server_slots, warned):
    from athena_inference.workers.ops import launch

    monkeypatch.setattr(launch.LlamaServer, "slots", lambda self: server_slots)
    launch._warn_if_server_has_fewer_slots(Queue.EMBEDDINGS, load_settings(embeddings_slots=2))
    assert ("sends up to 2 requests at once" in capsys.readouterr().err) is warned


@pytest.mark.parametrize(("queue", "nice"), [(Queue.EMBEDDINGS, 0), (Queue.REASONING, 0), (Queue.EMBEDDINGS_BULK, 10), (Queue.JOBS, 10)])
def test_a_background_lanes_worker_gives_way_to_the_interactive_ones(monkeypatch, queue, nice):
    from athena_inference.workers.ops import launch

    niced: list[int] = []
    monkeypatch.setattr(launch.os, "nice", niced.append)
    monkeypatch.setattr(launch, "_exec", lambda argv: None)
    monkeypatch.setattr(launch, "_warn_if_server_has_fewer_slots", lambda queue, settings: None)
    monkeypatch.setenv("ATHENA_WORKER_QUEUE", "")
    launch.run_worker(queue, load_settings(), "test")
    assert niced == [nice]
