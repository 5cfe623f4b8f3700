"""Flower as `athena-inference flower` runs it, against real workers.

Every page, API route and /metrics asks for the password, /healthcheck alone is
open, and no command line carries the password. In a real headless Chromium:
the Broker page's first view lists every queue with its depth, the Workers page
each queue's worker, and a finished task its result and our timing.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Optional

import httpx
import pytest

from athena_client.contract.payloads import EmbedRequest, ReasonRequest
from athena_client.contract.routes import Queue, TaskName
from athena_client.sender import TaskSender
from tests.harness import ALL_QUEUES, CLI, Proc, Stack, free_port, wait_for

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
USER, PASSWORD = "athena", "flower-test-password"
LOGIN = (USER, PASSWORD)
# Workers of our app on queues of their own, for the control routes to act on
# without touching the stack's workers; pool restarts are allowed so that the
# pool-restart route has something to do. Celery grows a pool only without
# autoscaling and autoscales only with it, hence a second spare.
SPARE, SCALER, DOOMED = "flower-spare@main", "flower-scaler@main", "flower-doomed@main"
SPARE_WORKER = "import sys; from athena_inference.config.celery import app; app.conf.worker_pool_restarts = True; app.worker_main(sys.argv[1:])"
NOBODY = "nobody@nowhere"


@dataclass
class Call:
    """A request on one of Flower's routes; {worker}, {scaler}, {task} and {fresh} are filled in per test."""

    route: str  # the pattern in flower/urls.py
    method: str
    path: str
    params: dict = field(default_factory=dict)
    json: Optional[dict] = None

    def send(self, url: str, auth: Optional[tuple[str, str]], **names: str) -> httpx.Response:
        params = {key: str(value).format(**names) for key, value in self.params.items()}
        return httpx.request(self.method, url + self.path.format(**names), params=params, json=self.json, auth=auth, timeout=90)


EMBED = {"kwargs": {"text": "sent through Flower's API"}}
API = [
    Call(r"/api/workers", "GET", "/api/workers"),
    Call(r"/api/worker/pool/restart/(.+)", "POST", "/api/worker/pool/restart/{worker}"),
    Call(r"/api/worker/pool/grow/(.+)", "POST", "/api/worker/pool/grow/{worker}", {"n": 1}),
    Call(r"/api/worker/pool/shrink/(.+)", "POST", "/api/worker/pool/shrink/{worker}", {"n": 1}),
    Call(r"/api/worker/pool/autoscale/(.+)", "POST", "/api/worker/pool/autoscale/{scaler}", {"min": 1, "max": 2}),
    Call(r"/api/worker/queue/add-consumer/(.+)", "POST", "/api/worker/queue/add-consumer/{worker}", {"queue": "flower-extra"}),
    Call(r"/api/worker/queue/cancel-consumer/(.+)", "POST", "/api/worker/queue/cancel-consumer/{worker}", {"queue": "flower-extra"}),
    Call(r"/api/tasks", "GET", "/api/tasks"),
    Call(r"/api/task/types", "GET", "/api/task/types"),
    Call(r"/api/queues/length", "GET", "/api/queues/length"),
    Call(r"/api/task/info/(.*)", "GET", "/api/task/info/{task}"),
    Call(r"/api/task/apply/(.+)", "POST", "/api/task/apply/athena.embed", json={**EMBED, "timeout": 60}),
    Call(r"/api/task/async-apply/(.+)", "POST", "/api/task/async-apply/athena.embed", json=EMBED),
    Call(r"/api/task/send-task/(.+)", "POST", "/api/task/send-task/athena.embed", json=EMBED),
    Call(r"/api/task/result/(.+)", "GET", "/api/task/result/{task}"),
    Call(r"/api/task/abort/(.+)", "POST", "/api/task/abort/{fresh}"),
    Call(r"/api/task/timeout/(.+)", "POST", "/api/task/timeout/athena.embed", {"workername": "{worker}", "soft": 50, "hard": 60}),
    Call(r"/api/task/rate-limit/(.+)", "POST", "/api/task/rate-limit/athena.embed", {"workername": "{worker}", "ratelimit": "100/m"}),
    Call(r"/api/task/revoke/(.+)", "POST", "/api/task/revoke/{fresh}"),
    Call(r"/metrics", "GET", "/metrics"),
]
SHUTDOWN = Call(r"/api/worker/shutdown/(.+)", "POST", "/api/worker/shutdown/{worker}")
EVERY_CALL = [*API, SHUTDOWN]


