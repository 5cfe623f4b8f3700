"""One llama-server's settings as one value, read the same by the tasks and the process builder."""

import pytest

from athena_client.contract.errors import ConfigurationError
from athena_client.contract.routes import Queue
from athena_inference.config.servers import MODEL_ALIASES, copy_url, server_config
from athena_inference.config.settings import MAX_AUTO_BULK_SERVERS, load_settings

pytestmark = pytest.mark.usefixtures("clean_settings_env")


def test_each_server_queue_gets_its_own_url_slots_priority_and_cpus():
    settings = load_settings(embeddings_slots=4, reasoning_nice=5, embeddings_bulk_cpus="1")
    assert server_config(Queue.EMBEDDINGS, settings).slots == 4
    assert server_config(Queue.REASONING, settings).nice == 5
    assert server_config(Queue.EMBEDDINGS_BULK, settings).cpus == "1"
    assert server_config(Queue.REASONING, settings).url == settings.reasoning_url


def test_only_the_bulk_servers_run_under_the_idle_policy_and_only_while_asked():
    settings = load_settings()
    assert [server_config(q, settings).idle for q in (Queue.EMBEDDINGS, Queue.REASONING, Queue.EMBEDDINGS_BULK)] == [False, False, True]
    assert not server_config(Queue.EMBEDDINGS_BULK, load_settings(embeddings_bulk_idle=False)).idle


def test_threads_fall_back_to_llamacpp_n_threads_unless_set_per_server():
    settings = load_settings(n_threads=3, embeddings_bulk_threads=2)
    assert server_config(Queue.EMBEDDINGS, settings).threads == 3
    assert server_config(Queue.EMBEDDINGS_BULK, settings).threads == 2


def test_embedding_servers_use_the_embed_timeout_and_reasoning_its_own():
    settings = load_settings(embed_timeout_s=7, reason_timeout_s=70)
    assert server_config(Queue.EMBEDDINGS_BULK, settings).read_timeout_s == 7
    assert server_config(Queue.REASONING, settings).read_timeout_s == 70


def test_default_models_get_their_alias_and_a_custom_model_keeps_its_name():
    assert server_config(Queue.EMBEDDINGS, load_settings()).alias == MODEL_ALIASES[Queue.EMBEDDINGS]
    custom = load_settings(embeddings_model_path="/models/nomic.gguf")
    assert server_config(Queue.EMBEDDINGS, custom).alias is None
    assert server_config(Queue.REASONING, custom).alias == MODEL_ALIASES[Queue.REASONING]


@pytest.mark.parametrize("queue", [Queue.COMPRESSION, Queue.CONSOLIDATION, Queue.JOBS])
def test_a_queue_without_a_server_is_a_clear_key_error(queue):
    with pytest.raises(KeyError, match="fronts no llama-server"):
        server_config(queue, load_settings())


def test_the_bulk_lane_has_one_copy_per_cpu_over_its_threads_at_most_eight(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(6)))
    assert load_settings().embeddings_bulk_copies == 6
    assert load_settings(embeddings_bulk_threads=2).embeddings_bulk_copies == 3
    assert load_settings(n_threads=4).embeddings_bulk_copies == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert load_settings().embeddings_bulk_copies == MAX_AUTO_BULK_SERVERS
    assert load_settings(embeddings_bulk_servers=12).embeddings_bulk_copies == 12


def test_a_bulk_server_on_another_host_is_one_server_unless_told_otherwise():
    assert load_settings(embeddings_bulk_url="http://bulk.internal:8003").embeddings_bulk_copies == 1
    assert load_settings(embeddings_bulk_url="http://bulk.internal:8003", embeddings_bulk_servers=3).embeddings_bulk_copies == 3


def test_a_bulk_lane_on_the_embeddings_server_is_that_one_server():
    settings = load_settings(embeddings_bulk_url="http://127.0.0.1:8001", embeddings_bulk_servers=4)
    assert server_config(Queue.EMBEDDINGS_BULK, settings).urls == ("http://127.0.0.1:8001",)


def test_bulk_copies_listen_on_consecutive_ports_and_other_servers_have_one():
    settings = load_settings(embeddings_bulk_url="http://127.0.0.1:9003", embeddings_bulk_servers=3)
    assert server_config(Queue.EMBEDDINGS_BULK, settings).urls == (
        "http://127.0.0.1:9003", "http://127.0.0.1:9004", "http://127.0.0.1:9005",
    )
    assert server_config(Queue.EMBEDDINGS, settings).urls == (settings.embeddings_url,)


def test_copy_urls_keep_scheme_path_and_ipv6_hosts():
    assert copy_url("https://bulk.internal", 2) == "https://bulk.internal:445"
    assert copy_url("http://[::1]:8003", 1) == "http://[::1]:8004"
    assert copy_url("http://h:8003", 0) == "http://h:8003"


def test_bulk_copies_that_would_take_another_servers_port_are_refused_by_name():
    with pytest.raises(ConfigurationError, match=r"ports 8003-8006.*LLAMACPP_REASONING_URL is on port 8005"):
        load_settings(reasoning_url="http://127.0.0.1:8005", embeddings_bulk_servers=4)
    with pytest.raises(ConfigurationError, match="past 65535"):
        load_settings(embeddings_bulk_url="http://127.0.0.1:65535", embeddings_bulk_servers=2)
