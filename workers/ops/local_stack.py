"""A stack on free loopback ports, one real process per part, for the test suite and the benches.

redis-server, llama-servers and Celery workers are each started through the
same `athena-inference` commands the Procfile uses, with settings given as
environment variables, and each writes to a log file that a failing test or
bench can print. `UpStack` runs `athena-inference up` itself, as a user starts it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import httpx
import redis

from athena_client.contract.payloads import ReasonRequest
from athena_client.contract.routes import Queue
from athena_client.sender import TaskSender
from athena_client.shared_redis.metrics import SIDE_DATABASE, with_database
from athena_inference.config.registry import lane, server_lanes
from athena_inference.config.servers import copy_url
from athena_inference.workers.ops.polling import poll_until
from athena_inference.workers.ops.provision import redis_server_binary

CLI = [sys.executable, "-m", "athena_inference.workers.ops.cli"]
ALL_QUEUES = tuple(queue.value for queue in Queue)
# Databases on a Redis that `Stack.redis` starts: room for many lanes of three (`Stack.isolated_env`).
REDIS_DATABASES = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endless_generation(prompt: str) -> ReasonRequest:
    """A generation under a grammar with no end: the model cannot stop early, so
    a worker killed while it runs is killed mid-task, however fast the machine."""
    return ReasonRequest(prompt=prompt, max_tokens=2000, grammar='root ::= "lighthouse " root')


def bulk_copies_env(copies: int) -> dict[str, str]:
    """Settings for a bulk lane of `copies` servers on consecutive free loopback ports."""
    for _ in range(200):
        first = free_port()
        if first + copies - 1 <= 65535 and all(_port_free(first + i) for i in range(1, copies)):
            return {"ATHENA_EMBEDDINGS_BULK_URL": f"http://127.0.0.1:{first}", "ATHENA_EMBEDDINGS_BULK_SERVERS": str(copies)}
    raise RuntimeError(f"found no {copies} consecutive free ports")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def children(pid: int) -> list[int]:
    listing = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    return [int(p) for p, pp in (line.split() for line in listing.splitlines()) if int(pp) == pid]


def descendants(root: int) -> set[int]:
    found, todo = set(), [root]
    while todo:
        for child in children(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running: a zombie is dead, though not yet reaped by its parent."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def all_gone(pids: set[int], within_s: float) -> list[int]:
    """The pids still alive after waiting up to `within_s` for all of them to end."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.5)
    return [pid for pid in pids if alive(pid)]


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120, proc: Optional["Proc"] = None) -> None:
    if not poll_until(check, timeout):
        raise TimeoutError(f"{what} not ready after {timeout} s" + (f"\n{proc.log_tail()}" if proc else ""))


def answering(client, timeout: float = 1.0) -> set[str]:
    """The workers (`queue@node`) that answer a ping through `client`'s broker within `timeout`."""
    return {name for reply in client.app.control.ping(timeout=timeout) or [] for name in reply}


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen = field(init=False)

    def start(self) -> "Proc":
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        self.send_signal(sig)
        self.wait_or_kill(time.monotonic() + timeout)

    def send_signal(self, sig: int) -> None:
        """`sig` to the process and its group (a worker's pool processes), if it still runs."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def wait_or_kill(self, deadline: float) -> None:
        """Wait for the exit until `deadline` (time.monotonic()), then SIGKILL the group."""
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- {self.name} log ---\n" + "\n".join(text.splitlines()[-lines:])


def local_stack_env(**extra: str) -> dict[str, str]:
    """Settings, as environment variables, for a whole stack on free loopback ports; `extra` overrides any of them."""
    # Ports given in `extra` (a bulk lane's range of copies, say) are not handed out again.
    taken = _ports_in(extra)

    def port() -> int:
        for _ in range(200):
            found = free_port()
            if found not in taken:
                taken.add(found)
                return found
        raise RuntimeError("found no free port outside the ones already given")

    redis_port = port()
    env = dict(
        os.environ,
        ATHENA_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        ATHENA_RESULT_BACKEND=f"redis://127.0.0.1:{redis_port}/1",
        **{str(row.url_variable): f"http://127.0.0.1:{port()}" for row in server_lanes()},
        # One bulk server: the port after a free port may be taken (`bulk_copies_env` makes room for more).
        ATHENA_EMBEDDINGS_BULK_SERVERS="1",
        ATHENA_FLOWER_PORT=str(port()),
        ATHENA_EXPORTER_PORT=str(port()),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _ports_in(extra: dict[str, str]) -> set[int]:
    """The ports settings in `extra` name, the bulk lane's copies included."""
    ports: set[int] = set()
    for name, value in extra.items():
        if name.endswith("_URL") and value.count(":") >= 2:
            port = int(value.rsplit(":", 1)[1].split("/")[0])
            copies = int(extra.get("ATHENA_EMBEDDINGS_BULK_SERVERS", "1")) if name == "ATHENA_EMBEDDINGS_BULK_URL" else 1
            ports.update(range(port, port + copies))
        elif name.endswith("_PORT") and value.isdigit():
            ports.add(int(value))
    return ports


