"""Model registry: versioned bundles per task, exactly one promoted version each, promote/rollback.

Layout under ``<data dir>/registry/``::

    registry.json          the index (written atomically: tmp + fsync + os.replace, under ``registry.lock``)
    registry.lock          an fcntl lock file serialising writers (readers never need it)
    bundles/<version>/     an immutable copy of every registered bundle
    eval_sets/<task>.jsonl the fixed evaluation set of a task (copied in, sha256 recorded)
    audit.jsonl            promotions/rollbacks/registrations when no service store is configured

``registry.json``::

    {"schema": 1,
     "versions": {"topic-v1": {"version", "task", "kind", "path", "metrics", "data_fingerprint",
                               "parent", "created_at", "registered_by", "labels", "manifest_sha256", "note"}},
     "tasks": {"topic": {"promoted": "topic-v2", "stack": ["topic-v1", "topic-v2"], "next": 3,
                         "eval_set": {"path", "sha256", "rows", "label_column", "source"}}},
     "events": [{"at", "action", "task", "version", "previous", "forced", "by", "gate"}]}

Promotion pushes onto the task's ``stack``; rollback pops the current version and re-promotes the one
below it, so repeated rollbacks walk back through the promotion history.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xinfang.errors import ModelError, XinfangError
from xinfang.fsutil import atomic_write_json
from xinfang.hashing import sha256_dir, sha256_file
from xinfang.records import load_pairs_with_petitions, load_records
from xinfang.settings import get_settings, load_settings

log = logging.getLogger(__name__)

SCHEMA = 1
CLASSIFIER_TASKS = ("topic", "department", "channel")
REPEAT_TASK = "repeats"
TASKS = (*CLASSIFIER_TASKS, REPEAT_TASK)
MAX_EVENTS = 1000


class RegistryError(XinfangError):
    """A registry operation that cannot be done (unknown version, wrong task, nothing to roll back to)."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")




# --------------------------------------------------------------------------------------------- bundles


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


REPEAT_META_FILES = ("scorer.json", "metrics.json", "manifest.json")


@dataclass(frozen=True)
class BundleInfo:
    """What the registry needs to know about a bundle directory, whatever produced it."""

    task: str
    kind: str  # "classifier" | "repeat_scorer"
    metrics: dict[str, Any]
    data_fingerprint: str | None
    labels: list[str]
    manifest_sha256: str
    bundle_version: str  # the bundle's own version (its manifest hash): what the service reports


def _find_key(docs: list[dict[str, Any]], *keys: str) -> Any:
    """First value of any of ``keys`` found in the docs, searching one level of nesting too."""
    for key in keys:
        for doc in docs:
            if key in doc and doc[key] not in (None, ""):
                return doc[key]
    for key in keys:
        for doc in docs:
            for value in doc.values():
                if isinstance(value, dict) and value.get(key) not in (None, ""):
                    return value[key]
    return None


def inspect_bundle(path: Path, task: str | None = None) -> BundleInfo:
    """Task, metrics, labels and data fingerprint of a bundle (no weights loaded): a classifier bundle through
    its format owner (models.classifier.read_meta: manifest checked, old formats named with the convert
    command), a repeat scorer from its scorer.json."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: not a bundle directory")
    if (path / "config.json").is_file() and not (path / "scorer.json").is_file():
        return _inspect_classifier(path, task)
    docs = {name: _read_json(path / name) for name in REPEAT_META_FILES if (path / name).is_file()}
    if "scorer.json" not in docs:
        raise ModelError(f"{path}: no bundle metadata found (expected config.json of a classifier bundle or "
                         "scorer.json of a repeat scorer)")
    if task not in (None, REPEAT_TASK):
        raise ModelError(f"{path}: bundle is for task {REPEAT_TASK!r}, not {task!r}")
    all_docs = list(docs.values())
    metrics = docs.get("metrics.json") or _find_key(all_docs, "metrics", "validation_metrics") or {}
    fingerprint = _find_key(all_docs, "data_fingerprint", "data_sha256", "fingerprint")
    if isinstance(fingerprint, dict):
        fingerprint = fingerprint.get("sha256") or json.dumps(fingerprint, sort_keys=True)
    manifest = path / "manifest.json"
    manifest_sha = sha256_file(manifest) if manifest.is_file() else sha256_dir(path)
    return BundleInfo(task=REPEAT_TASK, kind="repeat_scorer",
                      metrics=_scalar_metrics(metrics if isinstance(metrics, dict) else {}),
                      data_fingerprint=str(fingerprint) if fingerprint else None, labels=[],
                      manifest_sha256=manifest_sha, bundle_version=manifest_sha[:16])


def _inspect_classifier(path: Path, task: str | None) -> BundleInfo:
    from xinfang.models.classifier import read_meta

    manifest, config, labels, metrics = read_meta(path)
    found = config.get("task")
    if found not in CLASSIFIER_TASKS:
        raise ModelError(f"{path}: cannot tell the task of this bundle (found {found!r})")
    if task is not None and task != found:
        raise ModelError(f"{path}: bundle is for task {found!r}, not {task!r}")
    return BundleInfo(task=found, kind="classifier", metrics=_scalar_metrics(metrics),
                      data_fingerprint=config.get("data_fingerprint"), labels=[str(x) for x in labels],
                      manifest_sha256=sha256_file(path / "manifest.json"), bundle_version=manifest["version"])


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Keep the headline numbers (scalars) of a metrics document, not confusion matrices."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


# --------------------------------------------------------------------------------------------- audit


class AuditSink:
    """Where promotions and rollbacks are recorded: the service store's audit log, or a JSONL file."""

    description = "none"

    def record(self, action: str, actor: str, target: str, details: dict[str, Any]) -> None:
        raise NotImplementedError


