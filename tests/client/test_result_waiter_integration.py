"""ResultWaiter against a real redis-server, with results stored the way a worker stores them
(Celery's Redis backend: SET, then PUBLISH on the key's channel)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from celery import Celery, states

from athena_client import result_waiter
from athena_client.contract.errors import InvalidInput
from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import TaskName
from athena_client.result_waiter import ResultWaiter, WaitTimedOut
from athena_client.transport import TaskTransport
from athena_inference.workers.ops.provision import redis_server_binary
from tests.harness import free_port, wait_for

pytestmark = pytest.mark.integration


class RedisServer:
    """A redis-server of the test's own, which it can stop and start again with its data."""

    def __init__(self, workdir) -> None:
        self.port, self.workdir = free_port(), workdir
        self.client = redis.Redis(port=self.port)
        self.start()

    def start(self) -> None:
        argv = [str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.client.ping, f"redis on {self.port}", 30)

    def restart_with_data(self, down_s: float) -> None:
        try:
            self.client.shutdown(save=True)
        except redis.ConnectionError:
            pass  # it closes the connection as it exits
        self.proc.wait(30)
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def server(tmp_path):
    started = RedisServer(tmp_path)
    yield started
    started.stop()


@pytest.fixture
def backend(server):
    app = Celery("waiter-test", backend=f"redis://127.0.0.1:{server.port}/1", set_as_current=False)
    app.conf.update(result_serializer="json", accept_content=["json"], result_accept_content=["json"])
    yield app.backend
    app.close()


@pytest.fixture
def waiter(backend):
    made = ResultWaiter.for_backend(backend)
    yield made
    made.close()


def new_id() -> str:
    return str(uuid.uuid4())


def subscribers(backend, task_id: str) -> int:
    key = backend.get_key_for_task(task_id)
    return dict(backend.client.pubsub_numsub(key))[key.encode() if isinstance(key, str) else key]


def test_a_result_stored_before_the_wait_is_read(backend, waiter):
    task_id = new_id()
    backend.store_result(task_id, {"answer": 1}, states.SUCCESS)
    meta = waiter.wait(waiter.expect(task_id), timeout=5)
    assert meta["status"] == states.SUCCESS and meta["result"] == {"answer": 1}


def test_a_result_stored_during_the_wait_wakes_only_its_waiter(backend, waiter):
    first, second = new_id(), new_id()
    tickets = {task_id: waiter.expect(task_id) for task_id in (first, second)}
    threading.Timer(0.2, backend.store_result, (first, "first's", states.SUCCESS)).start()
    assert waiter.wait(tickets[first], timeout=5)["result"] == "first's"
    with pytest.raises(WaitTimedOut):
        waiter.wait(tickets[second], timeout=0.3)
    assert subscribers(backend, first) == 0 and subscribers(backend, second) == 0


def test_a_retry_state_is_not_final(backend, waiter):
    task_id = new_id()
    ticket = waiter.expect(task_id)
    backend.store_result(task_id, None, states.RETRY)
    threading.Timer(0.3, backend.store_result, (task_id, "done", states.SUCCESS)).start()
    meta = waiter.wait(ticket, timeout=5)
    assert meta["status"] == states.SUCCESS and meta["result"] == "done"


def test_a_tasks_error_comes_back_as_its_own_class(backend, waiter):
    task_id = new_id()
    ticket = waiter.expect(task_id)
    backend.mark_as_failure(task_id, InvalidInput("text is empty"))
    meta = waiter.wait(ticket, timeout=5)
    assert meta["status"] == states.FAILURE
    assert isinstance(meta["result"], InvalidInput) and str(meta["result"]) == "text is empty"


def test_many_threads_each_get_their_own_result_over_one_connection(backend, waiter):
    ids = [new_id() for _ in range(200)]

    def wait_one(task_id: str):
        return waiter.wait(waiter.expect(task_id), timeout=20)["result"]

    with ThreadPoolExecutor(64) as pool:
        waits = [pool.submit(wait_one, task_id) for task_id in ids]
        for i, task_id in enumerate(ids):
            backend.store_result(task_id, i, states.SUCCESS)
        assert [w.result() for w in waits] == list(range(200))
    clients = backend.client.client_list(_type="pubsub")
    assert len(clients) == 1, clients


