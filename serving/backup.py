"""Consistent snapshots of a service's data (taken while it runs) and their restore into an empty data dir.

A snapshot directory (`xinfang backup --to DIR`):

    snapshot.json   format, when, store dialect, row counts, what is included
    store.sqlite    the SQLite store, copied by SQLite's online backup API (one consistent read) -- or
    store.pgdump    pg_dump custom format (one consistent transaction) for PostgreSQL
    index/          the saved FAISS index: its manifest and the files it names, checked against its sha256s
    models/         <data dir>/models (configured bundles, repeat scorer), when present
    SHA256SUMS      sha256 of every other file, in `sha256sum -c` format

The model registry (versions, promotions, bundle archives, evaluation sets) is in the store and travels with it.
Left out: encoders/ (`xinfang encoder prepare` makes them again), the onnx/ cache (rebuilt at start-up) and
the registry's bundle cache registry/ (extracted again from the store on first use).
The index is derived data: whatever it lacks or has extra against the store is reconciled at start-up.
`restore` checks every checksum (and SQLite's integrity check) before writing anything, and refuses a non-empty
data dir or a non-empty target database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from glob import glob
from pathlib import Path

from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url

from xinfang.errors import XinfangError
from xinfang.fsutil import atomic_file
from xinfang.hashing import sha256_file
from xinfang.serving.config import ServiceConfig, pg_bin_dir
from xinfang.serving.store import ApiKey, AuditEntry, Feedback, Petition, Store

FORMAT = "xinfang-snapshot/1"
SUMS = "SHA256SUMS"
META = "snapshot.json"
SQLITE_FILE, PG_FILE = "store.sqlite", "store.pgdump"
TABLES = {"petitions": Petition, "feedback": Feedback, "api_keys": ApiKey, "audit_log": AuditEntry}


class BackupError(XinfangError):
    """A snapshot cannot be taken or restored (the message names the file or setting)."""


# ------------------------------------------------------------------------------------------------ helpers
def pg_tool(name: str) -> str:
    """Path of a PostgreSQL client program: $XINFANG_PG_BIN/<name>, else on PATH, else the newest
    /usr/lib/postgresql/<version>/bin (Debian's layout)."""
    bin_dir = pg_bin_dir()
    candidates = [str(bin_dir / name)] if bin_dir else []
    if shutil.which(name):
        candidates.append(shutil.which(name))
    candidates += sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"),
                         key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0, reverse=True)
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    raise BackupError(f"{name} not found: install the PostgreSQL client (Debian: postgresql-client) or set "
                      "XINFANG_PG_BIN to its bin directory")


def _pg_args(url: str) -> tuple[list[str], dict[str, str]]:
    """libpq connection arguments and environment (the password travels in PGPASSWORD, never on the command
    line)."""
    u = make_url(url)
    args = [a for flag, v in (("-h", u.host), ("-p", u.port), ("-U", u.username)) if v for a in (flag, str(v))]
    env = {**os.environ}
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    return args + ["-d", str(u.database)], env


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackupError(f"{what} failed ({Path(cmd[0]).name} exit {proc.returncode}): "
                          f"{proc.stderr.strip()[-800:]}")


def _sqlite_path(url: str) -> Path:
    path = make_url(url).database
    if not path or path == ":memory:":
        raise BackupError(f"{url}: an in-memory SQLite store cannot be backed up or restored")
    return Path(path)


def _counts(store: Store) -> dict[str, int]:
    with store.session() as s:
        return {name: int(s.scalar(select(func.count()).select_from(model)) or 0) for name, model in TABLES.items()}


