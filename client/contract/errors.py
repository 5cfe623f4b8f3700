"""One exception family for everything the inference back end can refuse.

    RuntimeError
    └── AthenaError
        ├── InvalidInput            the request itself is wrong; retrying cannot help
        │   ├── InputTooLong        a text exceeds what the server accepts in one batch
        │   └── UnknownTask         no queue, worker or stored result knows that task id
        ├── ServerUnavailable       connection refused or 503 while loading, after retries
        ├── ServerTimeout           the server took longer than the configured timeout
        ├── ServerError             the server answered with an error or a malformed reply
        ├── ModelOutputInvalid      the model's answer failed validation, even after a repair attempt
        ├── CompressionUnavailable  compression is switched off or its model is missing
        ├── JobError                a re-embedding job cannot start or go on
        │   └── JobNotFound         no job has that id
        ├── ConfigurationError      a setting is wrong (named in the message)
        │   └── DimensionMismatch   the embedding server's vectors are not the configured size
        ├── PoisonMessage           its worker died every time it ran the task; it is not run again
        ├── Expired                 its deadline passed before a worker started it; it never ran
        ├── Cancelled               a caller cancelled it (`client.cancel`); a generation stopped at the server
        └── InternalError           a worker failed in a way it has no class for (a bug); names the original

`AthenaError` is a `RuntimeError` because Athena's code already catches
`RuntimeError` around every model call (its old client raised nothing else);
`except RuntimeError` keeps working, and `except AthenaError` is the precise name.

Every class takes one message string, so Celery can carry it through a JSON
result backend and rebuild it on the caller's side.
"""

from typing import Optional


class AthenaError(RuntimeError):
    """Base of every error raised by Athena's inference back end."""


class InvalidInput(AthenaError):
    """The request is malformed or out of range."""


class InputTooLong(InvalidInput):
    """A text has more tokens than the server can take in one batch."""

    def __init__(self, message: str, positions: tuple[int, ...] = (), limit: Optional[int] = None) -> None:
        # Only the message travels through Celery; `positions` and `limit` (the
        # server's tokens per input, when it said) serve the worker that raised
        # it, to fail or cut those texts alone.
        super().__init__(message)
        self.positions = tuple(positions)
        self.limit = limit


class UnknownTask(InvalidInput):
    """No queue, worker or stored result knows the task id (never sent, or its result already read or expired)."""


class ServerUnavailable(AthenaError):
    """The model server could not be reached or was still loading, after retries."""

    def __init__(self, message: str, retry_after: Optional[float] = None) -> None:
        # `retry_after` (seconds), when known, serves the worker that retries the task.
        super().__init__(message)
        self.retry_after = retry_after


class ServerTimeout(AthenaError):
    """The model server did not answer within the configured timeout."""


class ServerError(AthenaError):
    """The model server answered with an error or with a reply we cannot read."""


class ModelOutputInvalid(AthenaError):
    """The model's answer did not validate, even after one repair attempt; the message keeps its raw text."""


class CompressionUnavailable(AthenaError):
    """Prompt compression is switched off or its model is missing."""


class JobError(AthenaError):
    """A re-embedding job cannot start or go on (held by another runner, wrong model, store problem)."""


class JobNotFound(JobError):
    """No job has that id."""


class ConfigurationError(AthenaError):
    """A setting is wrong; the message names it."""


class DimensionMismatch(ConfigurationError):
    """The embedding server returns vectors of another size than LLAMACPP_EMBEDDING_DIM."""


class PoisonMessage(AthenaError):
    """The task was delivered ATHENA_MAX_DELIVERIES times and its worker died each time (memory, a crash)."""


class Expired(AthenaError):
    """The task's deadline passed while it waited (in the queue, or for a retry); no worker ran it, no server saw it."""


class Cancelled(AthenaError):
    """A caller cancelled the task: queued, it never ran; running, its generation was stopped at the server."""


class InternalError(AthenaError):
    """A worker failed in a way none of the classes above describes; the message names the original exception."""
