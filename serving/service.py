"""The running service: store, models, embedder, index keeper, micro-batcher, metrics -- and their life cycle.

Model work runs only in the micro-batcher's worker thread. A batch reads `self.models` once, so a reload
(an atomic reference swap) never changes the model under a batch: requests in flight finish on the old one.

Rollout: the registry lives in the store, so every replica sees a promotion. Each replica polls the promoted
versions (`XINFANG_REGISTRY_POLL_SECONDS`) and, when they change, reloads in the background (one reload at a
time, the same swap); a version it cannot load is refused and reported (`GET /v1/models`, /metrics, the log)
while the old models keep serving, until the promoted versions change again or an admin reloads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from xinfang.errors import ModelError, XinfangError
from xinfang.models.petition import Petition
from xinfang.models.registry import CLASSIFIER_TASKS, REPEAT_TASK, Registry
from xinfang.serving.auth import AuthThrottle
from xinfang.serving.batcher import MicroBatcher
from xinfang.serving.config import ServiceConfig
from xinfang.serving.index_keeper import IndexKeeper
from xinfang.serving.observability import Metrics
from xinfang.serving.registry_db import open_registry
from xinfang.serving.store import Store

log = logging.getLogger("xinfang.serving")


@dataclass
class ModelSet:
    """One loaded classification pipeline (swapped whole on reload)."""

    pipeline: Any
    info: dict
    model_dirs: list[Path]
    runtime: str
    generation: int
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    registry: dict[str, str] = field(default_factory=dict)  # {task: registry version} of the registry's bundles

    def versions(self) -> dict[str, dict]:
        out = {}
        for task, meta in self.info.items():
            if isinstance(meta, dict) and "version" in meta:
                out[task] = {"name": str(meta.get("name", task)), "version": str(meta["version"])}
        return out


def set_threads(n: int) -> None:
    """Intra-op threads for torch (ONNX Runtime sessions take the same number when created)."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


_INDEX_THREADS = threading.local()


def limit_index_threads(n: int) -> None:
    """FAISS (OpenMP) threads for searches made by the calling thread.

    OpenMP's thread count is a per-thread setting, so each thread that searches sets it (once). With the
    default of all cores, a one-query exact search at 100k vectors took 32 ms instead of 6 ms whenever the
    other core was busy (model inference, another process): the OpenMP team waits for a descheduled member,
    and the scan is bound by memory bandwidth anyway."""
    if getattr(_INDEX_THREADS, "n", None) != n:
        import faiss

        faiss.omp_set_num_threads(n)
        _INDEX_THREADS.n = n


def load_models(config: ServiceConfig, model_dirs: list[Path] | None, duty_list: Path | None,
                generation: int, registry: Registry | None = None) -> ModelSet:
    """Load a classification pipeline with the configured backend (ONNX files exported/quantized on first use);
    ModelError when a bundle fails its checks. Without `model_dirs`: the configured ones, with the promoted
    versions of `registry` in their place."""
    from xinfang.models.pipeline import ClassificationPipeline

    promoted: dict[str, str] = {}
    if model_dirs is None and registry is not None and config.registry:
        promoted = {t: v for t, v in registry.promoted_versions().items() if t in CLASSIFIER_TASKS}
    dirs = [Path(p) for p in (model_dirs or config.resolved_model_dirs(registry))]
    pipeline = ClassificationPipeline.from_paths(dirs, duty_list=duty_list or config.duty_list,
                                                 channel_table=config.channel_table, backend=config.runtime,
                                                 cache_dir=config.onnx_cache_dir, threads=config.threads)
    info = pipeline.info()
    return ModelSet(pipeline, info, dirs, config.runtime, generation, registry=promoted)


def load_scorer(config: ServiceConfig, registry: Registry | None = None) -> tuple[Any, str, str | None]:
    """(scorer, where it came from, its registry version): the registry's promoted one, the configured file,
    or the shipped default."""
    from xinfang.models.repeat_scorer import RepeatScorer

    version = registry.promoted(REPEAT_TASK) if registry is not None and config.registry else None
    path = config.resolved_scorer_path(registry)
    if path is None:
        return RepeatScorer.default(), "default", None
    return RepeatScorer.load(path), str(path), version if version and path.is_relative_to(registry.root) else None