def redis_port(env: dict[str, str]) -> int:
    return int(env["ATHENA_RESULT_BACKEND"].rsplit(":", 1)[1].split("/")[0])


def side_url(env: dict[str, str]) -> str:
    """Where a stack started with `env` keeps metrics and caches: the result backend's Redis, database 2."""
    return with_database(env["ATHENA_RESULT_BACKEND"], SIDE_DATABASE)


@dataclass
class SideLane:
    """What `Stack.side_lane` started: its settings, a client on its broker, its worker and its server (or None)."""

    env: dict[str, str]
    client: TaskSender
    worker: Proc
    server: Optional[Proc]


class Stack:
    """Settings (as environment variables) plus the processes started with them."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.procs: list[Proc] = []
        # Redis's default, until `redis` starts one with more.
        self.redis_databases = 16
        # Databases 0-2 are the stack's own broker, results and metrics (`side_url`).
        self._next_database = SIDE_DATABASE + 1

    def start(self, name: str, argv: list[str], extra_env: Optional[dict[str, str]] = None) -> Proc:
        env = dict(self.env, **(extra_env or {}))
        proc = Proc(name, argv, env, self.logs / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def redis(self, port: int) -> Proc:
        binary = str(redis_server_binary())
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--databases", str(REDIS_DATABASES)]
        proc = self.start(f"redis-{port}", argv)
        self.redis_databases = REDIS_DATABASES
        client = redis.Redis(port=port)
        wait_for(lambda: client.ping(), f"redis on {port}", 30, proc)
        return proc

    def llama(self, kind: str, url: str, extra_env: Optional[dict[str, str]] = None, copy: Optional[int] = None) -> Proc:
        """A llama-server (`serve <kind>`), once it answers /health."""
        return self._healthy(self._start_llama(kind, url, extra_env, copy), url)

    def _start_llama(self, kind: str, url: str, extra_env: Optional[dict[str, str]], copy: Optional[int]) -> Proc:
        argv = [*CLI, "serve", kind, *(["--copy", str(copy)] if copy is not None else [])]
        return self.start(f"{kind}-server-{url.rsplit(':', 1)[-1]}", argv, extra_env)

    @staticmethod
    def _healthy(proc: Proc, url: str) -> Proc:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, f"{proc.name} at {url}", 180, proc)
        return proc

    def worker(self, queue: str, node: str, extra_env: Optional[dict[str, str]] = None) -> Proc:
        proc = self.start(f"{queue}-worker-{node}", [*CLI, "worker", queue, "--node-suffix", node], extra_env)
        return proc

    def wait_for_workers(self, client, names: set[str], timeout: float = 60) -> None:
        """Until every worker in `names` (`queue@node`) answers a ping through `client`'s broker."""
        wait_for(lambda: names <= answering(client), ", ".join(sorted(names)), timeout)

    def isolated_env(self, **extra: str) -> dict[str, str]:
        """Settings for processes beside the stack's own, which never meet its queues, results,
        metrics, caches or circuit breakers: the same Redis, databases no earlier call was given."""
        first = self._next_database
        if first + 2 >= self.redis_databases:
            raise RuntimeError(f"no Redis databases left from {first} on (the stack's Redis has {self.redis_databases})")
        self._next_database += 3
        backend = self.env["ATHENA_RESULT_BACKEND"]
        return {
            "ATHENA_BROKER_URL": with_database(self.env["ATHENA_BROKER_URL"], first),
            "ATHENA_RESULT_BACKEND": with_database(backend, first + 1),
            "ATHENA_METRICS_URL": with_database(backend, first + 2),
            "ATHENA_CACHE_URL": with_database(backend, first + 2),
            **extra,
        }

    @contextlib.contextmanager
    def side_lane(self, queue: Queue, node: str, *, own_server: bool = False, **settings: str) -> Iterator[SideLane]:
        """A worker of `queue` beside the stack's, on Redis databases no one else uses
        (`isolated_env(**settings)`), and with `own_server` a llama-server of its own on a
        free port, whose settings (slots, ...) are the ones given; yields once the worker answers."""
        env = self.isolated_env(**settings)
        server = None
        if own_server:
            row = lane(queue)
            env[str(row.url_variable)] = f"http://127.0.0.1:{free_port()}"
            server = self.llama(str(row.server), env[str(row.url_variable)], env)
        worker = self.worker(queue.value, node, env)
        client = TaskSender(env["ATHENA_BROKER_URL"], env["ATHENA_RESULT_BACKEND"])
        try:
            self.wait_for_workers(client, {f"{queue.value}@{node}"})
            yield SideLane(env, client, worker, server)
        finally:
            client.close()
            worker.stop()
            if server is not None:
                server.stop()

    def servers(self) -> None:
        """Redis and every lane's llama-server, at the addresses the settings name, all loading at once."""
        self.redis(redis_port(self.env))
        single = [row for row in server_lanes() if row.queue is not Queue.EMBEDDINGS_BULK]
        urls = {str(row.server): self.env[str(row.url_variable)] for row in single}
        started = [(self._start_llama(kind, url, None, None), url) for kind, url in urls.items()]
        for proc, url in started + self._start_bulk_servers(None):
            self._healthy(proc, url)

    def bulk_servers(self, extra_env: Optional[dict[str, str]] = None) -> list[Proc]:
        """Every copy of the bulk server that the settings ask for (ATHENA_EMBEDDINGS_BULK_SERVERS), all loading at once."""
        return [self._healthy(proc, url) for proc, url in self._start_bulk_servers(extra_env)]

    def _start_bulk_servers(self, extra_env: Optional[dict[str, str]]) -> list[tuple[Proc, str]]:
        env = dict(self.env, **(extra_env or {}))
        first = env["ATHENA_EMBEDDINGS_BULK_URL"]
        urls = [copy_url(first, i) for i in range(int(env.get("ATHENA_EMBEDDINGS_BULK_SERVERS", "1")))]
        return [(self._start_llama("embeddings-bulk", url, extra_env, copy=i + 1), url) for i, url in enumerate(urls)]

    def everything(self, node: str) -> None:
        """The servers, then one worker per queue, named `<queue>@<node>`."""
        self.servers()
        for queue in ALL_QUEUES:
            self.worker(queue, node)

    def stop_all(self, timeout: float = 20) -> None:
        """SIGTERM to every process at once, then to Redis once they have stopped (a worker
        shutting down still talks to it); whatever is left after `timeout` seconds is killed."""
        redis_servers = [proc for proc in self.procs if proc.name.startswith("redis-")]
        for wave in ([proc for proc in self.procs if proc not in redis_servers], redis_servers):
            for proc in wave:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for proc in wave:
                proc.wait_or_kill(deadline)

    def tails(self) -> str:
        return "\n".join(proc.log_tail() for proc in self.procs)