def anonymous_names() -> dict[str, str]:
    # Should the password check fail, these requests still act on nothing.
    return {"worker": NOBODY, "scaler": NOBODY, "task": str(uuid.uuid4()), "fresh": str(uuid.uuid4())}


def start_flower(stack: Stack, name: str, env: Optional[dict[str, str]] = None) -> tuple[Proc, str]:
    port = free_port()
    env = {"ATHENA_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}", "ATHENA_FLOWER_PORT": str(port), **(env or {})}
    proc = stack.start(name, [*CLI, "flower"], env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200, name, 60, proc)
    return proc, url


def knows_worker(url: str, node: str) -> bool:
    # Flower acts only on workers it knows; ?refresh asks them all again.
    return node in httpx.get(f"{url}/api/workers", params={"refresh": "true"}, auth=LOGIN, timeout=10).json()


def start_spare_worker(stack: Stack, url: str, node: str, *options: str) -> Proc:
    queue = node.split("@")[0]
    argv = [sys.executable, "-c", SPARE_WORKER, "worker", "-Q", queue, "-n", node, *options]
    proc = stack.start(node, [*argv, "--without-gossip", "--without-mingle", "--loglevel=INFO"])
    wait_for(lambda: knows_worker(url, node), f"Flower knowing {node}", 90, proc)
    return proc


