"""Consolidation's payloads: episodic events in, semantic patterns out.

These are Athena's own shapes: an event has `id, timestamp, event_type,
content, tags`; a pattern has `description, type, confidence, tags, evidence,
source_events`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from athena_client.payloads import NonBlankText, TaskTiming

# A cluster is what a consolidation pass looks at together; more than this is a
# batch job, not a cluster, and is refused rather than silently cut.
MAX_EVENTS = 500
PatternType = Literal["pattern", "decision", "workflow", "fact"]


class EpisodicEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    timestamp: datetime
    event_type: NonBlankText
    content: NonBlankText
    tags: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value):
        # Athena's ids are BIGSERIAL numbers or strings; both travel as text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ConsolidateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    compress: bool = False
    max_patterns: int = Field(default=5, ge=1, le=20)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    embed_patterns: bool = False


class ConsolidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[EpisodicEvent] = Field(min_length=1, max_length=MAX_EVENTS)
    options: ConsolidateOptions = ConsolidateOptions()

    @model_validator(mode="after")
    def _unique_ids(self) -> "ConsolidateRequest":
        ids = [event.id for event in self.events]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"event ids must be unique; repeated: {duplicates[:10]}")
        return self


class Pattern(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1)
    type: PatternType
    confidence: float = Field(ge=0.0, le=1.0)
    tags: list[str] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list)
    source_events: list[str] = Field(min_length=1)
    # Filled when the caller asked for embedded patterns.
    embedding: Optional[list[float]] = None


class StageTiming(BaseModel):
    stage: Literal["prepare", "compression", "reasoning", "repair", "embedding"]
    queue: str
    queue_wait_ms: Optional[float] = None
    run_ms: float


class ConsolidationResult(BaseModel):
    patterns: list[Pattern]
    # Events left out to fit the model's context, oldest first; never silent.
    dropped_event_ids: list[str] = []
    repaired: bool = False
    compressed: bool = False
    model: str
    stages: list[StageTiming]
    total_ms: float
    timing: Optional[TaskTiming] = None
