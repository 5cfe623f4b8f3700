"""The fault suite's short form (bench/faults.py --short): every row, nothing lost.

One run of the whole suite against real processes (its own Redis, servers,
workers, and an `athena-inference up` of its own), then one check per row.
"""

from __future__ import annotations

import pytest

from bench.faults import SHORT, Row, run, table


@pytest.fixture(scope="module")
def rows(provisioned, tmp_path_factory) -> list[Row]:
    done = run(SHORT, tmp_path_factory.mktemp("faults"))
    print(table(done))
    return done


def row(rows: list[Row], starts: str) -> Row:
    return next(r for r in rows if r.fault.startswith(starts))


def test_pool_kills_lose_nothing(rows):
    kills = row(rows, "SIGKILL of a pool process")
    assert kills.figures["kills"] == SHORT["kills"], kills
    assert kills.sent > 0 and kills.lost == 0, kills
    assert kills.succeeded == kills.sent, kills


def test_every_task_across_a_server_restart_succeeds(rows):
    restart = row(rows, "embeddings server SIGKILLed")
    assert restart.sent > 0 and restart.lost == 0, restart
    assert restart.succeeded == restart.sent, restart


def test_redis_restart_loses_nothing_and_keeps_results(rows):
    restart = row(rows, "Redis restarted")
    assert restart.sent > 0 and restart.lost == 0, restart
    assert restart.succeeded == restart.sent, restart
    assert restart.figures["result_readable_after"] is True


def test_poison_task_fails_typed_after_three_deliveries(rows):
    poison = row(rows, "a task whose worker dies")
    assert poison.figures["deliveries_before_typed_failure"] == 3, poison
    assert poison.figures["result"] == "typed: PoisonMessage", poison


def test_malformed_payloads_all_typed_and_no_worker_lost(rows):
    malformed = row(rows, f"{SHORT['malformed']} malformed payloads")
    assert malformed.figures["invalid_input"] == SHORT["malformed"], malformed
    assert malformed.figures["untyped"] == 0 and malformed.lost == 0, malformed
    assert malformed.figures["worker_mains_lost"] == 0, malformed
    assert malformed.figures["workers_answering_after"] == 6, malformed


def test_sigterm_to_up_leaves_no_process(rows):
    up = row(rows, "SIGTERM to")
    assert up.figures["processes_started"] > 10, up
    assert up.figures["processes_left"] == 0 and up.figures["up_exit_code"] == 0, up
