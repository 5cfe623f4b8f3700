"""`athena-inference up`: provision, run the Procfile, show a job through every queue (`demo.py`).

The Procfile is run by honcho, which starts each process, prefixes its output,
and when one process dies stops them all. `up` runs honcho in a session of its
own and stops it on SIGTERM or SIGINT (Ctrl-C), as systemd, a container runtime
or a terminal sends them; whatever is left after a grace period is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import redis

from athena_client.contract.errors import AthenaError, ConfigurationError
from athena_client.contract.routes import Queue
from athena_client.sender import TaskSender
from athena_inference.config.registry import LANES, lane, server_lanes
from athena_inference.config.servers import server_config
from athena_inference.config.settings import LOOPBACK_HOSTS as LOOPBACK, Settings, env_name
from athena_inference.workers.ops.demo import demo, demo_reembed
from athena_inference.workers.ops.polling import GoneWhileWaiting, poll_until
from athena_inference.workers.ops.processes import REDIS_PORT, host_port, redis_password, redis_password_file
from athena_inference.workers.ops.provision import provision, say
from athena_inference.workers.ops.secrets import new_password, stored_secret

PROCFILE = Path(__file__).resolve().parents[2] / "Procfile"
# The Redis URLs every process reads; `up` puts the embedded Redis's password into those that name it.
REDIS_URL_FIELDS = ("broker_url", "result_backend", "metrics_url", "cache_url")
# How long the stack may take to stop before `up` kills what is left. honcho
# itself kills an entry still running 5 s after asking it to stop; this is for
# whatever outlives honcho.
STOP_GRACE_S = 20.0
BULK_SERVER = lane(Queue.EMBEDDINGS_BULK).server_process


class StopRequested(BaseException):
    """SIGTERM or SIGINT reached `up`. A BaseException, like KeyboardInterrupt, so no `except Exception` swallows it."""


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
    return stored_secret(settings.cache_dir / "flower-auth", lambda: f"athena:{new_password()}")


def process_names(settings: Settings) -> list[str]:
    names = []
    if _managed(settings.result_backend, 6379, "Redis"):
        names.append("redis")
    for row in server_lanes():
        if row.queue is Queue.EMBEDDINGS_BULK:
            # Copies of their own, unless the lane shares the interactive server.
            if settings.embeddings_bulk_url != settings.embeddings_url and _bulk_managed(settings):
                names.append(BULK_SERVER)
        elif _managed(server_config(row.queue, settings).url, 80, f"{row.server} server"):
            names.append(str(row.server_process))
    names += [row.worker_process for row in LANES]
    names += ["flower", "exporter"]
    return names


def _bulk_managed(settings: Settings) -> bool:
    """Run the bulk server's copies when no copy's port is taken; use them when all are; else refuse."""
    urls = server_config(Queue.EMBEDDINGS_BULK, settings).urls
    if not _managed(urls[0], 80, "bulk embeddings server" + (f" ({len(urls)} copies from there)" if len(urls) > 1 else "")):
        return False
    taken = [url for url in urls[1:] if port_open(*host_port(url, 80))]
    if taken:
        raise ConfigurationError(
            f"the bulk lane's {len(urls)} servers take {urls[0]} and the next ports, but something already "
            f"listens at {', '.join(taken)}; set ATHENA_EMBEDDINGS_BULK_SERVERS lower or ATHENA_EMBEDDINGS_BULK_URL elsewhere"
        )
    return True


def honcho_argv(settings: Settings, names: list[str]) -> list[str]:
    argv = [str(Path(sys.executable).parent / "honcho"), "start", "-f", str(PROCFILE), "-d", str(PROCFILE.parent)]
    if BULK_SERVER in names:
        # One process per copy; each reads its number from HONCHO_PROCESS_NAME (`serve --copy`).
        argv += ["-c", f"{BULK_SERVER}={server_config(Queue.EMBEDDINGS_BULK, settings).copies}"]
    return [*argv, *names]


def wait_until(check: Callable[[], bool], what: str, timeout: float, alive: Callable[[], bool]) -> None:
    try:
        ready = poll_until(check, timeout, interval=0.5, alive=alive)
    except GoneWhileWaiting:
        raise ConfigurationError(f"the stack stopped while waiting for {what}; see the output above") from None
    if not ready:
        raise ConfigurationError(f"{what} was not ready after {timeout:.0f} s")


def wait_ready(settings: Settings, sender: TaskSender, alive: Callable[[], bool], timeout: float = 180) -> None:
    client = redis.Redis.from_url(settings.result_backend)
    wait_until(lambda: bool(client.ping()), "Redis", timeout, alive)
    servers = [(f"{row.server} server", url) for row in server_lanes() for url in server_config(row.queue, settings).urls]
    for name, url in servers:
        wait_until(lambda url=url: httpx.get(f"{url}/health", timeout=2).status_code == 200, name, timeout, alive)
    wanted = {row.queue.value for row in LANES}

    def workers_online() -> bool:
        replies = sender.app.control.inspect(timeout=1.0).active_queues() or {}
        serving = {queue["name"] for queues in replies.values() for queue in queues}
        return wanted <= serving

    wait_until(workers_online, "a worker on every queue", timeout, alive)


def with_password(url: str, password: str) -> str:
    """`url` with the embedded Redis's password; one that carries another password is refused."""
    parts = urlsplit(url)
    if parts.password is not None and unquote(parts.password) != password:
        raise ConfigurationError(
            f"{shown(url)} carries a password other than the embedded Redis's; leave it out "
            f"(`up` adds the right one) or set ATHENA_REDIS_PASSWORD to it"
        )
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{_host_part(url)}"))


