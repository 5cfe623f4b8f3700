"""One exception family for everything the inference back end can refuse.

    AthenaError
    ├── InvalidInput            the request itself is wrong; retrying cannot help
    │   └── InputTooLong        a text exceeds what the server accepts in one batch
    ├── ServerUnavailable       connection refused or 503 while loading, after retries
    ├── ServerTimeout           the server took longer than the configured timeout
    ├── ServerError             the server answered with an error or a malformed reply
    ├── ModelOutputInvalid      the model's answer failed validation, even after a repair attempt
    ├── CompressionUnavailable  compression is switched off or its model is missing
    └── ConfigurationError      a setting is wrong (named in the message)
        └── DimensionMismatch   the embedding server's vectors are not the configured size

Every class takes one message string, so Celery can carry it through a JSON
result backend and rebuild it on the caller's side.
"""


class AthenaError(Exception):
    """Base of every error raised by Athena's inference back end."""


class InvalidInput(AthenaError):
    """The request is malformed or out of range."""


class InputTooLong(InvalidInput):
    """A text has more tokens than the server can take in one batch."""


class ServerUnavailable(AthenaError):
    """The model server could not be reached or was still loading, after retries."""


class ServerTimeout(AthenaError):
    """The model server did not answer within the configured timeout."""


class ServerError(AthenaError):
    """The model server answered with an error or with a reply we cannot read."""


class ModelOutputInvalid(AthenaError):
    """The model's answer did not validate, even after one repair attempt; the message keeps its raw text."""


class CompressionUnavailable(AthenaError):
    """Prompt compression is switched off or its model is missing."""


class ConfigurationError(AthenaError):
    """A setting is wrong; the message names it."""


class DimensionMismatch(ConfigurationError):
    """The embedding server returns vectors of another size than LLAMACPP_EMBEDDING_DIM."""
