"""Model registry: versioned bundles per task, exactly one promoted version each, promote/rollback.

The registry lives in the service's store (SQLite in the data dir by default, or the shared PostgreSQL), so
every replica on any machine sees the same promotions. This module owns the format; the database access is
passed in as a `RegistryStore` (xinfang.serving.registry_db), as the audit sink is::

    versions  {"topic-v1": {"version", "task", "kind", "bundle_sha256", "bundle_bytes", "metrics",
                            "data_fingerprint", "labels", "manifest_sha256", "bundle_version", "parent",
                            "created_at", "registered_by", "source_dir", "note", "gate"}}
    tasks     {"topic": {"promoted": "topic-v2", "stack": ["topic-v1", "topic-v2"], "next": 3,
                         "eval_set": {"sha256", "suffix", "rows", "label_column", "source", "set_at"}}}
    events    [{"at", "action", "task", "version", "previous", "forced", "by", "gate"}]
    blobs     sha256 -> bytes: each version's bundle as a deterministic tar archive, each evaluation file

Each process extracts what it uses into its cache (default ``<data dir>/registry/``: ``bundles/<version>-<sha>/``
and ``eval_sets/``), checking the archive's sha256 first. Promotion pushes onto the task's ``stack``; rollback
pops the current version and re-promotes the one below it. A registry kept as files by earlier versions
(``registry.json`` + ``bundles/``) is imported with `import_files` (`xinfang models import-files`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from xinfang.errors import ModelError, XinfangError
from xinfang.hashing import sha256_dir, sha256_file
from xinfang.records import load_pairs_with_petitions, load_records
from xinfang.settings import get_settings, load_settings

log = logging.getLogger(__name__)

CLASSIFIER_TASKS = ("topic", "department", "channel")
REPEAT_TASK = "repeats"
TASKS = (*CLASSIFIER_TASKS, REPEAT_TASK)


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
    """Where registrations, promotions and rollbacks are recorded (the service store's audit log)."""

    description = "none"

    def record(self, action: str, actor: str, target: str, details: dict[str, Any]) -> None:
        raise NotImplementedError


class RegistryStore:
    """Database access the registry needs (xinfang.serving.registry_db implements it on the store)."""

    description = "none"

    def read(self) -> dict[str, Any]:
        """{"versions", "tasks", "events"} as committed."""
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Exclusive, fresh read; the (mutated) document is written when the block succeeds."""
        raise NotImplementedError

    def promoted(self) -> dict[str, str]:
        """{task: promoted version} (cheap: what replicas poll)."""
        raise NotImplementedError

    def has_blob(self, sha256: str) -> bool:
        raise NotImplementedError

    def put_blob(self, sha256: str, path: Path) -> None:
        """Store the file's bytes under their (already computed) sha256; a no-op when already there."""
        raise NotImplementedError

    def read_blob(self, sha256: str, out: IO[bytes]) -> None:
        """Write the blob's bytes to ``out`` (RegistryError when there is none)."""
        raise NotImplementedError


def pack_bundle(src: Path, out: Path) -> tuple[str, int]:
    """A deterministic tar of a bundle directory (sorted names, no times or owners): (sha256, bytes)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            if path.is_dir():
                continue
            if path.is_symlink() or not path.is_file():
                raise ModelError(f"{path}: a bundle holds plain files only")
            info = tarfile.TarInfo(path.relative_to(src).as_posix())
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return sha256_file(out), out.stat().st_size


class _HashingWriter:
    def __init__(self, fh: IO[bytes]):
        self.fh, self.digest, self.size = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.fh.write(data)


class Registry:
    """The registry kept by ``store``, extracting bundles into ``cache_dir`` (default ``<data dir>/registry``)."""

    def __init__(self, store: RegistryStore, cache_dir: Path | None = None, audit: AuditSink | None = None,
                 actor: str | None = None):
        self.store = store
        self.root = Path(cache_dir) if cache_dir else get_settings().data_dir / "registry"
        if audit is None and not isinstance(store, AuditSink):
            raise RegistryError("a registry needs an audit sink")
        self.audit = audit if audit is not None else store  # type: ignore[assignment]
        self.actor = actor or load_settings().registry.actor

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    def load(self) -> dict[str, Any]:
        return self.store.read()

    def _event(self, data: dict[str, Any], action: str, **fields: Any) -> dict[str, Any]:
        event = {"at": now_iso(), "action": action, "by": self.actor, **fields}
        data.setdefault("events", []).append(event)
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
        """The version's bundle directory in this process's cache (extracted and sha256-checked on first use)."""
        return self._extract(self.get(version))

    def promoted(self, task: str) -> str | None:
        return self.store.promoted().get(task)

    def promoted_versions(self) -> dict[str, str]:
        """{task: promoted version}: one small query (what a replica polls)."""
        return self.store.promoted()

    def promoted_paths(self) -> dict[str, Path]:
        """{task: bundle dir} of every promoted version (what a service should load)."""
        data = self.load()
        return {task: self._extract(data["versions"][state["promoted"]])
                for task, state in data["tasks"].items() if state.get("promoted")}

    def eval_set(self, task: str) -> dict[str, Any] | None:
        return self.load()["tasks"].get(task, {}).get("eval_set")

    def eval_set_path(self, task: str) -> Path | None:
        cfg = self.eval_set(task)
        return self.root / "eval_sets" / f"{task}-{cfg['sha256'][:12]}{cfg['suffix']}" if cfg else None

    # -- the cache

    def _fetch(self, sha256: str, dest: Path, what: str) -> None:
        """Blob ``sha256`` into the new file ``dest``, refused (and removed) when its bytes do not match."""
        with open(dest, "wb") as fh:
            writer = _HashingWriter(fh)
            self.store.read_blob(sha256, writer)
            fh.flush()
            os.fsync(fh.fileno())
        if writer.digest.hexdigest() != sha256:
            dest.unlink()
            raise RegistryError(f"{what}: the stored bytes do not match their sha256 {sha256[:12]} (corrupt)")

    def _extract(self, record: dict[str, Any]) -> Path:
        sha = record.get("bundle_sha256")
        if not sha:
            raise RegistryError(f"{record['version']}: no bundle archive recorded")
        target = self.bundles_dir / f"{record['version']}-{sha[:12]}"
        if target.is_dir():
            return target
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=self.bundles_dir))
        try:
            archive = staging / "bundle.tar"
            self._fetch(sha, archive, f"bundle of {record['version']}")
            with tarfile.open(archive) as tar:
                tar.extractall(staging / "b", filter="data")
            try:
                os.replace(staging / "b", target)
            except OSError:  # another process extracted it first
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("extracted %s (%s) into the registry cache", record["version"], sha[:12])
        return target

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
        """Store a bundle in the registry as a new version of its task; return the version record.

        ``bundle_dir`` is a classifier bundle directory, or a repeat scorer: a directory holding
        ``scorer.json`` or the scorer's JSON file itself (kept as ``scorer.json``).
        """
        bundle_dir = Path(bundle_dir).resolve()
        if parent is not None:
            self.get(parent)  # raises for unknown parents
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            if bundle_dir.is_file() and bundle_dir.suffix == ".json":
                (staging / "b").mkdir()
                shutil.copyfile(bundle_dir, staging / "b" / "scorer.json")
            elif bundle_dir.is_dir():
                shutil.copytree(bundle_dir, staging / "b")
            else:
                raise ModelError(f"{bundle_dir}: not a bundle directory or repeat-scorer JSON file")
            info = inspect_bundle(staging / "b", task)
            sha, size = pack_bundle(staging / "b", staging / "bundle.tar")
            self.store.put_blob(sha, staging / "bundle.tar")
            with self.store.transaction() as data:
                state = data["tasks"].setdefault(info.task, _new_task())
                version = f"{info.task}-v{state['next']}"
                while version in data["versions"]:
                    state["next"] += 1
                    version = f"{info.task}-v{state['next']}"
                state["next"] += 1
                record = {
                    "version": version, "task": info.task, "kind": info.kind,
                    "bundle_sha256": sha, "bundle_bytes": size,
                    "metrics": {**info.metrics, **(metrics or {})},
                    "data_fingerprint": data_fingerprint or info.data_fingerprint,
                    "labels": info.labels, "manifest_sha256": info.manifest_sha256,
                    "bundle_version": info.bundle_version, "parent": parent, "created_at": now_iso(),
                    "registered_by": self.actor, "source_dir": str(bundle_dir), "note": note,
                }
                data["versions"][version] = record
                self._event(data, "register", task=info.task, version=version, parent=parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.audit.record("model.register", self.actor, version, {"task": info.task, "parent": parent})
        log.info("registered %s (%s, %d bytes)", version, sha[:12], size)
        return record

    def set_gate_result(self, version: str, report: dict[str, Any]) -> None:
        with self.store.transaction() as data:
            if version not in data["versions"]:
                raise RegistryError(f"unknown model version {version!r}")
            data["versions"][version]["gate"] = report

    def promote(self, version: str, forced: bool = False, gate: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make ``version`` the one promoted version of its task (atomic; audited)."""
        with self.store.transaction() as data:
            if version not in data["versions"]:
                raise RegistryError(f"unknown model version {version!r}")
            task = data["versions"][version]["task"]
            state = data["tasks"].setdefault(task, _new_task())
            previous = state.get("promoted")
            if previous == version:
                raise RegistryError(f"{version} is already the promoted {task} model")
            state["promoted"] = version
            stack = [v for v in state.get("stack", []) if v != version]
            state["stack"] = [*stack, version]
            event = self._event(data, "promote", task=task, version=version, previous=previous, forced=forced,
                                gate=_gate_summary(gate))
            # audited before the change commits: a promotion that cannot be audited does not happen
            self.audit.record("model.promote.forced" if forced else "model.promote", self.actor, version,
                              {"task": task, "previous": previous, "forced": forced, "gate": event["gate"]})
        log.info("promoted %s (previous %s, forced=%s)", version, previous, forced)
        return event

    def rollback(self, task: str, to: str | None = None) -> dict[str, Any]:
        """Re-promote the version promoted before the current one (or ``to``); audited."""
        with self.store.transaction() as data:
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
        """Fix the evaluation set of a task: the file is stored in the registry and its sha256 recorded.

        For ``repeats`` the pairs may name petitions by id (resolved against ``petitions``); the copy
        holds them inline so the set stays fixed whatever happens to the petitions file.
        """
        if task not in TASKS:
            raise RegistryError(f"unknown task {task!r} (one of {', '.join(TASKS)})")
        src = Path(data_file)
        if not src.is_file():
            raise RegistryError(f"{src}: evaluation file not found")
        suffix = ".jsonl" if task == REPEAT_TASK else ("".join(src.suffixes[-1:]) or ".jsonl")
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".eval-", dir=self.root) as tmp_dir:
            tmp = Path(tmp_dir) / f"eval{suffix}"
            if task == REPEAT_TASK:
                rows = load_pairs_with_petitions(src, petitions)
                with open(tmp, "w", encoding="utf-8") as fh:
                    for row in rows:
                        fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            else:
                load_records(src, label_column=label_column or task)  # refuse a file training could not read
                shutil.copyfile(src, tmp)
            n_rows = sum(1 for line in open(tmp, "rb") if line.strip()) if suffix in (".jsonl", ".csv") else None
            sha = sha256_file(tmp)
            self.store.put_blob(sha, tmp)
        cfg = {"sha256": sha, "suffix": suffix, "rows": n_rows,
               "label_column": label_column or ("label" if task == REPEAT_TASK else task),
               "source": str(src.resolve()), "set_at": now_iso()}
        with self.store.transaction() as data:
            data["tasks"].setdefault(task, _new_task())["eval_set"] = cfg
            self._event(data, "eval_set", task=task, sha256=sha)
        self.audit.record("model.eval_set", self.actor, f"eval_set:{sha[:12]}",
                          {"task": task, "sha256": sha, "rows": n_rows})
        return cfg

    def verify_eval_set(self, task: str) -> Path:
        """The task's fixed evaluation set in the cache, its bytes checked against the recorded sha256 (a cached
        copy that differs is fetched again; stored bytes that differ are refused)."""
        cfg = self.eval_set(task)
        if not cfg:
            raise RegistryError(f"no evaluation set configured for {task}: "
                                f"xinfang models eval-set --task {task} --data FILE")
        path = self.eval_set_path(task)
        assert path is not None
        if path.is_file() and sha256_file(path) == cfg["sha256"]:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._fetch(cfg["sha256"], tmp, f"the {task} evaluation set (changed since it was fixed)")
        os.replace(tmp, path)
        return path