def test_two_waiters_on_one_task_both_get_it(backend, waiter):
    task_id = new_id()
    tickets = [waiter.expect(task_id), waiter.expect(task_id)]
    threading.Timer(0.2, backend.store_result, (task_id, "shared", states.SUCCESS)).start()
    with ThreadPoolExecutor(2) as pool:
        assert [m["result"] for m in pool.map(lambda t: waiter.wait(t, timeout=5), tickets)] == ["shared", "shared"]


def key_commands(server) -> dict[str, int]:
    stats = server.client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("subscribe", "unsubscribe", "get")}


def test_the_tasks_this_process_sends_are_heard_through_one_pattern_without_a_command_each(server, backend, waiter):
    first = waiter.task_id()
    threading.Timer(0.1, backend.store_result, (first, "first", states.SUCCESS)).start()
    assert waiter.wait(waiter.expect(first, not_sent_yet=True), timeout=5)["result"] == "first"
    before = key_commands(server)
    ids = [waiter.task_id() for _ in range(50)]
    tickets = [waiter.expect(task_id, not_sent_yet=True) for task_id in ids]
    for i, task_id in enumerate(ids):
        backend.store_result(task_id, i, states.SUCCESS)
    assert [waiter.wait(ticket, timeout=5)["result"] for ticket in tickets] == list(range(50))
    after = key_commands(server)
    assert (after["subscribe"], after["unsubscribe"]) == (before["subscribe"], before["unsubscribe"])
    # Celery's backend reads each key once before storing it; the waiter read none.
    assert after["get"] - before["get"] == 50
    prefix = "-".join(ids[0].split("-")[:2]) + "-"
    assert prefix.startswith("athena-") and all(task_id.startswith(prefix) for task_id in ids)


def test_an_own_id_whose_result_came_before_the_wait_is_read_from_its_key(backend, waiter):
    # Fire and forget, fetched later: the result was published while nobody waited for it.
    waiter.release(waiter.expect(new_id()))
    task_id = waiter.task_id()
    backend.store_result(task_id, "stored first", states.SUCCESS)
    assert waiter.wait(waiter.expect(task_id), timeout=5)["result"] == "stored first"


def test_an_own_result_published_while_the_waiter_was_cut_off_is_read_after_redis_restarts(server, backend, waiter):
    task_id = waiter.task_id()
    waiting, outcome = wait_in_background(waiter, task_id, not_sent_yet=True)
    time.sleep(0.3)
    backend.client.set(backend.get_key_for_task(task_id), backend.encode(
        {"status": states.SUCCESS, "result": "kept", "traceback": None, "children": [], "task_id": task_id}))
    server.restart_with_data(down_s=1.5)
    waiting.join(30)
    assert outcome["meta"]["result"] == "kept"


def test_a_forked_child_gets_ids_of_its_own(waiter):
    import os

    reader, writer = os.pipe()
    parent_id = waiter.task_id()
    child = os.fork()
    if child == 0:
        os.write(writer, waiter.task_id().encode())
        os._exit(0)
    os.waitpid(child, 0)
    child_id = os.read(reader, 200).decode()
    assert child_id.split("-")[1] != parent_id.split("-")[1]


def wait_in_background(waiter: ResultWaiter, task_id: str, *, not_sent_yet: bool = False) -> tuple[threading.Thread, dict]:
    """A thread waiting on `task_id`'s result, and where its meta lands."""
    ticket = waiter.expect(task_id, not_sent_yet=not_sent_yet)
    outcome: dict = {}
    waiting = threading.Thread(target=lambda: outcome.update(meta=waiter.wait(ticket, timeout=60)))
    waiting.start()
    return waiting, outcome


def test_a_result_stored_unseen_while_the_waiter_was_cut_off_is_read_after_redis_restarts(server, backend, waiter):
    task_id = new_id()
    waiting, outcome = wait_in_background(waiter, task_id)
    wait_for(lambda: subscribers(backend, task_id) == 1, "the waiter's subscription", 10)
    # Stored with no PUBLISH, as a result written while the waiter was not subscribed:
    # only the reading again after the reconnection can find it.
    backend.client.set(backend.get_key_for_task(task_id), backend.encode(
        {"status": states.SUCCESS, "result": "kept", "traceback": None, "children": [], "task_id": task_id}))
    server.restart_with_data(down_s=1.5)
    waiting.join(30)
    assert outcome["meta"]["result"] == "kept"


