"""How often, and how far apart, a failed call is tried again: one policy, used wherever we retry."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetryPolicy(BaseModel):
    """Attempts in all (1 = no retry), with exponential backoff between them, capped."""

    model_config = ConfigDict(frozen=True)

    attempts: int = Field(5, ge=1)
    backoff_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)

    @model_validator(mode="after")
    def _cap_at_least_base(self) -> "RetryPolicy":
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_max_s must be at least backoff_s")
        return self

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the `failed_attempts`-th failure."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (failed_attempts - 1))
