"""The table of queues, and what is read from it."""

from __future__ import annotations

import pytest

from athena_client.contract.routes import SERVER_HEALTH, TASK_QUEUES, Queue, TaskName
from athena_inference.config.celery import app, celery_config, time_limits
from athena_inference.config.registry import LANES, lane, lane_of, served, servers, task_modules
from athena_inference.config.servers import EMBEDDING_QUEUES, SERVER_QUEUES
from athena_inference.config.settings import load_settings


def test_every_queue_has_one_row_and_every_task_one_lane():
    assert [row.queue for row in LANES] == list(dict.fromkeys(row.queue for row in LANES))
    assert {row.queue for row in LANES} == set(Queue)
    assert sorted(task for row in LANES for task in row.tasks) == sorted(TaskName)


def test_each_lane_with_a_server_has_a_health_task_and_no_other_has():
    assert set(SERVER_HEALTH) == {row.queue for row in LANES if row.server} == set(SERVER_QUEUES)
    assert set(EMBEDDING_QUEUES) == {row.queue for row in LANES if row.embeds}
    assert servers() == [row.server for row in LANES if row.server]
    assert served("embeddings-bulk").queue is Queue.EMBEDDINGS_BULK
    with pytest.raises(KeyError, match=f"no lane serves 'nonesuch'; servers: {', '.join(servers())}"):
        served("nonesuch")


def test_one_spelling_per_lane_with_dashes_where_an_underscore_does_not_do():
    bulk = lane(Queue.EMBEDDINGS_BULK)
    assert (bulk.slug, bulk.worker_process, bulk.server_process) == ("embeddings-bulk", "embeddings-bulk-worker", "embeddings-bulk-server")


def test_every_task_the_workers_register_is_in_a_lanes_module_and_routed_to_its_lane():
    # What a worker imports at start: the app's `include`, from the table.
    app.loader.import_default_modules()
    registered = {name for name in app.tasks if name.startswith("athena.")}
    assert registered == {task.value for task in TaskName}
    for task in TaskName:
        module = app.tasks[task.value].__module__
        assert module in task_modules()
        assert app.conf.task_routes[task.value] == {"queue": lane_of(task).queue.value}


def test_celery_has_a_queue_per_lane_and_each_lanes_time_limit():
    settings = load_settings()
    config = celery_config(settings)
    assert [q.name for q in config["task_queues"]] == [row.queue.value for row in LANES]
    assert time_limits(settings) == {row.queue: getattr(settings, row.time_limit) for row in LANES if row.time_limit}
    for task in TaskName:
        limit = lane_of(task).time_limit_s(settings)
        assert config["task_annotations"].get(task.value, {}).get("time_limit") == limit
    # The jobs lane's tasks run for hours: no limit.
    assert TaskName.REEMBED.value not in config["task_annotations"]


def test_each_lane_retries_an_unavailable_server_for_its_own_budget():
    settings = load_settings(embed_retry_budget_s=11, reason_retry_budget_s=22)
    budgets = {row.queue: row.retry_budget_s(settings) for row in LANES}
    # Every embedding lane waits out its server for the embed budget, and what
    # waits on the reasoning server for the reasoning one; no server, no retries.
    assert all(budgets[row.queue] == 11 for row in LANES if row.embeds)
    assert budgets[Queue.REASONING] == budgets[Queue.CONSOLIDATION] == 22
    assert budgets[Queue.COMPRESSION] == budgets[Queue.JOBS] == 0


def test_the_interactive_embeddings_worker_pool_is_a_setting_and_the_rest_are_prefork():
    settings = load_settings(embeddings_pool="prefork")
    assert {row.queue: row.pool(settings) for row in LANES} == dict.fromkeys(Queue, "prefork")
    assert lane(Queue.EMBEDDINGS).pool(load_settings()) == "threads"


def test_the_contracts_routes_are_the_registrys():
    assert all(lane_of(task).queue is queue for task, queue in TASK_QUEUES.items())
