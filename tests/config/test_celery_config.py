"""celery_config(settings): serialisation, acks, prefetch, queues, routing, time limits."""


import pytest

from athena_client.routes import TASK_QUEUES, Queue, TaskName, queue_for
from athena_inference.config.celery import celery_config, time_limits
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


def test_one_queue_per_kind_plus_the_bulk_lane_and_jobs(config):
    names = [q.name for q in config["task_queues"]]
    assert sorted(names) == sorted(["embeddings", "reasoning", "compression", "consolidation", "embeddings_bulk", "jobs"])
    for queue in config["task_queues"]:
        assert queue.routing_key == queue.name


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


def test_time_limits_map_each_queue_to_its_setting(settings):
    assert time_limits(settings) == {
        Queue.EMBEDDINGS: 120,
        Queue.REASONING: 900,
        Queue.COMPRESSION: 450,
        Queue.CONSOLIDATION: 3000,
        Queue.EMBEDDINGS_BULK: 120,
    }


def test_task_events_and_extended_results_are_on(config):
    assert config["task_send_sent_event"] is True
    assert config["worker_send_task_events"] is True
    assert config["result_extended"] is True
    assert config["task_track_started"] is True


def test_module_app_is_configured_with_celery_config():
    from athena_inference.config.celery import app

    assert app.conf.accept_content == ["json"]
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1


# --- athena_client.routes ---


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