def test_a_result_published_after_redis_restarts_reaches_the_waiter(server, backend, waiter):
    task_id = new_id()
    waiting, outcome = wait_in_background(waiter, task_id)
    server.restart_with_data(down_s=1.5)
    wait_for(lambda: subscribers(backend, task_id) == 1, "the waiter's subscription again", 20)
    backend.store_result(task_id, "after", states.SUCCESS)
    waiting.join(30)
    assert outcome["meta"]["result"] == "after"


def test_a_wait_while_redis_is_away_times_out_as_asked(server, backend, waiter):
    server.stop()
    began = time.monotonic()
    with pytest.raises(WaitTimedOut):
        waiter.wait(waiter.expect(new_id()), timeout=1.0)
    assert time.monotonic() - began < 3
    server.start()


def test_close_wakes_the_listener_instead_of_waiting_out_its_read(backend, monkeypatch):
    monkeypatch.setattr(result_waiter, "READ_TIMEOUT_S", 30.0)
    made = ResultWaiter.for_backend(backend)
    made.release(made.expect(new_id()))
    listener = made._thread
    began = time.monotonic()
    made.close()
    assert time.monotonic() - began < 10
    assert listener is not None and not listener.is_alive()


def test_a_result_that_cannot_be_decoded_ends_the_wait_at_once_with_why(backend, waiter):
    task_id = new_id()
    ticket = waiter.expect(task_id)
    threading.Timer(0.2, backend.client.publish, (backend.get_key_for_task(task_id), b"{not json")).start()
    began = time.monotonic()
    meta = waiter.wait(ticket, timeout=30)
    assert time.monotonic() - began < 10
    assert meta["status"] == result_waiter.UNREADABLE and isinstance(meta["result"], Exception)


# --- the STARTED state a task declared with track_started stores (the reasoning task) ---


def started(backend, task_id: str) -> None:
    """What a worker stores before it runs a task declared with track_started."""
    backend.store_result(task_id, {"pid": 1, "hostname": "reasoning@test"}, states.STARTED)


def test_a_started_state_is_noted_and_the_wait_goes_on_for_the_result(backend, waiter):
    task_id = new_id()
    ticket = waiter.expect(task_id)
    threading.Timer(0.2, started, (backend, task_id)).start()
    assert waiter.wait_started(ticket, timeout=5)
    assert not ticket.done.is_set()
    threading.Timer(0.2, backend.store_result, (task_id, "done", states.SUCCESS)).start()
    assert waiter.wait(ticket, timeout=5)["result"] == "done"


def test_a_started_state_stored_before_the_wait_is_read(backend, waiter):
    task_id = new_id()
    started(backend, task_id)
    ticket = waiter.expect(task_id)
    assert waiter.wait_started(ticket, timeout=5)
    with pytest.raises(WaitTimedOut):
        waiter.wait(ticket, timeout=0.3)


def test_a_finished_task_counts_as_started_though_it_stored_no_started_state(backend, waiter):
    task_id = new_id()
    backend.store_result(task_id, "done", states.SUCCESS)
    assert waiter.wait_started(waiter.expect(task_id), timeout=5)


def test_a_task_that_never_starts_is_reported_after_the_time_given(waiter):
    ticket = waiter.expect(new_id())
    began = time.monotonic()
    assert not waiter.wait_started(ticket, timeout=0.4)
    assert time.monotonic() - began >= 0.4
    waiter.release(ticket)


def pubsub_commands(server) -> int:
    stats = server.client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("subscribe", "unsubscribe"))


def test_the_transport_subscribes_once_per_call_through_the_waiter_not_also_through_celery(server):
    # Celery's own result consumer subscribed to every sent task's channel as well, and
    # unsubscribed when its AsyncResult went: two Redis commands a call for nothing.
    url = f"redis://127.0.0.1:{server.port}"
    transport = TaskTransport.connect(f"{url}/0", f"{url}/1", timeout=10)
    try:
        backend = transport.app.backend
        before = pubsub_commands(server)
        submitted = transport.submit(TaskName.EMBED, EmbedRequest(text="a lighthouse"))
        assert server.client.llen("embeddings") == 1
        assert pubsub_commands(server) == before
        ticket = transport.waiter.expect(submitted)
        wait_for(lambda: subscribers(backend, submitted) == 1, "the waiter's subscription", 10)
        backend.mark_as_failure(submitted, InvalidInput("the worker refused it"))
        with pytest.raises(InvalidInput, match="refused"):
            transport._read(TaskName.EMBED, submitted, ticket, 10, keep=False)
        assert subscribers(backend, submitted) == 0
    finally:
        transport.close()
