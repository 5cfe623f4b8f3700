"""`athena-inference serve redis` (the Procfile's Redis) as a real redis-server."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import redis

from tests.harness import CLI, Stack, free_port, wait_for

pytestmark = pytest.mark.integration

# Quotes, a backslash and a space: the config file must keep it one value.
PASSWORD = 'Emb3dded "redis" pa\\ss'


def serve_redis(stack: Stack, port: int, cache_dir) -> redis.Redis:
    env = {
        "ATHENA_CACHE_DIR": str(cache_dir),
        "ATHENA_RESULT_BACKEND": f"redis://127.0.0.1:{port}/1",
        "ATHENA_REDIS_PASSWORD": PASSWORD,
        "ATHENA_REDIS_MAXMEMORY_MB": "64",
    }
    proc = stack.start(f"redis-{port}", [*CLI, "serve", "redis"], env)
    client = redis.Redis(port=port, password=PASSWORD)
    wait_for(client.ping, f"redis on {port}", 30, proc)
    return client


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("logs"), dict(os.environ, PYTHONUNBUFFERED="1"))
    port = free_port()
    try:
        yield port, serve_redis(stack, port, tmp_path_factory.mktemp("cache"))
    finally:
        stack.stop_all()


def test_the_password_is_on_no_command_line(embedded):
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert PASSWORD not in listing
    assert "pa\\ss" not in listing


def test_a_client_without_the_password_is_refused(embedded):
    port, _ = embedded
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).set("athena:probe", "1")


def test_a_client_with_the_password_is_served(embedded):
    _, client = embedded
    client.set("athena:probe", "1", ex=60)
    assert client.get("athena:probe") == b"1"


def test_it_runs_with_an_append_only_file_synced_every_second(embedded):
    _, client = embedded
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == "everysec"


def test_it_runs_with_the_memory_bound_and_evicts_only_keys_that_expire(embedded):
    _, client = embedded
    assert client.config_get("maxmemory")["maxmemory"] == str(64 * 1024 * 1024)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"


def test_serve_redis_exits_on_sigterm(tmp_path):
    stack = Stack(tmp_path, dict(os.environ, PYTHONUNBUFFERED="1"))
    port = free_port()
    try:
        serve_redis(stack, port, tmp_path / "cache")
        [proc] = stack.procs
        # `serve` exec'd redis-server, so the signal reaches Redis itself.
        os.kill(proc.popen.pid, signal.SIGTERM)
        assert proc.popen.wait(timeout=15) == 0
    finally:
        stack.stop_all()
