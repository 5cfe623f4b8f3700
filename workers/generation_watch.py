"""Generations a caller can stop: one watcher thread per worker process.

A running generation is registered here under its task id. The watcher looks
for cancel requests of every registered generation in one Redis round trip
every `poll_s` (20 ms), and stops the ones cancelled or past their time by
calling the abort their seam attached: the seam closes its HTTP connection, and
llama-server, failing to write its next token, ends the generation and frees
the slot. It runs in whatever pool the worker has (a prefork child, a thread,
solo): the thread is made in the process that runs the generation, on its
first one, never before fork.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from athena_client.shared_redis.cancel_requests import CancelRequests

log = logging.getLogger(__name__)

CANCELLED = "cancelled"
TIMED_OUT = "timed out"


class Generation:
    """One generation: how its seam stops it, why it stopped, where its pieces go.

    The seam calls `attach` once its request is open and `piece` for each piece
    of text; it reads `stopped` when its connection ends early.
    """

    def __init__(self, task_id: str, *, deadline: Optional[float], on_piece: Optional[Callable[[str], None]] = None) -> None:
        self.task_id = task_id
        # time.monotonic() past which the generation is stopped, or None.
        self.deadline = deadline
        self.stopped: Optional[str] = None
        self._on_piece = on_piece
        self._abort: Optional[Callable[[], None]] = None
        self._lock = threading.Lock()

    def attach(self, abort: Callable[[], None]) -> None:
        with self._lock:
            self._abort = abort
            stop_now = self.stopped is not None
        if stop_now:
            abort()

    def detach(self) -> None:
        with self._lock:
            self._abort = None

    @property
    def streams(self) -> bool:
        """Whether its pieces go to a reader as they come."""
        return self._on_piece is not None

    def piece(self, text: str) -> None:
        if self._on_piece is not None and text:
            self._on_piece(text)

    def stop(self, why: str) -> None:
        with self._lock:
            if self.stopped is not None:
                return
            self.stopped = why
            abort = self._abort
        if abort is not None:
            try:
                abort()
            except OSError:
                pass  # already closed: the generation has ended on its own


class GenerationWatch:
    def __init__(self, requests: CancelRequests, *, poll_s: float = 0.02) -> None:
        self._requests = requests
        self._poll_s = poll_s
        self._running: dict[str, Generation] = {}
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    @contextmanager
    def watching(
        self, task_id: str, *, timeout_s: Optional[float] = None, on_piece: Optional[Callable[[str], None]] = None
    ) -> Iterator[Generation]:
        """`task_id`'s generation, stopped by a cancel or after `timeout_s`, while the block runs."""
        generation = Generation(
            task_id, deadline=time.monotonic() + timeout_s if timeout_s is not None else None, on_piece=on_piece
        )
        with self._changed:
            self._running[task_id] = generation
            self._start()
            self._changed.notify_all()
        try:
            yield generation
        finally:
            generation.detach()
            with self._changed:
                if self._running.get(task_id) is generation:
                    del self._running[task_id]

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._watch, name="athena-generation-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while True:
            with self._changed:
                while not self._running:
                    self._changed.wait()
                running = dict(self._running)
            self.look(running)
            time.sleep(self._poll_s)

    def look(self, running: dict[str, Generation]) -> None:
        """One look: stop each of `running` that is cancelled or out of time."""
        now = time.monotonic()
        for generation in running.values():
            if generation.deadline is not None and now >= generation.deadline:
                generation.stop(TIMED_OUT)
        try:
            cancelled = self._requests.which(running)
        except Exception:  # noqa: BLE001 - Redis away: look again next time; the generation goes on meanwhile
            log.warning("could not look for cancel requests", exc_info=True)
            return
        for task_id in cancelled:
            running[task_id].stop(CANCELLED)
