"""One llama-server's settings as one value, read the same by the tasks and the process builder."""

import pytest

from athena_client.routes import Queue
from athena_inference.config.servers import MODEL_ALIASES, server_config
from athena_inference.config.settings import load_settings

pytestmark = pytest.mark.usefixtures("clean_settings_env")


def test_each_server_queue_gets_its_own_url_slots_priority_and_cpus():
    settings = load_settings(embeddings_slots=4, reasoning_nice=5, embeddings_bulk_cpus="1")
    assert server_config(Queue.EMBEDDINGS, settings).slots == 4
    assert server_config(Queue.REASONING, settings).nice == 5
    assert server_config(Queue.EMBEDDINGS_BULK, settings).cpus == "1"
    assert server_config(Queue.REASONING, settings).url == settings.reasoning_url


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