class Service:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.auth_throttle = AuthThrottle(config.auth_fail_limit, config.auth_fail_seconds)
        self.store = Store(config.db_url)
        self.models: ModelSet | None = None
        self.model_error: str | None = None
        self.embedder = None
        self.scorer = None
        self.scorer_path: str | None = None
        self.scorer_version: str | None = None  # its registry version, when it came from the registry
        # the service only reads the registry (the actor is never recorded); no environment is read here
        self.registry: Registry | None = (open_registry(config.registry_cache_dir, store=self.store, actor="service")
                                          if config.registry else None)
        self.promoted_seen: dict[str, str] | None = None  # the promoted versions the follower last acted on
        self.rollout_refused: dict | None = None  # {"versions", "error", "at"} of the last refused promotion
        self._follow_thread: threading.Thread | None = None
        self.keeper: IndexKeeper | None = None
        self.batcher: MicroBatcher | None = None
        self.reload_lock = threading.Lock()
        self._stop = threading.Event()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        from xinfang.models.embedder import Embedder

        cfg = self.config
        t0 = time.perf_counter()
        set_threads(cfg.threads)
        if self.registry is not None:
            self.promoted_seen = self.registry.promoted_versions()
            if not self.promoted_seen and (cfg.registry_cache_dir / "registry.json").is_file():
                log.warning("a registry kept as files is in %s: import it into the store with `xinfang models "
                            "import-files %s`", cfg.registry_cache_dir, cfg.registry_cache_dir)
        try:
            self.models = load_models(cfg, None, None, generation=1, registry=self.registry)
            self.metrics.set_models(self.models.info, cfg.runtime)
        except Exception as exc:  # the service still serves reads; /readyz says why it is not ready
            self.model_error = str(exc)
            log.error("classification models not loaded: %s", exc)
        # the same base as the classifiers (loaded once); int8 gives it its own fingerprint (models/onnx_runtime.py)
        self.embedder = Embedder(cfg.embed_encoder, backend=cfg.embedder_runtime, cache_dir=cfg.onnx_cache_dir,
                                 threads=cfg.threads)
        try:
            self.scorer, self.scorer_path, self.scorer_version = load_scorer(cfg, self.registry)
        except Exception as exc:  # repeat routes answer 503 and /readyz says why; intake still stores
            log.error("repeat scorer not loaded: %s", exc)
        self.metrics.set_registry(self.serving_versions())
        self.keeper = IndexKeeper(cfg.index_path, self.embedder.dim, self.embedder.fingerprint, self.store,
                                  save_every=cfg.index_save_every, save_seconds=cfg.index_save_seconds,
                                  on_change=self.metrics.index_size.set, on_save=self.metrics.index_saves.inc,
                                  factory=cfg.index_factory, search_params=cfg.index_search,
                                  poll_seconds=cfg.index_sync_seconds, gap_seconds=cfg.feed_gap_seconds)
        stats = self.keeper.open(self.embedder.encode)
        self.metrics.index_size.set(len(self.keeper))
        self.metrics.watch_feed(self.keeper)
        self.batcher = MicroBatcher(
            {"classify": self._classify_batch, "embed": self._embed_batch},
            max_batch=cfg.batch_max_size, max_wait_ms=cfg.batch_max_wait_ms, on_batch=self.metrics.on_batch)
        # other replicas' (and processes') writes arrive through the change feed; embedding, when a change has
        # no vector of this embedder, goes through the micro-batcher like any request
        self.keeper.start_sync(lambda texts: np.vstack(self.batcher.submit_future("embed", texts).result()))
        if self.registry is not None and cfg.registry_poll_seconds > 0:
            self._follow_thread = threading.Thread(target=self._follow_loop, name="xinfang-registry-follow",
                                                   daemon=True)
            self._follow_thread.start()
        log.info("service started", extra={"seconds": round(time.perf_counter() - t0, 2), "index": stats,
                                           "runtime": cfg.runtime, "store": self.store.dialect})

    def stop(self) -> None:
        self._stop.set()
        if self.keeper:
            self.keeper.stop_sync()  # before the batcher it may be embedding through
        if self.batcher:
            self.batcher.close()
        if self._follow_thread:
            self._follow_thread.join(30)
        if self.keeper:
            self.keeper.close()
        self.store.close()

    # ------------------------------------------------------------------ rollout
    def serving_versions(self) -> dict[str, str]:
        """{task: registry version} of the models in service that came from the registry."""
        out = dict(self.models.registry) if self.models else {}
        if self.scorer_version:
            out[REPEAT_TASK] = self.scorer_version
        return out

    def _follow_loop(self) -> None:
        while not self._stop.wait(self.config.registry_poll_seconds):
            try:
                self.follow_registry()
            except Exception as exc:  # the store away for a moment: logged, tried again next period
                log.error("registry check failed: %s", type(exc).__name__)

    def follow_registry(self) -> str:
        """Load the promoted versions when they changed since last seen: 'same', 'loaded', 'refused' (the old
        models stay; reported) or 'busy' (another reload running; tried again next period)."""
        assert self.registry is not None
        promoted = self.registry.promoted_versions()
        if promoted == self.promoted_seen:
            return "same"
        served = self.serving_versions()
        changed = {t: v for t, v in sorted(promoted.items()) if served.get(t) != v}
        t0 = time.perf_counter()
        try:
            self.reload(None, None, who="registry")
        except ReloadBusy:
            return "busy"
        except Exception as exc:  # a version this replica cannot load: keep serving the old one, say why
            seconds = round(time.perf_counter() - t0, 3)
            self.promoted_seen = promoted
            self.rollout_refused = {"versions": changed, "error": str(exc)[:1000],
                                    "at": datetime.now(UTC).isoformat(timespec="seconds")}
            self.metrics.on_rollout("refused", seconds, changed)
            log.error("promoted models refused, the served ones stay", extra={
                "versions": changed, "serving": served, "seconds": seconds, "error": type(exc).__name__})
            self.store.audit("registry", "models.rollout.refused", [f"{t}:{v}" for t, v in changed.items()])
            return "refused"
        seconds = round(time.perf_counter() - t0, 3)
        self.promoted_seen = promoted
        self.metrics.on_rollout("ok", seconds, {})
        log.info("promoted models loaded", extra={"versions": changed, "seconds": seconds,
                                                  "generation": self.models.generation if self.models else None})
        return "loaded"

    # ------------------------------------------------------------------ readiness
    def ready_checks(self) -> dict[str, bool]:
        """All true: ready. `index_caught_up`: the index has applied the change feed to within
        XINFANG_READY_MAX_LAG changes (a replica that just started, or fell behind, takes no traffic)."""
        keeper = self.keeper
        caught_up = (keeper is not None and keeper.caught_up_at is not None and keeper.feed_error is None
                     and keeper.lag_changes <= self.config.ready_max_lag)
        return {"models": self.models is not None, "index": keeper is not None,
                "embedder": self.embedder is not None, "repeat_scorer": self.scorer is not None,
                "store": self.store.ping(), "index_caught_up": caught_up}

    # ------------------------------------------------------------------ batch handlers (worker thread)
    def _require_models(self) -> ModelSet:
        models = self.models
        if models is None:
            raise ModelsUnavailable(self.model_error or "models not loaded")
        return models

    @staticmethod
    def _classify(models: ModelSet, petitions: list[Petition]) -> list[dict]:
        """Classify a merged batch: requests from different clients may reuse ids, so the pipeline sees
        positional ids and each result gets its caller's id back."""
        results = models.pipeline.classify(petitions, ids=[str(i) for i in range(len(petitions))])
        return [{**r, "id": p.id} for r, p in zip(results, petitions, strict=True)]

    def _classify_batch(self, petitions: list[Petition]) -> list[tuple[dict, ModelSet]]:
        models = self._require_models()
        return [(r, models) for r in self._classify(models, petitions)]

    def _embed_batch(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.embedder.encode(texts))

    # ------------------------------------------------------------------ reload
    def reload(self, model_dirs: list[Path] | None, duty_list: Path | None, who: str) -> ModelSet:
        """Load a new pipeline beside the old one and swap atomically; the old one stays on any failure."""
        if not self.reload_lock.acquire(blocking=False):
            raise ReloadBusy("another reload is in progress")
        try:
            old = self.models
            generation = (old.generation + 1) if old else 1
            try:
                new = load_models(self.config, model_dirs, duty_list, generation, registry=self.registry)
                scorer, scorer_path, scorer_version = load_scorer(self.config, self.registry)
            except Exception as exc:  # any failure (a crafted bundle's pickle included) is a refusal
                self.metrics.reloads.labels("refused").inc()
                if isinstance(exc, XinfangError):
                    raise
                raise ModelError(f"{type(exc).__name__}: {exc}") from exc
            self.models = new
            self.scorer, self.scorer_path, self.scorer_version = scorer, scorer_path, scorer_version
            self.model_error = None
            if model_dirs is None:  # what the registry promotes is what is served now
                self.rollout_refused = None
            self.metrics.set_registry(self.serving_versions(), self.rollout_refused)
            self.metrics.set_models(new.info, self.config.runtime)
            self.metrics.reloads.labels("ok").inc()
            versions = [f"{t}:{v['version']}" for t, v in new.versions().items()]
            self.store.audit(who, "models.reload", versions)
            log.info("models reloaded", extra={"generation": generation, "versions": versions})
            return new
        finally:
            self.reload_lock.release()


class ModelsUnavailable(RuntimeError):
    pass


class ReloadBusy(RuntimeError):
    pass