@pytest.fixture(scope="module")
def flower(stack, sender):
    proc, url = start_flower(stack, "flower")
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def spare_workers(stack, flower):
    procs = [start_spare_worker(stack, flower, SPARE, "-c", "1"), start_spare_worker(stack, flower, SCALER, "--autoscale=2,1")]
    yield {"worker": SPARE, "scaler": SCALER}
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="module")
def seen_task(flower, sender) -> str:
    """A finished embed whose events Flower has received."""
    sent = sender.send(TaskName.EMBED, EmbedRequest(text="a task Flower has seen"))
    sender.wait(TaskName.EMBED, sent)
    wait_for(lambda: httpx.get(f"{flower}/task/{sent.id}", auth=LOGIN, timeout=5).status_code == 200, "Flower seeing the task", 60)
    return sent.id


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def log_in(driver, user: str, password: str) -> None:
    """HTTP basic auth, sent by the browser itself with every request of the page."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def page_shows(driver, url: str, texts: list[str], timeout: float = 60) -> None:
    def shown() -> bool:
        driver.get(url)
        source = driver.page_source
        return all(text in source for text in texts)

    wait_for(shown, f"{url} showing {texts}", timeout)


def broker_depths(driver, url: str) -> dict[str, str]:
    """Loads the Broker page once, as an operator would, and reads each row's queue and Messages cells."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/broker")
    rows = driver.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")
    cells = [[cell.get_attribute("textContent").strip() for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]
    return {row[0]: row[1] for row in cells if len(row) > 1}


# --- what asks for the password ---


def test_the_calls_below_cover_every_api_route_of_flower_and_its_metrics():
    from flower.urls import handlers

    routes = {handler[0] for handler in handlers if isinstance(handler, tuple)}
    assert {call.route for call in EVERY_CALL} == {route for route in routes if route.startswith("/api/")} | {"/metrics"}


@pytest.mark.parametrize("call", EVERY_CALL, ids=lambda call: call.route)
def test_an_api_route_or_metrics_without_the_password_gets_401(flower, call):
    response = call.send(flower, None, **anonymous_names())
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="flower"'


@pytest.mark.parametrize("call", EVERY_CALL, ids=lambda call: call.route)
def test_an_api_route_or_metrics_with_a_wrong_password_gets_401(flower, call):
    assert call.send(flower, (USER, "wrong"), **anonymous_names()).status_code == 401


@pytest.mark.parametrize("call", API, ids=lambda call: call.route)
def test_an_api_route_or_metrics_with_the_password_gets_200(flower, spare_workers, seen_task, call):
    response = call.send(flower, LOGIN, **spare_workers, task=seen_task, fresh=str(uuid.uuid4()))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("method, path", [("OPTIONS", "/api/workers"), ("GET", "/api/task/revoke/x")], ids=["options", "wrong-method"])
def test_a_request_flower_answers_before_its_own_check_gets_401_without_the_password(flower, method, path):
    assert httpx.request(method, f"{flower}{path}", timeout=5).status_code == 401


def test_shutting_a_worker_down_with_the_password_gets_200(stack, flower):
    doomed = start_spare_worker(stack, flower, DOOMED, "-c", "1")
    try:
        assert SHUTDOWN.send(flower, LOGIN, worker=DOOMED).status_code == 200
        doomed.popen.wait(30)
    finally:
        doomed.stop()


def test_flower_turns_away_a_visitor_without_the_password(flower):
    assert httpx.get(f"{flower}/workers", timeout=5).status_code == 401
    assert httpx.get(f"{flower}/workers", auth=(USER, "wrong"), timeout=5).status_code == 401


def test_the_healthcheck_answers_without_the_password(flower):
    response = httpx.get(f"{flower}/healthcheck", timeout=5)
    assert (response.status_code, response.text) == (200, "OK")


def test_no_command_line_carries_the_flower_password(flower):
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "athena_inference.workers.ops.flower_app" in listing, "Flower is not in the listing"
    assert PASSWORD not in listing


# --- what an operator sees ---


def test_the_broker_pages_first_view_lists_every_queue_with_its_depth(stack, sender, browser):
    proc, url = start_flower(stack, "flower-first-view")
    try:
        log_in(browser, USER, PASSWORD)
        depths = broker_depths(browser, url)
    finally:
        proc.stop()
    assert set(ALL_QUEUES) <= set(depths)
    assert all(depths[queue].isdigit() for queue in ALL_QUEUES), depths


@pytest.fixture
def lonely_broker(stack):
    """Broker and result databases of their own, where only the jobs worker runs."""
    env = stack.isolated_env()
    worker = stack.worker("jobs", "lonely", env)
    yield env
    worker.stop()


def test_the_broker_page_lists_queues_no_worker_serves_with_the_messages_waiting_there(stack, browser, lonely_broker):
    waiting = TaskSender(lonely_broker["ATHENA_BROKER_URL"], lonely_broker["ATHENA_RESULT_BACKEND"])
    waiting.send(TaskName.REASON, ReasonRequest(prompt="nobody serves this queue here"))
    waiting.close()
    proc, url = start_flower(stack, "flower-lonely", lonely_broker)
    try:
        # Flower has heard from the jobs worker, and from no other.
        wait_for(lambda: knows_worker(url, "jobs@lonely"), "Flower knowing jobs@lonely", 60, proc)
        log_in(browser, USER, PASSWORD)
        depths = broker_depths(browser, url)
    finally:
        proc.stop()
    assert set(ALL_QUEUES) <= set(depths)
    assert (depths[Queue.REASONING.value], depths[Queue.JOBS.value]) == ("1", "0")


def test_logged_in_flower_shows_each_queues_worker(flower, browser):
    log_in(browser, USER, PASSWORD)
    page_shows(browser, f"{flower}/workers", [f"{queue.value}@main" for queue in Queue])


def test_a_finished_task_shows_its_result_and_timing(flower, browser, sender):
    log_in(browser, USER, PASSWORD)
    page_shows(browser, f"{flower}/workers", ["embeddings@main"])
    sent = sender.send(TaskName.EMBED, EmbedRequest(text="a memory Flower should show"))
    result = sender.wait(TaskName.EMBED, sent)
    page_shows(browser, f"{flower}/task/{sent.id}", ["SUCCESS", TaskName.EMBED.value, "queue_wait_ms", "run_ms", "prompt_tokens"])
    page = browser.page_source
    assert f"{result.timing.run_ms}"[:6] in page
    assert "embeddings@main" in page


def flower_task(flower: str, task_id: str) -> dict:
    seen: dict = {}

    def finished() -> bool:
        response = httpx.get(f"{flower}/api/task/info/{task_id}", auth=LOGIN, timeout=5)
        seen.update(response.json() if response.status_code == 200 else {})
        return seen.get("state") == "SUCCESS"

    wait_for(finished, f"Flower seeing {task_id} done", 60)
    return seen


def test_an_embed_shows_in_flower_received_then_done_with_its_runtime_and_a_short_result(flower, seen_task):
    # The embeddings lane sends no task-started event (config/registry.py: started_events).
    shown = flower_task(flower, seen_task)
    assert shown["name"] == TaskName.EMBED.value
    assert shown["received"] and shown["succeeded"] and shown["runtime"] > 0
    assert shown["started"] is None
    assert "'embedding'" in shown["result"] or "'timing'" in shown["result"]
    assert len(shown["result"]) < 300  # Celery's default would be over 1,000 characters of the vector


def test_a_generation_still_shows_in_flower_when_it_started(flower, sender):
    sent = sender.send(TaskName.REASON, ReasonRequest(prompt="Name a colour.", max_tokens=4))
    sender.wait(TaskName.REASON, sent)
    shown = flower_task(flower, sent.id)
    assert shown["started"] is not None and shown["started"] >= shown["received"]
