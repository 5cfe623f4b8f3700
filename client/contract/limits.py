"""Size caps on every string and list a task takes, so no payload can be 20 MB of text.

Each cap is a setting on the workers (`ATHENA_MAX_*`, see docs/settings.md).
A worker validates a payload with its settings' caps in the validation context
(`parse(model, data, limits=...)`); anywhere else (the client checking a request
before it sends it) the defaults below apply.
"""

from __future__ import annotations

from typing import Any, Sized

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo


class PayloadLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    # One text to embed (a 66,000-character memory must fit: jobs chunk it).
    embed_text_chars: int = Field(200_000, ge=1)
    batch_texts: int = Field(512, ge=1)
    bulk_texts: int = Field(1024, ge=1)
    # A prompt, system message, instruction or question.
    prompt_chars: int = Field(200_000, ge=1)
    # A context to compress.
    context_chars: int = Field(400_000, ge=1)
    # A JSON schema (as JSON) or a grammar.
    schema_chars: int = Field(100_000, ge=1)
    events: int = Field(500, ge=1)
    event_chars: int = Field(20_000, ge=1)
    # Tags, stop strings, force tokens.
    list_items: int = Field(100, ge=1)
    # An id, a tag, an event type, a stop string.
    short_chars: int = Field(1_000, ge=1)


DEFAULT_LIMITS = PayloadLimits()
WHAT = {
    "embed_text_chars": "characters", "batch_texts": "texts", "bulk_texts": "texts", "prompt_chars": "characters",
    "context_chars": "characters", "schema_chars": "characters", "events": "events", "event_chars": "characters",
    "list_items": "items", "short_chars": "characters",
}


def limits_of(info: ValidationInfo) -> PayloadLimits:
    context = info.context if isinstance(info.context, dict) else {}
    return context.get("limits") or DEFAULT_LIMITS


def capped(limit: str) -> AfterValidator:
    """A validator refusing a string or list longer than the cap named `limit`."""

    def check(value: Any, info: ValidationInfo) -> Any:
        cap = getattr(limits_of(info), limit)
        if isinstance(value, Sized) and len(value) > cap:
            raise ValueError(f"holds {len(value)} {WHAT[limit]}; the most allowed is {cap} (ATHENA_MAX_{limit.upper()})")
        return value

    return AfterValidator(check)
