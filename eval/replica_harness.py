"""N `xinfang serve` replicas on one fresh PostgreSQL database, HAProxy round-robin in front (tests and benches).

    with ReplicaCluster(server_url, ModelSetup(model_dirs=[...], embed_encoder=...), n=2, workdir=tmp) as c:
        requests.post(c.url + "/v1/petitions", headers=c.auth("intake"), json={...})
        c.kill(0); c.restart(0)

`server_url` names any database on the server (e.g. XINFANG_TEST_POSTGRES_URL); the cluster creates its own
database there (`xinfang_rep_<random>`) and drops it on stop. Each replica has its own data dir and a free port,
the same XINFANG_DATABASE_URL; HAProxy (scripts/install-haproxy.sh) health-checks /readyz. Every process is
started in its own session and stopped (SIGTERM, then SIGKILL) on stop(), on exit and on garbage collection.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path

HAPROXY_CANDIDATES = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")


class HarnessError(RuntimeError):
    """A replica or HAProxy did not start (the message carries the tail of its log)."""


def haproxy_bin() -> str | None:
    """The haproxy binary, or None when it is not installed."""
    found = shutil.which("haproxy")
    if found:
        return found
    return next((p for p in HAPROXY_CANDIDATES if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _server_engine(server_url: str):
    from sqlalchemy import create_engine

    from xinfang.serving.store import normalize_url

    return create_engine(normalize_url(server_url), isolation_level="AUTOCOMMIT")


def create_database(server_url: str, name: str | None = None) -> str:
    """Create a fresh database on the server of `server_url`; returns its URL."""
    from sqlalchemy import text

    name = name or f"xinfang_rep_{uuid.uuid4().hex[:10]}"
    engine = _server_engine(server_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return engine.url.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of `url` (connected through the server's `postgres` database)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from xinfang.serving.store import normalize_url

    target = make_url(normalize_url(url))
    engine = _server_engine(target.set(database="postgres").render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        engine.dispose()


@dataclass
class ModelSetup:
    """What every replica serves: bundles, embedder encoder, repeat scorer, runtime, plus any XINFANG_* extras."""

    model_dirs: list[Path] | None = None
    embed_encoder: str | None = None
    repeat_scorer: Path | None = None
    runtime: str = "torch"
    threads: int = 1
    env: dict[str, str] = field(default_factory=dict)

    def environ(self) -> dict[str, str]:
        out = {"XINFANG_RUNTIME": self.runtime, "XINFANG_THREADS": str(self.threads)}
        if self.model_dirs:
            out["XINFANG_MODEL_DIRS"] = ",".join(str(Path(p).resolve()) for p in self.model_dirs)
        if self.embed_encoder:
            out["XINFANG_EMBED_ENCODER"] = str(self.embed_encoder)
        if self.repeat_scorer:
            out["XINFANG_REPEAT_SCORER"] = str(Path(self.repeat_scorer).resolve())
        out.update(self.env)
        return out


@dataclass
class Replica:
    index: int
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _stop_process(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _cleanup(procs: list[subprocess.Popen], db_url: list[str]) -> None:
    """Finalizer: kill whatever is still running, drop the database (runs once)."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(10)
    while db_url:
        with contextlib.suppress(Exception):
            drop_database(db_url.pop())


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ReplicaCluster:
    """N replicas + HAProxy on a fresh database of `server_url`'s PostgreSQL server (see the module doc)."""

    def __init__(self, server_url: str, setup: ModelSetup, n: int = 2, workdir: Path | None = None,
                 ready_timeout: float = 180.0, log_level: str = "info", keep_database: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.server_url, self.setup, self.n = server_url, setup, n
        self.workdir = Path(workdir) if workdir else Path(os.environ.get("TMPDIR", "/tmp")) / (
            f"xinfang-cluster-{uuid.uuid4().hex[:8]}")
        self.ready_timeout, self.log_level = ready_timeout, log_level
        self.keep_database = keep_database
        self.extra_env = dict(extra_env or {})
        self.database_url: str | None = None
        self.keys: dict[str, str] = {}
        self.replicas: list[Replica] = []
        self.front_port: int | None = None
        self.haproxy: subprocess.Popen | None = None
        self._procs: list[subprocess.Popen] = []
        self._db: list[str] = []
        self._finalizer = weakref.finalize(self, _cleanup, self._procs, self._db)
        atexit.register(self._finalizer)

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> ReplicaCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ReplicaCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database_url = create_database(self.server_url)
        if not self.keep_database:
            self._db.append(self.database_url)
        self._prepare_store()
        for i in range(self.n):
            d = self.workdir / f"replica-{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.replicas.append(Replica(i, free_port(), d, self.workdir / f"replica-{i}.log"))
        for r in self.replicas:  # start all, then wait: they load their models in parallel
            self._spawn(r)
        for r in self.replicas:
            self.wait_ready(r.index)
        self._start_haproxy()
        self.wait_in_rotation()
        return self

    def stop(self) -> None:
        """Stop HAProxy and every replica (SIGTERM, SIGKILL after a grace period); drop the database."""
        _stop_process(self.haproxy, grace=5)
        for r in self.replicas:
            _stop_process(r.proc)
        self._finalizer()

    def _prepare_store(self) -> None:
        """Create the schema at head once (before replicas race to) and one key per role."""
        from xinfang.serving.store import Store

        store = Store(self.database_url)
        try:
            for role in ("intake", "caseworker", "admin"):
                self.keys[role] = store.create_key(f"harness-{role}", role, who="harness")
        finally:
            store.close()

    def replica_env(self, r: Replica) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XINFANG_")}
        env.update(self.setup.environ())
        env.update({"XINFANG_DATABASE_URL": self.database_url or "", "XINFANG_DATA_DIR": str(r.data_dir),
                    "OMP_NUM_THREADS": str(self.setup.threads), "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env

    def _command(self, r: Replica) -> list[str]:
        return [sys.executable, "-m", "xinfang.cli", "serve", "--host", "127.0.0.1", "--port", str(r.port),
                "--data-dir", str(r.data_dir), "--log-level", self.log_level]

    def _spawn(self, r: Replica) -> None:
        r.starts += 1
        with open(r.log_path, "ab") as log:
            log.write(f"\n--- start {r.starts} ---\n".encode())
            log.flush()
            r.proc = subprocess.Popen(self._command(r), env=self.replica_env(r), stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(r.proc)

    def wait_ready(self, i: int, timeout: float | None = None) -> float:
        """Block until replica i answers /readyz 200; returns the seconds waited. HarnessError with its log's
        tail when it exits or the timeout passes."""
        r = self.replicas[i]
        t0 = time.monotonic()
        deadline = t0 + (timeout or self.ready_timeout)
        while True:
            if not r.alive:
                code = r.proc.returncode if r.proc else None
                raise HarnessError(f"replica {i} exited (code {code}) before ready; log tail:\n{_tail(r.log_path)}")
            with contextlib.suppress(OSError):
                status, _ = http_get(r.url + "/readyz", timeout=2)
                if status == 200:
                    return time.monotonic() - t0
            if time.monotonic() > deadline:
                raise HarnessError(f"replica {i} not ready after {timeout or self.ready_timeout:.0f} s; "
                                   f"log tail:\n{_tail(r.log_path)}")
            time.sleep(0.2)

    # ------------------------------------------------------------------ HAProxy
    @property
    def haproxy_config_path(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def stats_socket(self) -> Path:
        return self.workdir / "haproxy.sock"

    def haproxy_config(self) -> str:
        """The configuration the harness runs (docs/service.md shows the same one)."""
        servers = "\n".join(f"    server r{r.index} 127.0.0.1:{r.port} check" for r in self.replicas)
        return f"""global
    maxconn 2000
    stats socket {self.stats_socket} mode 600 level admin

defaults
    mode http
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    # a request whose connection to a replica fails goes to another one (intake is idempotent by id)
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend xinfang
    bind 127.0.0.1:{self.front_port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    timeout check 3s
    default-server inter 1s fastinter 250ms downinter 500ms fall 2 rise 2
{servers}
"""

    def _start_haproxy(self) -> None:
        binary = haproxy_bin()
        if binary is None:
            raise HarnessError("haproxy is not installed: run scripts/install-haproxy.sh")
        self.front_port = free_port()
        self.haproxy_config_path.write_text(self.haproxy_config(), encoding="utf-8")
        check = subprocess.run([binary, "-c", "-q", "-f", str(self.haproxy_config_path)], capture_output=True,
                               text=True)
        if check.returncode != 0:
            raise HarnessError(f"haproxy refused its configuration: {check.stderr.strip()}")
        log_path = self.workdir / "haproxy.log"
        with open(log_path, "ab") as log:
            self.haproxy = subprocess.Popen([binary, "-db", "-f", str(self.haproxy_config_path)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self._procs.append(self.haproxy)
        deadline = time.monotonic() + 15
        while not self.stats_socket.exists():
            if self.haproxy.poll() is not None or time.monotonic() > deadline:
                raise HarnessError(f"haproxy did not start; log tail:\n{_tail(log_path)}")
            time.sleep(0.05)

    def backend_status(self) -> dict[int, str]:
        """HAProxy's view of each replica: {index: 'UP' | 'DOWN' | ...} (from its stats socket)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "replicas" and row.get("svname", "").startswith("r"):
                out[int(row["svname"][1:])] = row.get("status", "")
        return out

    def wait_in_rotation(self, indices: list[int] | None = None, timeout: float = 30.0) -> None:
        """Block until HAProxy has the replicas `indices` (default: all) UP."""
        want = set(range(self.n) if indices is None else indices)
        deadline = time.monotonic() + timeout
        while True:
            status = self.backend_status()
            if all(status.get(i) == "UP" for i in want):  # not "UP 1/2" (a check just failed)
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"HAProxy does not have replicas {sorted(want)} UP: {status}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ what tests and benches use
    @property
    def url(self) -> str:
        """The front (HAProxy) URL."""
        return f"http://127.0.0.1:{self.front_port}"

    @property
    def replica_urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def kill(self, i: int) -> None:
        """SIGKILL replica i (its whole process group) and wait for it to be gone."""
        r = self.replicas[i]
        if r.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait(10)

    def restart(self, i: int, wait: bool = True) -> float:
        """(Re)start replica i on its port and data dir; returns the seconds until ready (0 when not waited)."""
        r = self.replicas[i]
        _stop_process(r.proc)
        self._spawn(r)
        if not wait:
            return 0.0
        seconds = self.wait_ready(i)
        if self.haproxy is not None:
            self.wait_in_rotation([i])
        return seconds

    def logs(self, i: int) -> str:
        """Replica i's log (all its starts), JSON lines from the service plus uvicorn's lines."""
        return self.replicas[i].log_path.read_text(encoding="utf-8", errors="replace")

    def log_records(self, i: int) -> list[dict]:
        """The JSON log records of replica i."""
        out = []
        for line in self.logs(i).splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out
