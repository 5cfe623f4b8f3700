"""Consolidation's payloads: episodic events in, semantic patterns out.

An event is `id, timestamp, event_type, content, tags`; a pattern is
`description, type, confidence, tags, evidence, source_events`. Athena's own
events (`athena.episodic.models.EpisodicEvent`, or their `model_dump()`) are
taken as they are: the fields consolidation does not read stay out of the
prompt, and the ones it reads are validated as strictly as ever.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from difflib import SequenceMatcher
from typing import Annotated, Any, Callable, Iterable, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from athena_client.contract.limits import DEFAULT_LIMITS, capped
from athena_client.contract.payloads import NonBlankText, ShortText, TaskTiming, VectorOrigin
from athena_client.contract.vectors import Vector

# A cluster is what a consolidation pass looks at together; more than this is a
# batch job, not a cluster, and is refused rather than silently cut.
MAX_EVENTS = DEFAULT_LIMITS.events
PatternType = Literal["pattern", "decision", "workflow", "fact"]
# The fields of Athena's EpisodicEvent that consolidation does not read. An
# event carrying any of them is Athena's shape: these are dropped, and any
# other unknown field is still refused (a typo must not pass silently).
ATHENA_EVENT_FIELDS = frozenset({
    "project_id", "session_id", "outcome", "context", "duration_ms", "files_changed", "lines_added",
    "lines_deleted", "learned", "confidence", "evidence_type", "source_id", "evidence_quality",
    "lifecycle_status", "consolidation_score", "last_activation", "activation_count", "code_event_type",
    "file_path", "symbol_name", "symbol_type", "language", "diff", "git_commit", "git_author", "test_name",
    "test_passed", "error_type", "stack_trace", "performance_metrics", "code_quality_score", "project_name",
    "project_goal", "project_phase_status", "importance_score", "actionability_score",
    "context_completeness_score", "has_next_step", "has_blocker", "required_decisions",
})
Described = TypeVar("Described", bound=BaseModel)
# A score between 0 and 1 in a JSON schema the model is held to: llama.cpp's
# grammar bounds integers but not other numbers (a "maximum": 1 let SmolLM2
# write 1.5), so the scores are the twenty-one steps of 0.05 instead.
UNIT_SCORE_SCHEMA = {"enum": [round(step * 0.05, 2) for step in range(21)]}
# Athena keeps legacy events with no type.
UNTYPED_EVENT = "unspecified"


class EpisodicEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    timestamp: datetime
    event_type: Annotated[NonBlankText, capped("short_chars")]
    content: Annotated[NonBlankText, capped("event_chars")]
    tags: list[ShortText] = Field(default_factory=list, max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _from_athena(cls, data: Any) -> Any:
        if isinstance(data, BaseModel) and not isinstance(data, EpisodicEvent):
            data = data.model_dump()
        if isinstance(data, dict) and ATHENA_EVENT_FIELDS & data.keys():
            return athena_event_fields(data)
        return data

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value):
        # Athena's ids are BIGSERIAL numbers or strings; both travel as text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def athena_event_fields(event: dict[str, Any]) -> dict[str, Any]:
    """Athena's event as ours: its own extra fields dropped, a missing type or id filled in."""
    kept = {key: value for key, value in event.items() if key not in ATHENA_EVENT_FIELDS}
    if kept.get("event_type") is None:
        kept["event_type"] = UNTYPED_EVENT
    if kept.get("id") is None:
        # An event not yet stored has no id; its content and time stand in, so patterns can still cite it.
        seed = f"{kept.get('timestamp')}|{kept.get('content')}".encode("utf-8", "replace")
        kept["id"] = "sha:" + hashlib.sha256(seed).hexdigest()[:12]
    return kept


class ConsolidateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # True: compress the events before reasoning, always; False: never. "auto": only
    # when the compressor's expected time is less than the reasoning prompt time it
    # saves, both as measured on this stack (`CompressionGate`, in the prepare stage's timing).
    compress: Union[bool, Literal["auto"]] = "auto"
    max_patterns: int = Field(default=5, ge=1, le=20)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    embed_patterns: bool = False


class ConsolidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: Annotated[list[EpisodicEvent], Field(min_length=1), capped("events")]
    options: ConsolidateOptions = ConsolidateOptions()

    @model_validator(mode="after")
    def _unique_ids(self) -> "ConsolidateRequest":
        ids = [event.id for event in self.events]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"event ids must be unique; repeated: {duplicates[:10]}")
        # Events are ordered by time; a naive time has no place beside an aware one.
        aware = {event.timestamp.tzinfo is not None for event in self.events}
        if len(aware) > 1:
            raise ValueError("event timestamps mix ones with a time zone and ones without; give all or none a time zone")
        return self


class Pattern(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    description: Annotated[ShortText, Field(min_length=1)]
    type: PatternType
    confidence: float = Field(ge=0.0, le=1.0)
    tags: Annotated[list[ShortText], capped("list_items")] = Field(default_factory=list)
    evidence: Annotated[list[ShortText], capped("list_items")] = Field(default_factory=list)
    source_events: Annotated[list[ShortText], Field(min_length=1), capped("events")]
    # Filled when the caller asked for embedded patterns.
    embedding: Optional[Vector] = None

    def athena_dict(self, events_by_id: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Athena's Pattern shape: `evidence` as one string, and `source_events` as the
        input events themselves where `events_by_id` has them (their ids otherwise)."""
        found = events_by_id or {}
        return {
            "description": self.description,
            "type": self.type,
            "confidence": self.confidence,
            "tags": list(self.tags),
            "evidence": "; ".join(self.evidence),
            "source_events": [found.get(i, i) for i in self.source_events],
            "source_event_ids": list(self.source_events),
        }


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def near_duplicates(a: str, b: str, threshold: float = 0.85) -> bool:
    """Two descriptions that say the same thing, give or take case, punctuation and a word or two."""
    first, second = _normalised(a), _normalised(b)
    return first == second or SequenceMatcher(None, first, second).ratio() >= threshold


def _join_patterns(kept: "Pattern", twin: "Pattern") -> None:
    kept.confidence = max(kept.confidence, twin.confidence)
    kept.tags = list(dict.fromkeys([*kept.tags, *twin.tags]))
    kept.evidence = list(dict.fromkeys([*kept.evidence, *twin.evidence]))
    kept.source_events = list(dict.fromkeys([*kept.source_events, *twin.source_events]))


def merge_near_duplicates(items: Iterable[Described], join: Callable[[Described, Described], None] = _join_patterns) -> list[Described]:
    """One item per thing said: a near-duplicate (by `description`) is joined into
    the first item like it, by default keeping the higher confidence and the union
    of tags, evidence and sources."""
    merged: list = []
    for item in items:
        kept = next((k for k in merged if near_duplicates(k.description, item.description)), None)
        if kept is None:
            merged.append(item.model_copy(deep=True))
        else:
            join(kept, item)
    return merged


class CompressionGate(BaseModel):
    """Whether a consolidation's events were compressed before reasoning, and the figures it was decided on.

    Compressing pays when the compressor takes less time than the reasoning
    server would spend reading the tokens it removes. Both rates are medians of
    the stack's own recent runs (metrics samples), so the decision follows the
    models and the hardware actually serving.
    """

    asked: Union[bool, Literal["auto"]]
    compress: bool
    event_chars: int
    event_tokens: int
    # The compressor's time per 1,000 characters of input; None before it has run on this stack.
    compressor_ms_per_kchar: Optional[float] = None
    # The reasoning server's time per prompt token it had to read (not cached).
    prompt_ms_per_token: Optional[float] = None
    expected_compress_ms: Optional[float] = None
    saved_prompt_ms: Optional[float] = None
    reason: str


class StageTiming(BaseModel):
    stage: Literal["prepare", "compression", "reasoning", "repair", "embedding"]
    queue: str
    queue_wait_ms: Optional[float] = None
    run_ms: float
    # On the prepare stage: whether the events go to the compressor first, and why.
    compression_gate: Optional[CompressionGate] = None


class ConsolidationResult(BaseModel):
    patterns: list[Pattern]
    # Events left out to fit the model's context, oldest first; never silent.
    dropped_event_ids: list[str] = []
    repaired: bool = False
    compressed: bool = False
    # Of the events' tokens, the share the compressor kept (COMPRESSION_RATE is asked), when it ran.
    compression_ratio: Optional[float] = None
    model: str
    # What made the patterns' embeddings, when they were asked for (embed_patterns).
    embedding_origin: Optional[VectorOrigin] = None
    stages: list[StageTiming]
    total_ms: float
    timing: Optional[TaskTiming] = None