class JsonlAudit(AuditSink):
    """Append-only JSONL audit file (used when the service store is not configured or importable)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.description = f"jsonl:{self.path}"

    def record(self, action: str, actor: str, target: str, details: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"at": now_iso(), "action": action, "actor": actor, "target": target, "details": details}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class Registry:
    """The registry in ``root`` (default ``<data dir>/registry``)."""

    def __init__(self, root: Path | None = None, audit: AuditSink | None = None, actor: str | None = None):
        self.root = Path(root) if root else get_settings().data_dir / "registry"
        self.audit = audit or JsonlAudit(self.root / "audit.jsonl")
        self.actor = actor or load_settings().registry.actor

    @property
    def index_path(self) -> Path:
        return self.root / "registry.json"

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    # -- reading / writing the index

    def load(self) -> dict[str, Any]:
        if not self.index_path.exists():
            return {"schema": SCHEMA, "versions": {}, "tasks": {}, "events": []}
        data = _read_json(self.index_path)
        if data.get("schema") != SCHEMA:
            raise RegistryError(f"{self.index_path}: unsupported registry schema {data.get('schema')!r}")
        return data

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Exclusive lock, fresh read, and an atomic write of the (mutated) index on success."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "registry.lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                data = self.load()
                yield data
                atomic_write_json(self.index_path, data, sort_keys=True)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _event(self, data: dict[str, Any], action: str, **fields: Any) -> dict[str, Any]:
        event = {"at": now_iso(), "action": action, "by": self.actor, **fields}
        data.setdefault("events", []).append(event)
        del data["events"][:-MAX_EVENTS]
        return event

    # -- queries

    def versions(self, task: str | None = None) -> list[dict[str, Any]]:
        data = self.load()
        rows = [dict(v) for v in data["versions"].values() if task is None or v["task"] == task]
        promoted = {t: s.get("promoted") for t, s in data["tasks"].items()}
        for row in rows:
            row["promoted"] = promoted.get(row["task"]) == row["version"]
        return sorted(rows, key=lambda r: (r["task"], int(r["version"].rsplit("-v", 1)[-1])))

    def get(self, version: str) -> dict[str, Any]:
        data = self.load()
        if version not in data["versions"]:
            known = ", ".join(sorted(data["versions"])) or "none"
            raise RegistryError(f"unknown model version {version!r} (registered: {known})")
        row = dict(data["versions"][version])
        row["promoted"] = data["tasks"].get(row["task"], {}).get("promoted") == version
        return row

    def bundle_path(self, version: str) -> Path:
        return self.root / self.get(version)["path"]

    def promoted(self, task: str) -> str | None:
        return self.load()["tasks"].get(task, {}).get("promoted")

    def promoted_paths(self) -> dict[str, Path]:
        """{task: bundle dir} of every promoted version (what a service should load)."""
        data = self.load()
        out = {}
        for task, state in data["tasks"].items():
            version = state.get("promoted")
            if version:
                out[task] = self.root / data["versions"][version]["path"]
        return out

    def eval_set(self, task: str) -> dict[str, Any] | None:
        return self.load()["tasks"].get(task, {}).get("eval_set")

    def eval_set_path(self, task: str) -> Path | None:
        cfg = self.eval_set(task)
        return self.root / cfg["path"] if cfg else None

    # -- changes

    def register(
        self,
        bundle_dir: Path,
        task: str | None = None,
        parent: str | None = None,
        note: str | None = None,
        metrics: dict[str, Any] | None = None,
        data_fingerprint: str | None = None,
    ) -> dict[str, Any]:
        """Copy a bundle into the registry as a new version of its task; return the version record.

        ``bundle_dir`` is a classifier bundle directory, or a repeat scorer: a directory holding
        ``scorer.json`` or the scorer's JSON file itself (kept as ``scorer.json``).
        """
        bundle_dir = Path(bundle_dir).resolve()
        if parent is not None:
            self.get(parent)  # raises for unknown parents
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.bundles_dir))
        try:
            if bundle_dir.is_file() and bundle_dir.suffix == ".json":
                (staging / "b").mkdir()
                shutil.copyfile(bundle_dir, staging / "b" / "scorer.json")
            elif bundle_dir.is_dir():
                shutil.copytree(bundle_dir, staging / "b")
            else:
                raise ModelError(f"{bundle_dir}: not a bundle directory or repeat-scorer JSON file")
            info = inspect_bundle(staging / "b", task)
            with self._locked() as data:
                state = data["tasks"].setdefault(info.task, {"promoted": None, "stack": [], "next": 1})
                version = f"{info.task}-v{state['next']}"
                while version in data["versions"]:
                    state["next"] += 1
                    version = f"{info.task}-v{state['next']}"
                state["next"] += 1
                target = self.bundles_dir / version
                os.replace(staging / "b", target)
                record = {
                    "version": version,
                    "task": info.task,
                    "kind": info.kind,
                    "path": target.relative_to(self.root).as_posix(),
                    "metrics": {**info.metrics, **(metrics or {})},
                    "data_fingerprint": data_fingerprint or info.data_fingerprint,
                    "labels": info.labels,
                    "manifest_sha256": info.manifest_sha256,
                    "bundle_version": info.bundle_version,
                    "parent": parent,
                    "created_at": now_iso(),
                    "registered_by": self.actor,
                    "source_dir": str(bundle_dir),
                    "note": note,
                }
                data["versions"][version] = record
                self._event(data, "register", task=info.task, version=version, parent=parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.audit.record("model.register", self.actor, version, {"task": info.task, "parent": parent})
        log.info("registered %s from %s", version, bundle_dir)
        return record

    def set_gate_result(self, version: str, report: dict[str, Any]) -> None:
        with self._locked() as data:
            if version not in data["versions"]:
                raise RegistryError(f"unknown model version {version!r}")
            data["versions"][version]["gate"] = report

    def promote(self, version: str, forced: bool = False, gate: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make ``version`` the one promoted version of its task (atomic; audited)."""
        with self._locked() as data:
            if version not in data["versions"]:
                raise RegistryError(f"unknown model version {version!r}")
            task = data["versions"][version]["task"]
            state = data["tasks"].setdefault(task, {"promoted": None, "stack": [], "next": 1})
            previous = state.get("promoted")
            if previous == version:
                raise RegistryError(f"{version} is already the promoted {task} model")
            state["promoted"] = version
            stack = [v for v in state.get("stack", []) if v != version]
            state["stack"] = [*stack, version]
            event = self._event(data, "promote", task=task, version=version, previous=previous, forced=forced,
                                gate=_gate_summary(gate))
            # audited before registry.json is replaced: a promotion that cannot be audited does not happen
            self.audit.record("model.promote.forced" if forced else "model.promote", self.actor, version,
                              {"task": task, "previous": previous, "forced": forced, "gate": event["gate"]})
        log.info("promoted %s (previous %s, forced=%s)", version, previous, forced)
        return event

    def rollback(self, task: str, to: str | None = None) -> dict[str, Any]:
        """Re-promote the version promoted before the current one (or ``to``); audited."""
        with self._locked() as data:
            state = data["tasks"].get(task)
            if not state or not state.get("promoted"):
                raise RegistryError(f"no promoted {task} model to roll back")
            current = state["promoted"]
            stack = list(state.get("stack", []))
            if to is not None:
                if to not in data["versions"] or data["versions"][to]["task"] != task:
                    raise RegistryError(f"{to!r} is not a registered {task} version")
                if to == current:
                    raise RegistryError(f"{to} is already the promoted {task} model")
                stack = [v for v in stack if v != current]
                if to in stack:
                    stack = stack[: stack.index(to) + 1]
                else:
                    stack.append(to)
            else:
                if len(stack) < 2 or stack[-1] != current:
                    raise RegistryError(f"{task}: no earlier promoted version to roll back to")
                stack.pop()
            state["stack"] = stack
            state["promoted"] = stack[-1]
            event = self._event(data, "rollback", task=task, version=stack[-1], previous=current)
            self.audit.record("model.rollback", self.actor, event["version"], {"task": task, "previous": current})
        log.info("rolled back %s: %s -> %s", task, current, event["version"])
        return event

    def set_eval_set(self, task: str, data_file: Path, label_column: str | None = None,
                     petitions: Path | None = None) -> dict[str, Any]:
        """Fix the evaluation set of a task: the file is copied into the registry and its sha256 recorded.

        For ``repeats`` the pairs may name petitions by id (resolved against ``petitions``); the copy
        holds them inline so the set stays fixed whatever happens to the petitions file.
        """
        if task not in TASKS:
            raise RegistryError(f"unknown task {task!r} (one of {', '.join(TASKS)})")
        src = Path(data_file)
        if not src.is_file():
            raise RegistryError(f"{src}: evaluation file not found")
        suffix = ".jsonl" if task == REPEAT_TASK else ("".join(src.suffixes[-1:]) or ".jsonl")
        dest_rel = Path("eval_sets") / f"{task}{suffix}"
        dest = self.root / dest_rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        if task == REPEAT_TASK:
            rows = load_pairs_with_petitions(src, petitions)
            with open(tmp, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        else:
            load_records(src, label_column=label_column or task)  # refuse a file training could not read
            shutil.copyfile(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        rows = sum(1 for line in open(tmp, "rb") if line.strip()) if suffix in (".jsonl", ".csv") else None
        with self._locked() as data:
            os.replace(tmp, dest)
            cfg = {"path": dest_rel.as_posix(), "sha256": sha256_file(dest), "rows": rows,
                   "label_column": label_column or ("label" if task == REPEAT_TASK else task),
                   "source": str(src.resolve()), "set_at": now_iso()}
            data["tasks"].setdefault(task, {"promoted": None, "stack": [], "next": 1})["eval_set"] = cfg
            self._event(data, "eval_set", task=task, sha256=cfg["sha256"])
        self.audit.record("model.eval_set", self.actor, f"eval_set:{cfg['sha256'][:12]}",
                          {"task": task, "sha256": cfg["sha256"], "rows": rows})
        return cfg

    def verify_eval_set(self, task: str) -> Path:
        """Path of the task's fixed evaluation set, after checking it still matches its recorded sha256."""
        cfg = self.eval_set(task)
        if not cfg:
            raise RegistryError(f"no evaluation set configured for {task}: "
                                f"xinfang models eval-set --task {task} --data FILE")
        path = self.root / cfg["path"]
        if not path.is_file() or sha256_file(path) != cfg["sha256"]:
            raise RegistryError(f"{path}: the {task} evaluation set is missing or changed since it was fixed")
        return path

    def mtime(self) -> float:
        """Modification time of registry.json (0 when absent): services watch it for promotions."""
        try:
            return self.index_path.stat().st_mtime
        except FileNotFoundError:
            return 0.0


def registry_enabled() -> bool:
    """``XINFANG_REGISTRY=off`` makes the service ignore the registry (explicit model dirs only)."""
    return load_settings().registry.enabled


def serving_model_dirs(data_dir: Path, fallback: list[Path], enabled: bool | None = None) -> list[Path]:
    """Classifier bundle dirs a service should load: the promoted version of each task in
    ``<data_dir>/registry``, plus those ``fallback`` dirs whose task has no promoted version.
    ``enabled=False`` (default: XINFANG_REGISTRY) ignores the registry."""
    reg_path = Path(data_dir) / "registry" / "registry.json"
    if not (registry_enabled() if enabled is None else enabled) or not reg_path.exists():
        return list(fallback)
    promoted = {t: p for t, p in Registry(reg_path.parent, audit=JsonlAudit(reg_path.parent / "audit.jsonl"))
                .promoted_paths().items() if t in CLASSIFIER_TASKS}
    if not promoted:
        return list(fallback)
    kept = []
    for d in fallback:
        cfg = Path(d) / "config.json"
        task = _read_json(cfg).get("task") if cfg.is_file() else None
        if task not in promoted:
            kept.append(Path(d))
    return [promoted[t] for t in CLASSIFIER_TASKS if t in promoted] + kept


def serving_scorer_path(data_dir: Path, enabled: bool | None = None) -> Path | None:
    """scorer.json of the promoted repeat-scorer version, or None (``enabled`` as for serving_model_dirs)."""
    reg_path = Path(data_dir) / "registry" / "registry.json"
    if not (registry_enabled() if enabled is None else enabled) or not reg_path.exists():
        return None
    path = Registry(reg_path.parent, audit=JsonlAudit(reg_path.parent / "audit.jsonl")).promoted_paths().get(
        REPEAT_TASK)
    return path / "scorer.json" if path else None


def _gate_summary(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    if not gate:
        return None
    keys = ("passed", "metric", "new", "baseline", "delta", "tolerance", "baseline_version", "reasons")
    return {k: gate.get(k) for k in keys if k in gate}