def shown(url: str, password: str = "***") -> str:
    """`url` with its password replaced by `password` (elided by default), for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{password}@{_host_part(url)}"))


def _host_part(url: str) -> str:
    return urlsplit(url).netloc.rpartition("@")[2]


def _names_embedded_redis(url: str, port: int) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("redis", "rediss") and (parts.hostname or "127.0.0.1") in LOOPBACK and (parts.port or REDIS_PORT) == port


def with_embedded_redis(settings: Settings, password: str) -> Settings:
    """The settings with the embedded Redis's password in every Redis URL that names it."""
    _, port = host_port(settings.result_backend, REDIS_PORT)
    current = {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "metrics_url": settings.metrics_redis_url,
        "cache_url": settings.cache_redis_url,
    }
    update = {field: with_password(url, password) for field, url in current.items() if _names_embedded_redis(url, port)}
    return settings.model_copy(update=update)


def redis_env(settings: Settings, password: str) -> dict[str, str]:
    """What every process `up` starts is told, in its environment (never its argument list): the password and the URLs."""
    urls = {env_name(field): getattr(settings, field) for field in REDIS_URL_FIELDS if getattr(settings, field)}
    return {"ATHENA_REDIS_PASSWORD": password, **urls}


def redis_hint(settings: Settings) -> list[str]:
    """How a client reaches the embedded Redis, without printing its password."""
    if settings.redis_password is not None:
        where, expression = "ATHENA_REDIS_PASSWORD", "$ATHENA_REDIS_PASSWORD"
    else:
        path = redis_password_file(settings)
        where, expression = f"{path} (mode 0600)", f"$(cat {path})"
    _, port = host_port(settings.result_backend, REDIS_PORT)
    urls = {
        env_name(field): getattr(settings, field)
        for field in ("broker_url", "result_backend")
        if _names_embedded_redis(getattr(settings, field), port)
    }
    listed = ", ".join(f"{name}={shown(url)}" for name, url in urls.items())
    exports = " ".join(f'{name}="{shown(url, expression)}"' for name, url in urls.items())
    return [f"Redis: {listed}; its password is in {where}", f"clients in another shell: export {exports}"]


