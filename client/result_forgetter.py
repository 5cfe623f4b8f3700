"""Read results, deleted from the result backend off the caller's path.

A caller that has its answer should not wait one more Redis round trip for the
delete. Ids go to a thread that deletes them, several in one go when they
pile up; `close` deletes what is left before it returns. A delete that fails
(Redis away) is dropped: the result still expires (ATHENA_RESULT_EXPIRES_S).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Optional

log = logging.getLogger(__name__)

_STOP = object()


class ResultForgetter:
    def __init__(self, forget: Callable[[list[str]], None]) -> None:
        self._forget = forget
        self._ids: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def forget(self, task_id: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="athena-result-forgetter", daemon=True)
                self._thread.start()
        self._ids.put(task_id)

    def _run(self) -> None:
        while True:
            ids = [self._ids.get()]
            while not self._ids.empty() and len(ids) < 256:
                ids.append(self._ids.get())
            stop = _STOP in ids
            self._delete([i for i in ids if i is not _STOP])
            if stop:
                return

    def _delete(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            self._forget(ids)
        except Exception:  # noqa: BLE001 - the results expire anyway
            log.warning("could not delete %d read results; they expire by themselves", len(ids), exc_info=True)

    def close(self, timeout: float = 5.0) -> None:
        """Delete every id handed in so far, then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._ids.put(_STOP)
            thread.join(timeout)
