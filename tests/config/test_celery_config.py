"""celery_config(settings): serialisation, acks, prefetch, queues, routing, time limits;
and JSON only, as a real worker of the session's stack applies it."""

import pickle

import pytest
from kombu import Connection

from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import TASK_QUEUES, Queue, TaskName, queue_for
from athena_inference.config.celery import celery_config, make_celery
from athena_inference.config.settings import load_settings


pytestmark = pytest.mark.usefixtures("clean_settings_env")


@pytest.fixture
def settings():
    return load_settings(
        embed_time_limit_s=120,
        reason_time_limit_s=900,
        compression_time_limit_s=450,
        consolidation_time_limit_s=3000,
        visibility_timeout_s=4000,
    )


@pytest.fixture
def config(settings):
    return celery_config(settings)


def test_only_json_is_accepted_and_produced(config):
    assert config["accept_content"] == ["json"]
    assert config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == "json"
    assert config["result_serializer"] == "json"


def test_tasks_are_acked_late_and_requeued_when_worker_is_lost(config):
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True


def test_each_worker_process_prefetches_one_task(config):
    assert config["worker_prefetch_multiplier"] == 1


def test_visibility_timeout_comes_from_settings(config, settings):
    assert config["broker_transport_options"]["visibility_timeout"] == settings.visibility_timeout_s == 4000


def test_result_expiry_comes_from_settings(config, settings):
    assert config["result_expires"] == settings.result_expires_s


def test_every_task_name_is_routed_to_its_queue(config):
    routes = config["task_routes"]
    assert set(routes) == {name.value for name in TaskName}
    for name in TaskName:
        assert routes[name.value] == {"queue": TASK_QUEUES[name].value}


def test_every_routed_queue_is_declared(config):
    declared = {q.name for q in config["task_queues"]}
    assert {route["queue"] for route in config["task_routes"].values()} <= declared


def test_hard_time_limit_per_task_comes_from_its_queue_setting(config):
    annotations = config["task_annotations"]
    expected = {
        TaskName.EMBED: 120,
        TaskName.EMBED_BATCH: 120,
        TaskName.REASON: 900,
        TaskName.COMPRESS_PROMPT: 450,
        TaskName.CONSOLIDATE: 3000,
        TaskName.EMBED_BULK: 120,
    }
    # A re-embedding job runs for hours; its lease, not a time limit, bounds it.
    assert set(annotations) == {name.value for name in TaskName} - {TaskName.REEMBED.value}
    for name, limit in expected.items():
        assert annotations[name.value]["time_limit"] == limit


def test_soft_time_limit_fires_before_hard_time_limit(config):
    for name in set(TaskName) - {TaskName.REEMBED}:
        limits = config["task_annotations"][name.value]
        assert 1 <= limits["soft_time_limit"] < limits["time_limit"]


def test_soft_time_limit_is_ten_percent_earlier(config):
    assert config["task_annotations"][TaskName.REASON.value]["soft_time_limit"] == 810
    assert config["task_annotations"][TaskName.EMBED.value]["soft_time_limit"] == 108


@pytest.mark.parametrize("limit", [1, 2, 5, 10])
def test_soft_time_limit_stays_below_hard_limit_for_tiny_limits(limit):
    config = celery_config(load_settings(embed_time_limit_s=limit))
    limits = config["task_annotations"][TaskName.EMBED.value]
    assert limits["soft_time_limit"] < limits["time_limit"] == limit


def test_task_events_are_on(config):
    assert config["task_send_sent_event"] is True
    assert config["worker_send_task_events"] is True
    # A STARTED state in the result backend would cost every task a write before it runs.
    assert not config.get("task_track_started", False)


def test_a_result_stores_no_second_copy_of_the_tasks_inputs(config):
    assert not config.get("result_extended", False)


def test_results_expire_after_the_setting():
    assert celery_config(load_settings(result_expires_s=120))["result_expires"] == 120


def test_module_app_is_configured_with_celery_config():
    from athena_inference.config.celery import app

    assert app.conf.accept_content == ["json"]
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1


# --- athena_client.contract.routes ---


def test_every_task_name_has_a_queue():
    assert set(TASK_QUEUES) == set(TaskName)


@pytest.mark.parametrize("name", list(TaskName))
def test_queue_for_known_task_returns_its_queue(name):
    assert queue_for(name.value) is TASK_QUEUES[name]


def test_queue_for_embed_is_embeddings_queue():
    assert queue_for("athena.embed") is Queue.EMBEDDINGS
    assert queue_for("athena.reason") is Queue.REASONING


def test_queue_for_unknown_task_raises_key_error_naming_known_tasks():
    with pytest.raises(KeyError) as caught:
        queue_for("athena.summarise")
    message = str(caught.value)
    assert "athena.summarise" in message
    for name in TaskName:
        assert name.value in message


# --- a Redis restart ---


def test_workers_retry_the_broker_for_as_long_as_it_takes(config):
    assert config["broker_connection_max_retries"] is None


def test_a_result_finished_while_redis_is_away_is_stored_once_it_is_back(config):
    assert config["result_backend_always_retry"] is True
    assert config["result_backend_max_retries"] > 0


def test_sending_a_task_waits_out_a_restart_of_several_seconds(config):
    policy = config["task_publish_retry_policy"]
    waited = sum(min(policy["interval_start"] + n * policy["interval_step"], policy["interval_max"]) for n in range(policy["max_retries"]))
    assert waited >= 30


def test_redis_urls_get_the_fixed_transport_under_their_own_scheme():
    from athena_client.shared_redis.redis_transport import Transport

    with make_celery(load_settings(broker_url="redis://127.0.0.1:6390/0")).connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.as_uri().startswith("redis://")


def test_the_client_waits_out_a_restart_as_the_workers_do():
    from athena_client.transport import TaskTransport

    transport = TaskTransport.connect("redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/1", timeout=1)
    assert transport.app.conf.result_backend_always_retry is True
    assert transport.app.conf.task_publish_retry_policy == celery_config(load_settings())["task_publish_retry_policy"]


def test_a_pickled_message_is_refused_by_a_real_worker_which_keeps_serving(sender, stack):
    task_id = "pickled-0001"
    with Connection(stack.env["ATHENA_BROKER_URL"]) as connection:
        producer = connection.Producer(serializer="pickle")
        producer.publish(
            pickle.dumps(((), {"text": "never run"}, {})),
            routing_key="embeddings",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"lang": "py", "task": TaskName.EMBED.value, "id": task_id, "root_id": task_id, "parent_id": None, "group": None},
        )
    # The worker stays up and keeps serving after the message it refused.
    assert sender.call(TaskName.EMBED, EmbedRequest(text="after the pickle")).dimension == 384
    assert sender.app.AsyncResult(task_id).state == "PENDING"
    log = next(p for p in stack.procs if p.name == "embeddings-worker-main").log_path.read_text()
    assert "ContentDisallowed" in log or "Refusing to deserialize" in log