def _new_task() -> dict[str, Any]:
    return {"promoted": None, "stack": [], "next": 1}


def import_files(registry: Registry, root: Path) -> list[str]:
    """Import a registry kept as files (``root/registry.json`` + ``bundles/`` + ``eval_sets/``, schema 1) into
    ``registry``'s store, keeping version names, promotion stacks, evaluation sets and events. Refused when the
    store already has any of those versions. Returns the versions imported."""
    index = Path(root) / "registry.json"
    data = _read_json(index)
    if data.get("schema") != 1:
        raise RegistryError(f"{index}: not a file registry of schema 1 (found {data.get('schema')!r})")
    clash = sorted(set(data.get("versions", {})) & set(registry.load()["versions"]))
    if clash:
        raise RegistryError(f"{index}: versions already in the registry: {', '.join(clash)}")
    records = {}
    with tempfile.TemporaryDirectory(prefix=".import-", dir=Path(root)) as tmp_dir:
        for version, rec in data.get("versions", {}).items():
            bundle = Path(root) / rec["path"]
            if not bundle.is_dir():
                raise RegistryError(f"{bundle}: bundle of {version} missing")
            sha, size = pack_bundle(bundle, Path(tmp_dir) / f"{version}.tar")
            registry.store.put_blob(sha, Path(tmp_dir) / f"{version}.tar")
            records[version] = {**{k: v for k, v in rec.items() if k != "path"}, "bundle_sha256": sha,
                                "bundle_bytes": size}
        tasks = copy.deepcopy(data.get("tasks", {}))
        for task, state in tasks.items():
            cfg = state.get("eval_set")
            if cfg:
                path = Path(root) / cfg.pop("path")
                if not path.is_file() or sha256_file(path) != cfg["sha256"]:
                    raise RegistryError(f"{path}: the {task} evaluation set is missing or changed")
                registry.store.put_blob(cfg["sha256"], path)
                cfg["suffix"] = "".join(path.suffixes[-1:]) or ".jsonl"
    with registry.store.transaction() as doc:
        doc["versions"].update(records)
        for task, state in tasks.items():
            mine = doc["tasks"].setdefault(task, _new_task())
            mine.update({**state, "next": max(int(state.get("next", 1)), int(mine.get("next", 1)))})
        doc["events"].extend(data.get("events", []))
        registry._event(doc, "import", source=str(index), versions=sorted(records))
    registry.audit.record("model.import", registry.actor, f"import:{len(records)}", {"task": None})
    log.info("imported %d versions from %s", len(records), index)
    return sorted(records)


def serving_model_dirs(registry: Registry | None, fallback: list[Path]) -> list[Path]:
    """Classifier bundle dirs a service should load: the promoted version of each task in ``registry``, plus
    those ``fallback`` dirs whose task has no promoted version (``registry=None``: the fallback only)."""
    promoted = {t: p for t, p in (registry.promoted_paths() if registry else {}).items() if t in CLASSIFIER_TASKS}
    if not promoted:
        return list(fallback)
    kept = []
    for d in fallback:
        cfg = Path(d) / "config.json"
        task = _read_json(cfg).get("task") if cfg.is_file() else None
        if task not in promoted:
            kept.append(Path(d))
    return [promoted[t] for t in CLASSIFIER_TASKS if t in promoted] + kept


def serving_scorer_path(registry: Registry | None) -> Path | None:
    """scorer.json of the promoted repeat-scorer version, or None."""
    if registry is None or not registry.promoted(REPEAT_TASK):
        return None
    return registry.bundle_path(registry.promoted(REPEAT_TASK)) / "scorer.json"


def _gate_summary(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    if not gate:
        return None
    keys = ("passed", "metric", "new", "baseline", "delta", "tolerance", "baseline_version", "reasons")
    return {k: gate.get(k) for k in keys if k in gate}