@contextlib.contextmanager
def _staged(dest: Path) -> Iterator[Path]:
    """A temporary sibling of `dest`, renamed to `dest` when the block succeeds (removed otherwise)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest}: exists and is not an empty directory; choose a new snapshot directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


# ------------------------------------------------------------------------------------------------ backup
def _backup_sqlite(url: str, out: Path) -> dict[str, int]:
    src_path = _sqlite_path(url)
    if not src_path.exists():
        raise BackupError(f"{src_path}: no SQLite store to back up")
    src = sqlite3.connect(str(src_path), timeout=30)  # a WAL store needs a writable connection, even to read
    dst = sqlite3.connect(out)
    try:
        src.execute("PRAGMA busy_timeout=30000")
        src.backup(dst)  # all pages in one step: one consistent read while writers go on (WAL)
        dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
        return {name: int(dst.execute(f"SELECT count(*) FROM {name}").fetchone()[0]) for name in TABLES}
    finally:
        dst.close()
        src.close()


def _backup_pg(url: str, out: Path) -> None:
    args, env = _pg_args(url)
    _run([pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "-f", str(out), *args], env,
         "pg_dump")


def _copy_index(index_dir: Path, out: Path, tries: int = 20) -> dict | None:
    """Copy the saved index (manifest first, then the files it names, each checked against the manifest); a save
    that replaces the files meanwhile makes it start again."""
    from xinfang.models.vector_index import MANIFEST

    manifest_path = index_dir / MANIFEST
    if not manifest_path.exists():
        return None
    for _ in range(tries):
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        ok = True
        for key, name in manifest.get("files", {}).items():
            try:
                data = (index_dir / name).read_bytes()
            except FileNotFoundError:
                ok = False
                break
            if hashlib.sha256(data).hexdigest() != manifest.get("sha256", {}).get(key):
                ok = False
                break
            (out / name).write_bytes(data)
        if ok:
            (out / MANIFEST).write_bytes(raw)
            return {"count": manifest.get("count"), "encoder_fingerprint": manifest.get("encoder_fingerprint")}
        time.sleep(0.05)
    raise BackupError(f"{index_dir}: the index kept changing while it was copied; try again")


def write_sums(root: Path) -> None:
    lines = [f"{sha256_file(p)}  {p.relative_to(root).as_posix()}" for p in _files(root) if p.name != SUMS
             or p.parent != root]
    (root / SUMS).write_text("\n".join(lines) + "\n", encoding="utf-8")


def backup(config: ServiceConfig, dest: Path) -> dict:
    """Take a snapshot of the store (with the registry), the index and the models of `config` into `dest`."""
    store = Store(config.db_url, create=False)
    dialect = store.dialect
    try:
        with _staged(Path(dest)) as tmp:
            meta: dict = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                          "store": {"dialect": dialect}}
            if dialect == "sqlite":
                meta["store"]["file"] = SQLITE_FILE
                meta["counts"] = _backup_sqlite(store.url, tmp / SQLITE_FILE)
            elif dialect == "postgresql":
                meta["store"]["file"] = PG_FILE
                _backup_pg(store.url, tmp / PG_FILE)
            else:
                raise BackupError(f"backing up a {dialect} store is not supported (SQLite or PostgreSQL)")
            meta["index"] = _copy_index(config.index_path, tmp / "index")
            models = config.data_dir / "models"
            meta["models"] = models.is_dir()
            if models.is_dir():
                shutil.copytree(models, tmp / "models")
            (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            write_sums(tmp)
            meta["files"] = len(_files(tmp)) - 1
    finally:
        store.close()
    return meta


# ------------------------------------------------------------------------------------------------ restore
def verify_snapshot(src: Path) -> dict:
    """Check a snapshot against its SHA256SUMS (every file listed and matching, nothing extra) and the SQLite
    file's integrity; returns snapshot.json. BackupError names the first bad file."""
    src = Path(src)
    sums = src / SUMS
    if not sums.is_file():
        raise BackupError(f"{src}: not a snapshot ({SUMS} missing)")
    listed: dict[str, str] = {}
    for n, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or name.startswith("/") or ".." in name.split("/"):
            raise BackupError(f"{sums}: line {n} is not '<sha256>  <relative path>'")
        listed[name] = digest
    present = {p.relative_to(src).as_posix() for p in _files(src)} - {SUMS}
    extra = sorted(present - set(listed))
    if extra:
        raise BackupError(f"{src / extra[0]}: not listed in {SUMS} (snapshot altered)")
    for name, digest in sorted(listed.items()):
        path = src / name
        if not path.is_file():
            raise BackupError(f"{path}: listed in {SUMS} but missing (snapshot incomplete)")
        if path.is_symlink() or sha256_file(path) != digest:
            raise BackupError(f"{path}: does not match its sha256 in {SUMS} (snapshot corrupted)")
    try:
        meta = json.loads((src / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src / META}: unreadable ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise BackupError(f"{src / META}: unsupported snapshot format {meta.get('format')!r} (expected {FORMAT})")
    if meta["store"]["dialect"] == "sqlite":
        con = sqlite3.connect(f"file:{src / SQLITE_FILE}?mode=ro&immutable=1", uri=True)  # writes nothing there
        try:
            result = con.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            result = str(exc)
        finally:
            con.close()
        if result != "ok":
            raise BackupError(f"{src / SQLITE_FILE}: SQLite integrity check failed ({result})")
    return meta


def _refuse_non_empty(config: ServiceConfig) -> None:
    data_dir = Path(config.data_dir)
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir}: data dir is not empty; restore only into a new or empty directory")
    if config.index_dir and Path(config.index_dir).exists() and any(Path(config.index_dir).iterdir()):
        raise BackupError(f"{config.index_dir}: index dir is not empty")


def _restore_pg(url: str, dump: Path) -> None:
    store = Store(url, create=False)
    try:
        tables = set(inspect(store.engine).get_table_names()) & set(TABLES)
        if tables:
            raise BackupError(f"{store.safe_url}: database already has the store's tables ({', '.join(sorted(tables))});"
                              " restore only into an empty database")
    finally:
        store.close()
    args, env = _pg_args(url)
    _run([pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
          *args, str(dump)], env, "pg_restore")


def restore(config: ServiceConfig, src: Path) -> dict:
    """Restore a verified snapshot into the empty data dir (and empty database) of `config`."""
    src = Path(src)
    meta = verify_snapshot(src)
    dialect = meta["store"]["dialect"]
    target = Store(config.db_url, create=False)
    target_dialect, url = target.dialect, target.url
    target.close()
    if target_dialect != dialect:
        raise BackupError(f"{src}: snapshot of a {dialect} store cannot be restored into {target_dialect} "
                          "(set XINFANG_DATABASE_URL / --database-url to a store of the same kind)")
    _refuse_non_empty(config)
    if dialect == "sqlite" and _sqlite_path(url).exists():
        raise BackupError(f"{_sqlite_path(url)}: a store exists there; restore only into a new store")
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if dialect == "sqlite":
        dst_path = _sqlite_path(url)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(dst_path, "wb") as fh, open(src / SQLITE_FILE, "rb") as snapshot:
            shutil.copyfileobj(snapshot, fh, 1 << 20)
    else:
        _restore_pg(url, src / PG_FILE)
    if (src / "index").is_dir():
        shutil.copytree(src / "index", config.index_path, dirs_exist_ok=True)
    if (src / "models").is_dir():
        shutil.copytree(src / "models", data_dir / "models")
    store = Store(url, create=False)
    try:
        meta["restored_counts"] = _counts(store)
    finally:
        store.close()
    return meta
