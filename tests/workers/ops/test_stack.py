"""`up`'s own parts: the password it hands every process, what it prints, and how it stops what it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from athena_client.contract.errors import ConfigurationError
from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.launch import HONCHO_NAME_ENV, copy_number, serve_llama
from athena_inference.workers.ops.stack import (
    BULK_SERVER,
    StopRequested,
    descendants,
    honcho_argv,
    port_open,
    process_names,
    redis_env,
    redis_hint,
    stop_signals,
    stop_stack,
    with_embedded_redis,
    with_password,
)
from tests.harness import alive

PASSWORD = "s3cret-Value-42"

pytestmark = pytest.mark.usefixtures("clean_settings_env")


@pytest.fixture
def settings(tmp_path):
    return load_settings(cache_dir=tmp_path, broker_url="redis://127.0.0.1:6390/0", result_backend="redis://127.0.0.1:6390/1")


# --- the password, in every URL that names the embedded Redis ---


def test_the_password_goes_into_a_url_that_has_none():
    assert with_password("redis://127.0.0.1:6390/0", PASSWORD) == f"redis://:{PASSWORD}@127.0.0.1:6390/0"


def test_a_url_that_already_carries_the_same_password_is_left_as_it_is():
    url = f"redis://:{PASSWORD}@127.0.0.1:6390/0"
    assert with_password(url, PASSWORD) == url


def test_a_url_carrying_another_password_is_refused_without_printing_it():
    with pytest.raises(ConfigurationError, match="ATHENA_REDIS_PASSWORD") as caught:
        with_password("redis://:other-pass-77@127.0.0.1:6390/0", PASSWORD)
    assert "other-pass-77" not in str(caught.value)


def test_broker_results_metrics_and_caches_all_carry_the_embedded_redis_password(settings):
    effective = with_embedded_redis(settings, PASSWORD)
    assert effective.broker_url == f"redis://:{PASSWORD}@127.0.0.1:6390/0"
    assert effective.result_backend == f"redis://:{PASSWORD}@127.0.0.1:6390/1"
    assert effective.metrics_redis_url == f"redis://:{PASSWORD}@127.0.0.1:6390/2"
    assert effective.cache_redis_url == f"redis://:{PASSWORD}@127.0.0.1:6390/2"


def test_a_redis_elsewhere_keeps_its_own_url(tmp_path):
    settings = load_settings(cache_dir=tmp_path, result_backend="redis://127.0.0.1:6390/1", metrics_url="redis://metrics.internal:6379/0")
    assert with_embedded_redis(settings, PASSWORD).metrics_url == "redis://metrics.internal:6379/0"


def test_every_process_is_told_the_password_and_the_urls_in_its_environment(settings):
    env = redis_env(with_embedded_redis(settings, PASSWORD), PASSWORD)
    assert env["ATHENA_REDIS_PASSWORD"] == PASSWORD
    for name in ("ATHENA_BROKER_URL", "ATHENA_RESULT_BACKEND", "ATHENA_METRICS_URL", "ATHENA_CACHE_URL"):
        assert f":{PASSWORD}@127.0.0.1:6390/" in env[name], name


# --- what `up` prints ---


def test_up_shows_the_redis_urls_with_the_password_elided_and_where_it_is_kept(settings):
    lines = redis_hint(with_embedded_redis(settings, PASSWORD))
    text = "\n".join(lines)
    assert PASSWORD not in text
    assert "ATHENA_BROKER_URL=redis://:***@127.0.0.1:6390/0" in lines[0]
    assert "ATHENA_RESULT_BACKEND=redis://:***@127.0.0.1:6390/1" in lines[0]
    assert str(settings.cache_dir / "redis-password") in lines[0]


def test_up_gives_a_line_another_shell_can_paste_that_reads_the_password_file(settings):
    export = redis_hint(with_embedded_redis(settings, PASSWORD))[1]
    path = settings.cache_dir / "redis-password"
    assert f'ATHENA_BROKER_URL="redis://:$(cat {path})@127.0.0.1:6390/0"' in export


def test_a_password_from_the_environment_is_named_by_its_variable(tmp_path):
    settings = load_settings(cache_dir=tmp_path, result_backend="redis://127.0.0.1:6390/1", redis_password=PASSWORD)
    lines = redis_hint(with_embedded_redis(settings, PASSWORD))
    assert "ATHENA_REDIS_PASSWORD" in lines[0] and "$ATHENA_REDIS_PASSWORD" in lines[1]
    assert PASSWORD not in "\n".join(lines)


# --- signals ---


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_ask_up_to_stop(sig):
    with pytest.raises(StopRequested):
        with stop_signals():
            os.kill(os.getpid(), sig)
            time.sleep(5)


def test_the_signal_handlers_are_put_back_afterwards():
    before = signal.getsignal(signal.SIGTERM)
    with stop_signals():
        pass
    assert signal.getsignal(signal.SIGTERM) is before


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_what_ignores_sigterm_is_killed_after_the_grace_period_even_in_a_session_of_its_own():
    # A manager and its child, each in a session of its own, both deaf to SIGTERM.
    manager = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(manager.stdout.readline())
    assert manager.stdout.readline().strip() == "ready"
    try:
        assert child in {pid for pid, _ in descendants(manager.pid)}
        started = time.monotonic()
        stop_stack(manager, grace=1.0)
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(child) and manager.poll() is not None
    finally:
        for pid in (manager.pid, child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


POLITE = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import signal, sys, time
def finish(*_):
    time.sleep(1.0)
    open(sys.argv[1], "w").write("clean")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
print("ready", flush=True)
time.sleep(600)
''', sys.argv[1]], start_new_session=True)
def forward(*_):
    os.killpg(child.pid, signal.SIGTERM)
    sys.exit(0)
signal.signal(signal.SIGTERM, forward)
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_process_still_stopping_after_its_manager_exits_is_given_the_grace_period(tmp_path):
    # Like honcho over `sh -c`: the manager is gone at once, the process it started needs a second.
    marker = tmp_path / "stopped-cleanly"
    manager = subprocess.Popen([sys.executable, "-c", POLITE, str(marker)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(manager.stdout.readline())
    assert manager.stdout.readline().strip() == "ready"
    try:
        stop_stack(manager, grace=10.0)
        assert marker.read_text() == "clean"
    finally:
        for pid in (manager.pid, child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- the bulk lane's copies under honcho ---


def test_honcho_runs_the_bulk_server_entry_once_per_copy(settings):
    lane = settings.model_copy(update={"embeddings_bulk_servers": 3})
    argv = honcho_argv(lane, ["redis", BULK_SERVER])
    assert argv[argv.index("-c") + 1] == f"{BULK_SERVER}=3"
    assert argv[-2:] == ["redis", BULK_SERVER]
    assert "-c" not in honcho_argv(lane, ["redis"])


def test_bulk_copies_whose_ports_are_partly_taken_are_refused_by_address(settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lane = settings.model_copy(update={"embeddings_bulk_url": f"http://127.0.0.1:{port - 1}", "embeddings_bulk_servers": 2})
        if port_open("127.0.0.1", port - 1):
            pytest.skip("the port before the taken one is in use too")
        with pytest.raises(ConfigurationError, match=f"already listens at http://127.0.0.1:{port}"):
            process_names(lane)


@pytest.mark.parametrize(
    ("given", "honcho_name", "expected"),
    [(None, "embeddings-bulk-server.2", 2), (3, "embeddings-bulk-server.2", 3), (None, None, 1), (None, "odd", 1)],
)
def test_a_bulk_copy_takes_its_number_from_the_option_else_from_honcho(monkeypatch, given, honcho_name, expected):
    if honcho_name is None:
        monkeypatch.delenv(HONCHO_NAME_ENV, raising=False)
    else:
        monkeypatch.setenv(HONCHO_NAME_ENV, honcho_name)
    assert copy_number(given) == expected


def test_serving_a_copy_past_the_last_is_a_configuration_error(settings):
    with pytest.raises(ConfigurationError, match=r"copy 3 of the embeddings-bulk server.*there are 2"):
        serve_llama("embeddings-bulk", settings.model_copy(update={"embeddings_bulk_servers": 2}), 2)
