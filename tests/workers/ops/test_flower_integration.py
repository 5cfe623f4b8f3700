"""Flower in a real headless Chromium: log in, see every queue's worker, open a
finished task and read its result and our timing."""

from __future__ import annotations

import base64
import shutil

import httpx
import pytest

from athena_client.payloads import EmbedRequest
from athena_client.routes import Queue, TaskName
from tests.harness import CLI, wait_for

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them: apt-get install chromium chromium-driver)",
)
USER, PASSWORD = "athena", "flower-test-password"


@pytest.fixture(scope="module")
def flower(stack, sender):
    proc = stack.start("flower", [*CLI, "flower"], {"ATHENA_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"})
    url = f"http://127.0.0.1:{stack.env['ATHENA_FLOWER_PORT']}"
    wait_for(lambda: httpx.get(f"{url}/healthcheck", auth=(USER, PASSWORD), timeout=2).status_code == 200, "Flower", 60, proc)
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def browser():
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


def test_flower_turns_away_a_visitor_without_the_password(flower):
    assert httpx.get(f"{flower}/workers", timeout=5).status_code == 401
    assert httpx.get(f"{flower}/workers", auth=(USER, "wrong"), timeout=5).status_code == 401


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
