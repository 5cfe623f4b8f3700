"""Copies of one llama-server, as one seam: each call goes to the least busy copy.

The bulk lane runs one single-thread llama-server per CPU rather than one
server with a thread per CPU (see `embeddings_bulk_servers` in settings for
why). A call leases a copy for all its requests and gives it back; a copy
that is down passes the call to the next.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Sequence, TypeVar

from athena_client.contract.errors import ServerUnavailable
from athena_client.contract.health import ServerHealth
from athena_inference.workers.llama_server import LlamaServer

T = TypeVar("T")


class ServerPool:
    """`first` is the copy this process prefers when all are equally busy: a
    prefork worker's processes each run one task at a time and cannot see one
    another's leases, so each starts from its own pool index and they spread."""

    def __init__(self, servers: Sequence[LlamaServer], *, first: int = 0) -> None:
        if not servers:
            raise ValueError("a server pool needs at least one server")
        self.servers = list(servers)
        self._busy = [0] * len(self.servers)
        self._first = first % len(self.servers)
        self._lock = threading.Lock()

    def call(self, work: Callable[[LlamaServer], T]) -> T:
        """`work` on the least busy copy. A copy that is unavailable (down, or
        its circuit open) hands the call to the next one not yet tried: a copy
        going away costs the lane its share of the CPU, not its batches. Once
        every copy has refused, the last refusal is raised, and the task's own
        retries take over."""
        tried: set[int] = set()
        while True:
            with self._lease(tried) as (index, server):
                try:
                    return work(server)
                except ServerUnavailable:
                    tried.add(index)
                    if len(tried) == len(self.servers):
                        raise

    @contextlib.contextmanager
    def _lease(self, skip: set[int]) -> Iterator[tuple[int, LlamaServer]]:
        with self._lock:
            order = [(self._first + step) % len(self.servers) for step in range(len(self.servers))]
            index = min((i for i in order if i not in skip), key=lambda i: self._busy[i])
            self._busy[index] += 1
        try:
            yield index, self.servers[index]
        finally:
            with self._lock:
                self._busy[index] -= 1

    def health(self) -> ServerHealth:
        """Ready when every copy is; otherwise the copies that are not, by URL."""
        looks = [(server.base_url, server.health()) for server in self.servers]
        if len(looks) == 1:
            return looks[0][1]
        down = [f"{url}: {look.detail}" for url, look in looks if not look.ready]
        models = {look.model for _, look in looks if look.ready}
        if down:
            return ServerHealth(ready=False, detail=f"{len(down)} of {len(looks)} copies not ready: " + "; ".join(down))
        if len(models) > 1:
            return ServerHealth(ready=False, detail=f"the copies serve different models: {', '.join(sorted(models))}")
        return ServerHealth(ready=True, detail=f"ok ({len(looks)} copies)", model=models.pop())

    def close(self) -> None:
        for server in self.servers:
            server.close()