class UpStack:
    """`athena-inference up`, as a user starts it, on free ports and in a cache
    dir of its own (sharing the machine's built llama-server): its own Redis
    with a password, every lane's server, every worker, Flower and the exporter."""

    def __init__(self, workdir: Path, **extra_env: str) -> None:
        from athena_inference.config.settings import load_settings
        from athena_inference.workers.ops.provision import provision

        self.env = local_stack_env(**extra_env)
        self.cache_dir = workdir / "up-cache"
        self.env["ATHENA_CACHE_DIR"] = str(self.cache_dir)
        self.env["ATHENA_LLAMA_SERVER_BIN"] = str(provision(load_settings()).llama_server)
        self.popen = subprocess.Popen([*CLI, "up"], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        for line in self.popen.stdout:
            self.output.append(line)
            if "stack is up" in line:
                break
        else:
            raise RuntimeError(f"up exited with {self.popen.wait()} before the stack was up:\n{''.join(self.output[-40:])}")
        # Keep reading, so `up` never blocks on a full pipe.
        threading.Thread(target=lambda: self.output.extend(self.popen.stdout), daemon=True).start()

    def url(self, name: str) -> str:
        """ATHENA_BROKER_URL or ATHENA_RESULT_BACKEND, with the password `up` made."""
        from athena_inference.workers.ops.stack import with_password

        return with_password(self.env[name], (self.cache_dir / "redis-password").read_text().strip())

    def stop(self, timeout: float = 60) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)


class RestartableRedis:
    """The embedded Redis (`athena-inference serve redis`: append-only file, a password)
    of a stack, which a test or bench can stop and start again on the same port and folder."""

    def __init__(self, stack: Stack, port: int, cache_dir: Path, password: str) -> None:
        self.stack, self.port = stack, port
        self.env = {"ATHENA_CACHE_DIR": str(cache_dir)}
        self.client = redis.Redis(port=port, password=password, socket_timeout=2)
        self.proc = self.start()

    def start(self) -> Proc:
        proc = self.stack.start(f"redis-{self.port}", [*CLI, "serve", "redis"], self.env)
        wait_for(self.client.ping, f"redis on {self.port}", 30, proc)
        return proc

    def restart(self, stopped: threading.Event, down_s: float) -> float:
        """SIGTERM, wait for the exit, stay down `down_s`, start again; the seconds Redis was away."""
        began = time.monotonic()
        os.kill(self.proc.popen.pid, signal.SIGTERM)
        assert self.proc.popen.wait(timeout=30) == 0
        stopped.set()
        time.sleep(down_s)
        self.proc = self.start()
        return time.monotonic() - began
