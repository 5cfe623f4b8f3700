"""The settings every llama-server has, written once.

Each lane with a server (config/registry.py) gets one `ATHENA_<SERVER>_<FIELD>`
variable per field below (`ATHENA_EMBEDDINGS_SLOTS`, `ATHENA_REASONING_NICE`,
...), with the lane's own defaults; Athena's `LLAMACPP_*_URL` names are kept
for its two servers. `Settings` holds them as plain fields, made from this
table, so a server's settings are read, validated and reported like any
other; `Settings.server(name)` gives them back as one `ServerSettings`. Adding
a setting every server has is one field here; adding a server is a row in the
registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional
from urllib.parse import urlsplit

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

CPUS_PATTERN = r"^(auto|none|\d+(,\d+)*)$"


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http(s)://host:port, got {value!r}")
    return value.rstrip("/")


def _expanded(value: Optional[Path]) -> Optional[Path]:
    return None if value is None else value.expanduser()


class ServerSettings(BaseModel):
    """One llama-server: where it listens, and how the stack runs it and its worker."""

    model_config = ConfigDict(frozen=True)

    url: Annotated[str, AfterValidator(_http_url)]
    # The server's --parallel, and the concurrency of the worker in front of it:
    # the backlog waits in the broker (visible to Flower), not inside llama-server.
    slots: int = Field(1, ge=1, le=64)
    # Unset: LLAMACPP_N_THREADS.
    threads: Optional[int] = Field(None, ge=1, le=512)
    # CPU priority (nice) of the server the stack starts.
    nice: int = Field(0, ge=0, le=19)
    # CPUs the server the stack starts is pinned to: "auto", "none" or a list such as "0,1".
    cpus: str = Field("auto", pattern=CPUS_PATTERN)
    # The GGUF the embedded server loads; unset, the provisioned default model.
    model_path: Annotated[Optional[Path], AfterValidator(_expanded)] = None


def server_fields(key: str, defaults: dict[str, Any], url_env: Optional[str]) -> dict[str, tuple[Any, FieldInfo]]:
    """Settings fields `<key>_<field>` for one server, with its defaults (and Athena's name for its URL)."""
    fields: dict[str, tuple[Any, FieldInfo]] = {}
    for name, info in ServerSettings.model_fields.items():
        field = FieldInfo.merge_field_infos(info, default=defaults.get(name, info.default))
        if name == "url" and url_env:
            field = FieldInfo.merge_field_infos(field, validation_alias=AliasChoices(url_env))
        fields[f"{key}_{name}"] = (info.annotation, field)
    return fields