def up(settings: Settings, *, check_only: bool = False, show_demo: bool = True) -> int:
    if not PROCFILE.exists():
        raise ConfigurationError(f"no Procfile at {PROCFILE}; run `up` from a checkout of the project")
    provision(settings)
    names = process_names(settings)
    auth = flower_auth(settings)
    env = dict(os.environ, ATHENA_FLOWER_BASIC_AUTH=auth, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if "redis" in names:
        redis_secret = redis_password(settings)
        settings = with_embedded_redis(settings, redis_secret)
        env.update(redis_env(settings, redis_secret))
    honcho = honcho_argv(settings, names)
    say("starting: " + ", ".join(names))
    stack = None
    sender = None
    with stop_signals():
        try:
            # A session of its own: a terminal's Ctrl-C reaches `up` alone, which
            # stops honcho (honcho stops each process), then kills what is left.
            stack = subprocess.Popen(honcho, env=env, start_new_session=True)
            sender = TaskSender(settings.broker_url, settings.result_backend)
            wait_ready(settings, sender, alive=lambda: stack.poll() is None)
            if show_demo:
                demo(sender)
                demo_reembed(sender, settings.cache_dir / "demo")
            user, _, password = auth.partition(":")
            say(f"stack is up. Flower: http://127.0.0.1:{settings.flower_port} (user {user}, password {password})")
            if "redis" in names:
                for line in redis_hint(settings):
                    say(line)
            say(f"metrics: athena-inference metrics; Prometheus: http://{settings.exporter_address}:{settings.exporter_port}/metrics")
            say("health: athena-inference health    stop: Ctrl-C (or SIGTERM)")
            if check_only:
                return 0
            return stack.wait()
        except (KeyboardInterrupt, StopRequested):
            say("stopping every process of the stack")
            return 0
        except AthenaError as exc:
            say(f"error: {exc}")
            return 1
        finally:
            # A second Ctrl-C must not cut the stop short and leave processes behind.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            if sender is not None:
                sender.close()
            if stack is not None:
                stop_stack(stack)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise StopRequested in `up`, so it stops what it started before it exits."""

    def request_stop(signum: int, _frame) -> None:
        raise StopRequested(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_stack(stack: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """Ask honcho to stop every process, give them `grace` seconds, then kill every process group left."""
    # Taken before anything stops: once honcho is gone its processes are no longer its descendants.
    groups = {stack.pid} | {pgid for _, pgid in descendants(stack.pid)}
    # honcho sends SIGTERM to each Procfile entry's process group (a worker's
    # pool processes included); its own group holds its helper processes.
    _signal_group(stack.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    # honcho is done once the shells it started (`sh -c <entry>`) have exited,
    # which can be before the processes they run have: a worker still
    # shutting down, Redis writing its append-only file. Those get the grace too.
    while time.monotonic() < deadline and (stack.poll() is None or live_groups(groups)):
        time.sleep(0.2)
    for pgid in live_groups(groups) | ({stack.pid} if stack.poll() is None else set()):
        _signal_group(pgid, signal.SIGKILL)
    stack.wait()


def _process_table() -> list[tuple[int, int, int, str]]:
    """(pid, parent, process group, state) of every process, from `ps` (Linux and macOS alike)."""
    try:
        listing = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,pgid=,stat="], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        # No `ps` (a slim container): honcho's own stop is all there is.
        return []
    table = []
    for line in listing.splitlines():
        pid, ppid, pgid, state = line.split(None, 3)
        table.append((int(pid), int(ppid), int(pgid), state))
    return table


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, process group) of every process below `root`."""
    children: dict[int, list[tuple[int, int]]] = {}
    for pid, ppid, pgid, _ in _process_table():
        children.setdefault(ppid, []).append((pid, pgid))
    found: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def live_groups(groups: set[int]) -> set[int]:
    """Those of `groups` with a process still running (a zombie has finished; it only waits to be reaped)."""
    return {pgid for _, _, pgid, state in _process_table() if pgid in groups and not state.startswith("Z")}


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
