"""Pydantic's complaints as one readable line, and payload parsing that fails as `InvalidInput`.

Every border that validates (the client building a request, a task reading
its payload, the CLI reading its options, the consolidation stage reading a
model's answer) reports problems through `describe`, so they read the same
everywhere.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from athena_client.contract.errors import InvalidInput
from athena_client.contract.limits import PayloadLimits

ModelT = TypeVar("ModelT", bound=BaseModel)


def _dotted(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "payload"


def describe(exc: ValidationError, *, name: Callable[[tuple], str] = _dotted, separator: str = "; ") -> str:
    """Every problem, each as `<where>: <what>`; `name` turns pydantic's location into the caller's word for it."""
    return separator.join(f"{name(error['loc'])}: {error['msg']}" for error in exc.errors())


def parse(model: type[ModelT], data: Any, limits: Optional[PayloadLimits] = None) -> ModelT:
    """`data` as `model`, or InvalidInput naming the model and every bad field.

    `limits` are the size caps to hold strings and lists to (a worker's
    settings); without them, the defaults apply.
    """
    try:
        return model.model_validate(data, context={"limits": limits} if limits is not None else None)
    except ValidationError as exc:
        raise InvalidInput(f"invalid {model.__name__}: {describe(exc)}") from None
