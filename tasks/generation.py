"""The running task's chat completions, stoppable and, when asked, streamed.

`TaskGeneration(server).chat(...)` is `server.chat(...)` watched under the
task's id (workers/generation_watch.py): a caller's `cancel` stops it at the
server within a poll, and so does the server's read timeout, counted over the
whole answer. With `stream=True` each piece goes to the task's Redis stream as
the server writes it, and the stream ends with how the generation ended; a
call that does not stream writes nothing there.
"""

from __future__ import annotations

from typing import Any

from athena_client.shared_redis.piece_streams import PieceStreams
from athena_inference.tasks import seams
from athena_inference.tasks.base import running_clock
from athena_inference.workers.llama_server import Completion, LlamaServer


class TaskGeneration:
    def __init__(self, server: LlamaServer, *, stream: bool = False) -> None:
        self._server = server
        self._stream = stream

    def chat(self, messages: list[dict[str, str]], **options: Any) -> Completion:
        task_id = running_clock().task_id
        if task_id is None:
            # Called as a function, outside a worker: nothing can cancel it.
            return self._server.chat(messages, **options)
        streams = seams.piece_streams() if self._stream else None
        on_piece = _Appender(streams, task_id) if streams is not None else None
        watch = seams.generation_watch()
        try:
            with watch.watching(task_id, timeout_s=self._server.read_timeout_s, on_piece=on_piece) as generation:
                out = self._server.chat(messages, generation=generation, **options)
        except BaseException as exc:
            if streams is not None:
                streams.end(task_id, exc.__class__.__name__)
            raise
        if streams is not None:
            streams.end(task_id, "ok")
        return out


class _Appender:
    def __init__(self, streams: PieceStreams, task_id: str) -> None:
        self._streams = streams
        self._task_id = task_id
        self._first = True

    def __call__(self, text: str) -> None:
        self._streams.append(self._task_id, text, first=self._first)
        self._first = False

