"""Every setting, typed, read once from the environment.

Athena's existing names (`LLAMACPP_*`) are kept so its deployment carries over;
everything new is prefixed `ATHENA_`. With nothing set, the values describe the
embedded default stack that `athena-inference up` brings up on the local machine.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Optional
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from athena_client.errors import ConfigurationError
from athena_client.validation import describe
from athena_inference.config.retry import RetryPolicy

ENV_PREFIX = "ATHENA_"
# Values that examples and templates ship with; a deployment that still carries
# one has not set its secret, so it is refused at start rather than run open.
PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "change_me", "password", "secret", "redis", "example", "placeholder", "xxx", "todo"}
)
LLMLINGUA2_MODEL = "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")
RESULT_SCHEMES = ("redis", "rediss")


def _athena_name(name: str) -> AliasChoices:
    """Keep Athena's own variable name as the one this setting is read from."""
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True)

    # --- model servers (Athena's names) ---
    embeddings_url: str = Field("http://127.0.0.1:8001", validation_alias=_athena_name("LLAMACPP_EMBEDDINGS_URL"))
    reasoning_url: str = Field("http://127.0.0.1:8002", validation_alias=_athena_name("LLAMACPP_REASONING_URL"))
    # The bulk lane: a second server with the same model for re-embedding jobs,
    # so a job's batches never wait in front of an interactive embed. It may be
    # set to LLAMACPP_EMBEDDINGS_URL, at the cost of that isolation.
    embeddings_bulk_url: str = "http://127.0.0.1:8003"
    # The embedded default embeds with all-MiniLM-L6-v2 (384-d); Athena's production
    # nomic-embed-text-v1.5 is 768-d and sets this to 768.
    embedding_dim: int = Field(384, ge=1, le=65536, validation_alias=_athena_name("LLAMACPP_EMBEDDING_DIM"))
    # Threads for each llama-server this project starts. One each on a 2-core
    # machine keeps the embedding server from fighting the reasoning server.
    n_threads: int = Field(1, ge=1, le=512, validation_alias=_athena_name("LLAMACPP_N_THREADS"))
    # Per-server thread counts; unset, each server takes LLAMACPP_N_THREADS.
    embeddings_threads: Optional[int] = Field(None, ge=1, le=512)
    reasoning_threads: Optional[int] = Field(None, ge=1, le=512)
    embeddings_bulk_threads: Optional[int] = Field(None, ge=1, le=512)

    # --- server slots = worker concurrency ---
    # A worker takes only as many tasks as its server has slots, so the backlog
    # waits in the broker (visible to Flower), not inside llama-server.
    embeddings_slots: int = Field(2, ge=1, le=64)
    reasoning_slots: int = Field(1, ge=1, le=64)
    embeddings_bulk_slots: int = Field(1, ge=1, le=64)
    # CPU priority (nice) of each llama-server the stack starts. Generation is bulk
    # work; the embedding server answers interactive calls, so on a small machine
    # the reasoning server yields the CPU to it.
    embeddings_nice: int = Field(0, ge=0, le=19)
    reasoning_nice: int = Field(10, ge=0, le=19)
    # The bulk server takes only the CPU nothing interactive wants.
    embeddings_bulk_nice: int = Field(19, ge=0, le=19)
    # CPUs each llama-server the stack starts is pinned to: "auto" puts the
    # embedding server on the first CPUs and the reasoning server on the last ones
    # when there are enough for both, "none" leaves them to the scheduler, or a
    # list such as "0,1". Pinned apart, a generation cannot push the embedding
    # server off its core (bench/isolation.py: p95 ratio 1.04x pinned, 1.40x not).
    embeddings_cpus: str = Field("auto", pattern=r"^(auto|none|\d+(,\d+)*)$")
    reasoning_cpus: str = Field("auto", pattern=r"^(auto|none|\d+(,\d+)*)$")
    # Unpinned by default: at nice 19 it may use any CPU left idle.
    embeddings_bulk_cpus: str = Field("none", pattern=r"^(auto|none|\d+(,\d+)*)$")
    # Longest text, in tokens, one embedding input may have: the server runs with
    # -b = -ub = this, and a longer text is refused with InputTooLong.
    embedding_max_tokens: int = Field(512, ge=8, le=131072)
    # Context per reasoning slot.
    reasoning_ctx: int = Field(4096, ge=256, le=1048576)

    # --- embedded default stack ---
    embeddings_model_path: Optional[Path] = None
    reasoning_model_path: Optional[Path] = None
    llama_server_bin: Optional[Path] = None
    # The default llama.cpp build (GGML_NATIVE=ON) dies with "Illegal instruction" on
    # VMs whose CPUs advertise AMX the hypervisor does not allow; this portable AVX2
    # build runs there and lost nothing measurable. On your own hardware, a native build may be faster.
    llama_cmake_args: str = (
        "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
        "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF"
    )
    cache_dir: Path = Path("~/.cache/athena-inference").expanduser()
    flower_port: int = Field(5555, ge=1, le=65535)
    # 0.0.0.0 in a container, where the port is published instead.
    flower_address: str = "127.0.0.1"
    # "user:password"; when unset, `up` makes a random password and keeps it in cache_dir.
    flower_basic_auth: Optional[SecretStr] = None
    # Flower shows every task's arguments and results: it starts without a
    # password only when this says so.
    flower_unauthenticated: bool = False
    exporter_port: int = Field(9808, ge=1, le=65535)
    exporter_address: str = "127.0.0.1"

    # --- production models (`athena-inference models`) ---
    model_hub_url: str = "https://huggingface.co"
    # For gated models; sent as a bearer token.
    model_hub_token: Optional[SecretStr] = None
    # Default: <cache_dir>/models/production
    models_dir: Optional[Path] = None

    # --- compression (LLMLingua, inside the compression worker) ---
    compression_enabled: bool = True
    # auto: LLMLingua-2 when its model is on disk, else the perplexity method.
    compression_method: Literal["auto", "llmlingua2", "perplexity"] = "auto"
    # Default: <cache_dir>/models/llmlingua-2-bert-base-multilingual-cased-meetingbank
    compression_llmlingua2_model: Optional[Path] = None
    # Causal LM for the perplexity method. Default: SmolLM2-135M-Instruct, made
    # from its GGUF by `athena-inference provision`.
    compression_lm_path: Optional[Path] = None
    compression_device: str = "cpu"
    compression_cache_ttl_s: int = Field(86400, ge=0)
    # What the paid API charges per million input tokens, for the money-saved figure.
    compression_price_per_million_usd: float = Field(3.0, ge=0)

    # --- broker, results, metrics ---
    broker_url: str = "redis://127.0.0.1:6380/0"
    result_backend: str = "redis://127.0.0.1:6380/1"
    # Defaults to the result backend's Redis.
    metrics_url: Optional[str] = None
    metrics_window: int = Field(10000, ge=10, le=1_000_000)
    result_expires_s: int = Field(86400, ge=60)

    # --- re-embedding jobs ---
    # A job runner holds its job through a lease it renews; a killed runner's job
    # can be resumed once the lease has run out.
    job_lease_s: float = Field(30.0, gt=0)
    # A batch with no result after this long is sent again (its worker may have died).
    job_batch_timeout_s: float = Field(300.0, gt=0)
    # Vectors of texts already embedded, keyed by model and text hash.
    embedding_cache_ttl_s: int = Field(7 * 86400, ge=0)

    # --- HTTP to the servers, and retries ---
    connect_timeout_s: float = Field(5.0, gt=0)
    embed_timeout_s: float = Field(60.0, gt=0)
    reason_timeout_s: float = Field(600.0, gt=0)
    # Attempts in all (1 = no retry) on connection errors and 503 while loading.
    retry_attempts: int = Field(5, ge=1, le=50)
    retry_backoff_s: float = Field(0.5, ge=0)
    retry_backoff_max_s: float = Field(8.0, ge=0)

    # --- per-kind hard time limits (a soft limit fires 10% earlier) ---
    embed_time_limit_s: int = Field(300, ge=1)
    reason_time_limit_s: int = Field(1200, ge=1)
    compression_time_limit_s: int = Field(600, ge=1)
    consolidation_time_limit_s: int = Field(1800, ge=1)
    # Redis redelivers an unacknowledged task after this long. With acks_late, a
    # task still running then would run twice, so it must outlast every time limit.
    visibility_timeout_s: int = Field(7200, ge=60)

    @field_validator("embeddings_url", "reasoning_url", "embeddings_bulk_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http(s)://host:port, got {value!r}")
        return value.rstrip("/")

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        return _no_placeholder(urlsplit(value).password, _check_scheme(value, BROKER_SCHEMES))

    @field_validator("result_backend", "metrics_url")
    @classmethod
    def _redis_url(cls, value: Optional[str]) -> Optional[str]:
        return None if value is None else _no_placeholder(urlsplit(value).password, _check_scheme(value, RESULT_SCHEMES))

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_password(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        if value is not None:
            user, _, password = value.get_secret_value().partition(":")
            if not user or not password:
                raise ValueError("expected user:password")
            _no_placeholder(password, value)
        return value

    @field_validator(
        "cache_dir",
        "embeddings_model_path",
        "reasoning_model_path",
        "llama_server_bin",
        "compression_llmlingua2_model",
        "compression_lm_path",
        "models_dir",
    )
    @classmethod
    def _expand(cls, value: Optional[Path]) -> Optional[Path]:
        return None if value is None else value.expanduser()

    @model_validator(mode="after")
    def _visibility_outlasts_tasks(self) -> "Settings":
        longest = max(
            self.embed_time_limit_s,
            self.reason_time_limit_s,
            self.compression_time_limit_s,
            self.consolidation_time_limit_s,
        )
        if self.visibility_timeout_s <= longest:
            raise ValueError(
                f"ATHENA_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed the longest task "
                f"time limit ({longest} s), or a long task is delivered twice"
            )
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError("ATHENA_RETRY_BACKOFF_MAX_S must be at least ATHENA_RETRY_BACKOFF_S")
        return self

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retry_attempts, backoff_s=self.retry_backoff_s, backoff_max_s=self.retry_backoff_max_s)

    @property
    def metrics_redis_url(self) -> str:
        return self.metrics_url or self.result_backend

    @property
    def llmlingua2_model_dir(self) -> Path:
        return self.compression_llmlingua2_model or self.cache_dir / "models" / LLMLINGUA2_MODEL.split("/")[1]

    @property
    def production_models_dir(self) -> Path:
        return self.models_dir or self.cache_dir / "models" / "production"

    @property
    def compression_lm_dir(self) -> Path:
        return self.compression_lm_path or self.cache_dir / "models" / "SmolLM2-135M-Instruct-hf"


def _no_placeholder(password: Optional[str], value):
    if password is not None and password.lower() in PLACEHOLDER_SECRETS:
        raise ValueError(f"the password is the placeholder {password!r}; set a real secret")
    return value


def _check_scheme(value: str, schemes: tuple[str, ...]) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in schemes:
        raise ValueError(f"scheme {scheme or '(none)'!r} is not one of {', '.join(schemes)}")
    return value


def env_name(field: str) -> str:
    """The environment variable a field is read from, for error messages and docs."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def load_settings(**overrides) -> Settings:
    """Read settings, turning pydantic's report into one message that names each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # pydantic reports an aliased field (Athena's LLAMACPP_* names) under its alias.
        names = {field: env_name(field) for field in Settings.model_fields}
        names.update({name: name for name in names.values()})

        def variable(loc: tuple) -> str:
            return names.get(str(loc[0]), "settings") if loc else "settings"

        problems = describe(exc, name=variable, separator="\n  ")
        raise ConfigurationError("invalid settings:\n  " + problems) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()
