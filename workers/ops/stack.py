"""`athena-inference up`: provision, run the Procfile, show a job through every queue (`demo.py`).

The Procfile is run by honcho, which starts each process, prefixes its output,
and on Ctrl-C (or when one process dies) stops them all.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx
import redis

from athena_client.errors import AthenaError, ConfigurationError
from athena_client.routes import Queue
from athena_client.sender import TaskSender
from athena_inference.config.settings import Settings
from athena_inference.workers.ops.demo import demo, demo_reembed
from athena_inference.workers.ops.processes import host_port
from athena_inference.workers.ops.provision import provision, say

PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _managed(url: str, default_port: int, what: str) -> bool:
    """Run our own copy only for a loopback address where nothing listens yet."""
    host, port = host_port(url, default_port)
    if host not in LOOPBACK:
        say(f"using the {what} at {url}")
        return False
    if port_open(host, port):
        say(f"something already listens at {host}:{port}; using it as the {what}")
        return False
    return True


def flower_auth(settings: Settings) -> str:
    if settings.flower_basic_auth is not None:
        return settings.flower_basic_auth.get_secret_value()
    path = settings.cache_dir / "flower-auth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"athena:{secrets.token_urlsafe(12)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def process_names(settings: Settings) -> list[str]:
    names = []
    if _managed(settings.result_backend, 6379, "Redis"):
        names.append("redis")
    if _managed(settings.embeddings_url, 80, "embeddings server"):
        names.append("embeddings-server")
    if _managed(settings.reasoning_url, 80, "reasoning server"):
        names.append("reasoning-server")
    if settings.embeddings_bulk_url != settings.embeddings_url and _managed(
        settings.embeddings_bulk_url, 80, "bulk embeddings server"
    ):
        names.append("embeddings-bulk-server")
    names += [f"{q.value}-worker" for q in Queue]
    names += ["flower", "exporter"]
    return names


def wait_until(check: Callable[[], bool], what: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise ConfigurationError(f"the stack stopped while waiting for {what}; see the output above")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet is every kind of error
            pass
        time.sleep(0.5)
    raise ConfigurationError(f"{what} was not ready after {timeout:.0f} s")


def wait_ready(settings: Settings, sender: TaskSender, alive: Callable[[], bool], timeout: float = 180) -> None:
    client = redis.Redis.from_url(settings.result_backend)
    wait_until(lambda: bool(client.ping()), "Redis", timeout, alive)
    servers = (
        ("embeddings server", settings.embeddings_url),
        ("reasoning server", settings.reasoning_url),
        ("bulk embeddings server", settings.embeddings_bulk_url),
    )
    for name, url in servers:
        wait_until(lambda url=url: httpx.get(f"{url}/health", timeout=2).status_code == 200, name, timeout, alive)
    wanted = {q.value for q in Queue}

    def workers_online() -> bool:
        replies = sender.app.control.inspect(timeout=1.0).active_queues() or {}
        serving = {queue["name"] for queues in replies.values() for queue in queues}
        return wanted <= serving

    wait_until(workers_online, "a worker on every queue", timeout, alive)


def up(settings: Settings, *, check_only: bool = False) -> int:
    if not PROCFILE.exists():
        raise ConfigurationError(f"no Procfile at {PROCFILE}; run `up` from a checkout of the project")
    provision(settings)
    names = process_names(settings)
    auth = flower_auth(settings)
    env = dict(os.environ, ATHENA_FLOWER_BASIC_AUTH=auth, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    honcho = [str(Path(sys.executable).parent / "honcho"), "start", "-f", str(PROCFILE), "-d", str(PROCFILE.parent), *names]
    say("starting: " + ", ".join(names))
    stack = subprocess.Popen(honcho, env=env, start_new_session=check_only)
    sender = TaskSender(settings.broker_url, settings.result_backend)
    try:
        wait_ready(settings, sender, alive=lambda: stack.poll() is None)
        demo(sender)
        demo_reembed(sender, settings.cache_dir / "demo")
        user, _, password = auth.partition(":")
        say(f"stack is up. Flower: http://127.0.0.1:{settings.flower_port} (user {user}, password {password})")
        say(f"metrics: athena-inference metrics; Prometheus: http://{settings.exporter_address}:{settings.exporter_port}/metrics")
        say("health: athena-inference health    stop: Ctrl-C")
        if check_only:
            return 0
        return stack.wait()
    except KeyboardInterrupt:
        say("stopping every process of the stack")
        return 0
    except AthenaError as exc:
        say(f"error: {exc}")
        return 1
    finally:
        sender.close()
        _stop(stack)


def _stop(stack: subprocess.Popen, grace: float = 20) -> None:
    if stack.poll() is None:
        stack.send_signal(signal.SIGTERM)
    try:
        stack.wait(grace)
    except subprocess.TimeoutExpired:
        stack.kill()
        stack.wait()
