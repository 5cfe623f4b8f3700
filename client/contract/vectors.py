"""Vectors: lists of floats to every reader, base64 float32 on the queues' own wire.

A result's vectors reach Python as `list[float]`, and `model_dump()` or
`model_dump_json()` give lists, as anyone reading the contract expects. Between
a worker and a client, though, where the result is encoded, stored in Redis,
published and decoded again, 384 floats as JSON text take 8 KB and a tenth of
a millisecond to encode (bench/queue_cpu.py); a batch of 512 such vectors a
tenth of a second. So the queues' own wire (`WIRE`, the serialization context
the workers and the client dump with) carries each vector as the base64 of its
little-endian float32 bytes, 2 KB, encoded in microseconds. Reading accepts
either form, so a result or request written as lists still validates.

The servers compute in float32, so their vectors cross the wire unchanged;
a vector made in Python (a Matryoshka cut renormalised, the mean of a long
text's windows) is rounded to float32, a relative change under 1e-7.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, SerializationInfo

# The serialization context of the queues' own wire: `model_dump(mode="json", context=WIRE)`.
WIRE = {"vectors": "base64-float32"}


def _from_wire(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        packed = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("a vector given as text must be base64 of float32 values") from None
    if len(packed) % 4:
        raise ValueError(f"a base64 vector must hold whole float32 values; it holds {len(packed)} bytes")
    floats = array("f")
    floats.frombytes(packed)
    if sys.byteorder != "little":
        floats.byteswap()
    return floats.tolist()


def _to_wire(value: list[float], info: SerializationInfo) -> Any:
    if info.context != WIRE:
        return value
    floats = array("f", value)
    if sys.byteorder != "little":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode("ascii")


Vector = Annotated[list[float], BeforeValidator(_from_wire), PlainSerializer(_to_wire, when_used="json")]
