"""Architecture benchmark: trees of the repository measured side by side in one run -> eval/reports/architecture.md.

For each tree (a checkout with its own `.venv`, e.g. a `git worktree` of an older commit):
- `scripts/serve-demo.sh` from scratch in a fresh data dir (demo models built, demo petitions loaded, server
  started with its defaults); the demo topic bundle's size and the data dir's size on disk once it is ready;
- the same data dir with N synthetic petitions added to the store and the index (random unit vectors, ids
  `syn-*`; written with the tree's own index class, rows inserted into the tree's `petitions` table as
  reflected from its database), then `xinfang serve` with the defaults: RSS after a few requests and after the
  load, and `POST /v1/petitions` at 8 clients (rounds alternating between the trees, so both see the same load).

Each tree runs its own code: its scripts, its `.venv/bin/xinfang`, its `.venv/bin/python` for the populate step.

    .venv/bin/python eval/bench_architecture.py --baseline ../base-checkout --candidate .
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------ helpers
def disk_bytes(path: Path) -> int:
    """Bytes on disk under `path` (allocated blocks, each inode once, links not followed), like `du -s`."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def tree_commit(tree: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def start_server(cwd: Path, cmd: list[str], env: dict[str, str], log: Path):
    """eval/bench_service.py's Server (wait_ready, rss_mb, stop) for a tree's command ending in `xinfang serve`."""
    from bench_service import Server

    return Server(None, env, log, cmd=cmd, cwd=cwd)


class Tree:
    def __init__(self, label: str, path: Path, work: Path) -> None:
        self.label, self.path = label, path.resolve()
        self.data = work / label / "data"
        self.load_dir = work / label / "load"
        self.logs = work / "logs"
        self.env = {"XINFANG_DATA_DIR": str(self.data), "OMP_WAIT_POLICY": "PASSIVE"}
        self.result: dict = {"commit": tree_commit(self.path)}
        if not (self.path / ".venv" / "bin" / "xinfang").exists():
            raise SystemExit(f"{path}: no .venv/bin/xinfang (set the tree up first: scripts/setup.sh)")

    def xinfang(self, *args: str, data_dir: Path | None = None) -> str:
        env = {**os.environ, **self.env, **({"XINFANG_DATA_DIR": str(data_dir)} if data_dir else {})}
        out = subprocess.run([str(self.path / ".venv" / "bin" / "xinfang"), *args], cwd=self.path, env=env,
                             capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise RuntimeError(f"{self.label}: xinfang {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout.strip()


# ------------------------------------------------------------------------------------------------ steps
def demo_build(tree: Tree, timeout: float, reuse: bool) -> None:
    """serve-demo.sh in a fresh data dir until the server is ready; sizes on disk; server stopped.
    With `reuse`, a build of the same clean commit left in the work dir by an earlier run is measured again."""
    marker = tree.data.parent / "demo-build.json"
    if reuse and marker.exists() and "uncommitted" not in tree.result["commit"]:
        built = json.loads(marker.read_text())
        if built.get("commit") == tree.result["commit"]:
            tree.result["demo_build_s"] = built["demo_build_s"]
            tree.result["demo_reused_from"] = built["date"]
            measure_demo(tree)
            return
    shutil.rmtree(tree.data.parent, ignore_errors=True)
    tree.data.mkdir(parents=True)
    t0 = time.perf_counter()
    server = start_server(tree.path, ["nice", "-n", "10", "bash", "scripts/serve-demo.sh"], tree.env,
                          tree.logs / f"{tree.label}-serve-demo.log")
    try:
        server.wait_ready(timeout)
    finally:
        server.stop()
    tree.result["demo_build_s"] = round(time.perf_counter() - t0, 1)
    marker.write_text(json.dumps({"commit": tree.result["commit"], "demo_build_s": tree.result["demo_build_s"],
                                  "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}))
    measure_demo(tree)


def measure_demo(tree: Tree) -> None:
    r = tree.result
    r["topic_bundle_mb"] = round(disk_bytes(tree.data / "models" / "topic-demo") / MB, 1)
    r["bundles_mb"] = {p.name: round(disk_bytes(p) / MB, 1) for p in sorted((tree.data / "models").iterdir())
                       if p.is_dir()}
    r["data_dir_mb"] = round(disk_bytes(tree.data) / MB, 1)
    r["data_dir_parts_mb"] = {p.name: round((disk_bytes(p) if p.is_dir() else p.lstat().st_blocks * 512) / MB, 1)
                              for p in sorted(tree.data.iterdir())}
    print(f"[{tree.label}] demo built in {r['demo_build_s']} s: topic bundle {r['topic_bundle_mb']} MB, data dir "
          f"{r['data_dir_mb']} MB {r['data_dir_parts_mb']}", flush=True)


def load_copy(tree: Tree) -> Path:
    """The demo data dir for the load: store and index copied, the read-only rest (models, encoder, ONNX cache)
    hard-linked, so the demo build stays as it was (and can be reused)."""
    dest = tree.data.parent / "load"
    shutil.rmtree(dest, ignore_errors=True)
    for item in tree.data.iterdir():
        if item.name in ("models", "encoders", "onnx"):
            shutil.copytree(item, dest / item.name, copy_function=os.link, symlinks=True)
        elif item.is_dir():
            shutil.copytree(item, dest / item.name, symlinks=True)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dest / item.name)
    return dest


def _insert_rows(conn, table, n: int, fill) -> None:
    """n rows into a reflected table, 20k at a time; `fill(i)` gives row i (refused: a required column it lacks)."""
    from sqlalchemy import insert

    sample = fill(0)
    required = {c.name for c in table.columns if not c.nullable and c.default is None and c.server_default is None
                and c.autoincrement is not True}
    if required - set(sample):
        raise SystemExit(f"table {table.name} has required columns this benchmark does not fill: "
                         f"{sorted(required - set(sample))}")
    for start in range(0, n, 20_000):
        conn.execute(insert(table), [{k: v for k, v in fill(i).items() if k in table.columns}
                                     for i in range(start, min(n, start + 20_000))])


def populate(data_dir: Path, n: int, texts_file: Path) -> None:
    """(Runs in the tree's own Python.) Add n synthetic petitions to the store and the index of `data_dir`, each
    in a matter of its own when the tree has matters (as the start-up repair would give them, in one go)."""
    import numpy as np
    from sqlalchemy import MetaData, create_engine

    from xinfang.models.vector_index import VectorIndex

    texts = json.loads(texts_file.read_text(encoding="utf-8"))
    engine = create_engine(f"sqlite:///{data_dir / 'xinfang.db'}")
    meta = MetaData()
    meta.reflect(engine)
    now = datetime.now(UTC).replace(tzinfo=None)
    labels = {"topic": None, "department": None, "needs_review": False}

    def petition(i: int) -> dict:
        t = texts[i % len(texts)]
        return {"id": f"syn-{i}", "title": t["title"], "text": t["text"], "petitioner": None, "received_at": None,
                "channel": "synthetic", "text_hash": "-", "request_hash": "-", "labels": labels, "topic": None,
                "department": None, "needs_review": False, "repeat_count": 0, "models": {}, "response": {},
                "created_at": now}

    with engine.begin() as conn:
        _insert_rows(conn, meta.tables["petitions"], n, petition)
        if "matters" in meta.tables and "matter_members" in meta.tables:
            _insert_rows(conn, meta.tables["matters"], n, lambda i: {
                "id": f"M-syn-{i}", "status": "open", "created_at": now, "updated_at": now})
            _insert_rows(conn, meta.tables["matter_members"], n, lambda i: {
                "petition_id": f"syn-{i}", "matter_id": f"M-syn-{i}", "via": None, "probability": None,
                "reason": "synthetic", "joined_at": now})
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    index = VectorIndex.load(data_dir / "index")
    rng = np.random.default_rng(0)
    for start in range(0, n, 50_000):
        m = min(n, start + 50_000) - start
        v = rng.standard_normal((m, index.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        index.add([f"syn-{i}" for i in range(start, start + m)], v)
    index.save(data_dir / "index")


def sample_petitions(n: int, seed: int = 0) -> tuple[list[dict], str]:
    """Real petitions of about median length (read from ../shared, never copied), else the demo ones."""
    from xinfang.settings import DEMO_DATA_DIR, SHARED_DATA_DIR

    path, source = SHARED_DATA_DIR / "topic_train.jsonl", "real (../shared topic_train.jsonl)"
    if not path.exists():
        path, source = DEMO_DATA_DIR / "petitions.jsonl", "demo (datasets/demo/petitions.jsonl)"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [{"title": r.get("title") or None, "text": r["text"][:9000]} for r in rows if r.get("text")]
    lengths = sorted(len(r["title"] or "") + len(r["text"]) for r in rows)
    median = lengths[len(lengths) // 2]
    near = [r for r in rows if 0.75 * median <= len(r["title"] or "") + len(r["text"]) <= 1.25 * median]
    random.Random(seed).shuffle(near)
    return near[:n], f"{source}; median title+text {median} chars; sampled within ±25% of it"


async def post_load(url: str, key: str, petitions: list[dict], prefix: str, clients: int, duration: float,
                    max_requests: int, pid: int) -> dict:
    import httpx
    from bench_service import cpu_seconds

    lat: list[float] = []
    codes: dict[int, int] = {}
    sent = 0
    rng = random.Random(prefix)
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                                 limits=limits) as client:
        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = {**rng.choice(petitions), "id": f"{prefix}-{sent}"}
                t = time.perf_counter()
                try:
                    code = (await client.post("/v1/petitions", json=body)).status_code
                except httpx.HTTPError:
                    code = 0
                lat.append((time.perf_counter() - t) * 1000)
                codes[code] = codes.get(code, 0) + 1

        t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    return {"requests": len(lat), "ok": ok, "seconds": round(wall, 2), "petitions_per_s": round(ok / wall, 2),
            "latencies_ms": lat, "server_cpu_s": round(cpu, 2), "status": {str(k): v for k, v in codes.items()},
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def serve_loaded(trees: list[Tree], args, petitions: list[dict]) -> None:
    """Every tree's server on its populated data dir: RSS, then alternating load rounds, then RSS again."""
    import httpx
    from bench_service import pct

    servers = {}
    try:
        for tree in trees:
            key = tree.xinfang("keys", "create", "--role", "intake", "--name", f"bench-{time.time_ns()}",
                               data_dir=tree.load_dir)
            env = {**tree.env, "XINFANG_DATA_DIR": str(tree.load_dir),
                   "XINFANG_DUTY_LIST": "datasets/demo/duty_list.yaml"}  # as serve-demo.sh
            server = start_server(tree.path, [str(tree.path / ".venv" / "bin" / "xinfang"), "serve"], env,
                                  tree.logs / f"{tree.label}-serve-{args.stored}.log")
            tree.result["startup_s"] = round(server.wait_ready(args.timeout), 1)
            for i, p in enumerate(petitions[:5]):  # a few real requests so lazy buffers are allocated
                httpx.post(server.url + "/v1/petitions", json={**p, "id": f"warm-{i}"},
                           headers={"Authorization": f"Bearer {key}"}, timeout=120).raise_for_status()
            pid = server.proc.pid  # uvicorn serves in the `xinfang serve` process (one worker)
            tree.result["rss_mb"] = round(server.rss_mb())
            servers[tree.label] = (server, key, pid)
            print(f"[{tree.label}] {args.stored:,} indexed: ready in {tree.result['startup_s']} s, RSS "
                  f"{tree.result['rss_mb']} MB", flush=True)
        rounds: dict[str, list[dict]] = {t.label: [] for t in trees}
        for rnd in range(args.rounds):
            order = trees if rnd % 2 == 0 else trees[::-1]
            for tree in order:
                server, key, pid = servers[tree.label]
                r = asyncio.run(post_load(server.url, key, petitions, f"load-{rnd}", args.clients, args.duration,
                                          args.max_requests, pid))
                rounds[tree.label].append(r)
                print(f"[{tree.label}] round {rnd}: {r['petitions_per_s']} petitions/s, p50 "
                      f"{pct(r['latencies_ms'], 50):.0f} ms, status {r['status']}, load {r['loadavg_1m']}", flush=True)
        for tree in trees:
            server, key, pid = servers[tree.label]
            rs = rounds[tree.label]
            lat = [x for r in rs for x in r["latencies_ms"]]
            ok = sum(r["ok"] for r in rs)
            tree.result["rss_after_load_mb"] = round(server.rss_mb())
            tree.result["post"] = {
                "clients": args.clients, "rounds": len(rs), "requests": sum(r["requests"] for r in rs), "ok": ok,
                "petitions_per_s": round(ok / sum(r["seconds"] for r in rs), 2),
                "per_round_petitions_per_s": [r["petitions_per_s"] for r in rs],
                "p50_ms": round(pct(lat, 50), 1), "p95_ms": round(pct(lat, 95), 1),
                "server_cpu_ms_per_petition": round(1000 * sum(r["server_cpu_s"] for r in rs) / ok, 1) if ok else None,
                "status": {k: sum(r["status"].get(k, 0) for r in rs) for k in {k for r in rs for k in r["status"]}},
                "loadavg_1m": [r["loadavg_1m"] for r in rs]}
    finally:
        for server, _, _ in servers.values():
            server.stop()


# ------------------------------------------------------------------------------------------------ report
def write_report(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    trees = results["trees"]
    labels = list(trees)
    m = results["machine"]
    L = [f"# Architecture benchmark ({results['date']})", "",
         f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, load average at start "
         f"{m['loadavg_at_start']} (shared machine: other jobs ran at the same time; the load rounds alternate "
         "between the trees so both see the same load).", "",
         f"Command: `{results['command']}` (BASELINE and CANDIDATE: checkouts with their own `.venv`, e.g. "
         "`git worktree add --detach BASELINE <commit>` set up like scripts/setup.sh does).", "",
         "Trees: " + "; ".join(f"**{k}** {v['commit']}" for k, v in trees.items()) + ".", "",
         f"Inputs of `POST /v1/petitions`: {results['inputs']}. Stored before the load: the demo petitions plus "
         f"{results['stored']:,} synthetic ones (random unit vectors added to the tree's own index; rows inserted "
         "into its `petitions` table, each in a matter of its own), server with its defaults (`xinfang serve`, the demo models, "
         "XINFANG_DUTY_LIST as serve-demo.sh sets it).", "",
         "| measure | target | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]

    def row(name: str, target: str, get) -> None:
        cells = []
        for k in labels:
            try:
                cells.append(str(get(trees[k])))
            except (KeyError, TypeError):
                cells.append("-")
        L.append(f"| {name} | {target} | " + " | ".join(cells) + " |")

    row("demo topic bundle on disk (MB)", "≤ 40", lambda t: t["topic_bundle_mb"])
    row("data dir after serve-demo.sh (MB)", "≤ 1024", lambda t: t["data_dir_mb"])
    row("serve-demo.sh from scratch to ready (s)", "", lambda t: t["demo_build_s"])
    row(f"server RSS, {results['stored']:,} indexed, after 5 requests (MB)", "≤ 1229", lambda t: t["rss_mb"])
    row("server RSS after the load (MB)", "", lambda t: t["rss_after_load_mb"])
    row(f"POST /v1/petitions, {results['clients']} clients (petitions/s)", "≥ 1.3× baseline",
        lambda t: t["post"]["petitions_per_s"])
    row("  per round", "", lambda t: ", ".join(map(str, t["post"]["per_round_petitions_per_s"])))
    row("  p50 / p95 (ms)", "p50 no worse", lambda t: f"{t['post']['p50_ms']} / {t['post']['p95_ms']}")
    row("  server CPU per petition (ms)", "", lambda t: t["post"]["server_cpu_ms_per_petition"])
    row("  answers", "", lambda t: t["post"]["status"])
    row("start-up to ready with the stored petitions (s)", "", lambda t: t["startup_s"])
    if len(labels) > 1:
        base = trees[labels[0]]
        for k in labels[1:]:
            try:
                ratio = trees[k]["post"]["petitions_per_s"] / base["post"]["petitions_per_s"]
                L += ["", f"Throughput {k} / {labels[0]}: **{ratio:.2f}×**."]
            except (KeyError, TypeError, ZeroDivisionError):
                pass
    L += ["", "## Disk per part of the data dir (MB)", "", "| part | " + " | ".join(labels) + " |",
          "|---|" + "---|" * len(labels)]
    parts = sorted({p for t in trees.values() for p in t.get("data_dir_parts_mb", {})})
    for p in parts:
        L.append(f"| {p} | " + " | ".join(str(t.get("data_dir_parts_mb", {}).get(p, "-")) for t in trees.values())
                 + " |")
    bundles = sorted({p for t in trees.values() for p in t.get("bundles_mb", {})})
    for b in bundles:
        L.append(f"| models/{b} | " + " | ".join(str(t.get("bundles_mb", {}).get(b, "-")) for t in trees.values())
                 + " |")
    notes = list(results.get("notes", [])) + [
        f"{k}: demo build reused from a run of {t['demo_reused_from']} (same commit; sizes measured again now)"
        for k, t in trees.items() if t.get("demo_reused_from")]
    if notes:
        L += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    out.write_text("\n".join(L) + "\n", encoding="utf-8")


def command_args(argv: list[str], trees: list[Tree]) -> list[str]:
    """The command line as the report shows it: trees by their label (BASELINE, CANDIDATE), no local paths."""
    names = {str(t.path): t.label.upper() for t in trees}
    out = []
    for i, a in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if prev in ("--baseline", "--candidate"):
            out.append(names.get(str(Path(a).resolve()), "TREE"))
        elif prev in ("--work", "--out"):
            p = Path(a).resolve()
            out.append(str(p.relative_to(REPO)) if prev == "--out" and p.is_relative_to(REPO) else "DIR")
        else:
            out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="the tree to compare against (its own .venv)")
    ap.add_argument("--candidate", type=Path, action="append", default=[], help="a tree to measure (repeatable)")
    ap.add_argument("--stored", type=int, default=100_000, help="synthetic petitions added before the load")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4, help="load rounds per tree, alternating between the trees")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per load round")
    ap.add_argument("--max-requests", type=int, default=2000, help="requests per load round at most")
    ap.add_argument("--timeout", type=float, default=1500, help="seconds a server may take to become ready")
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir, removed at the end)")
    ap.add_argument("--reuse", action="store_true", help="reuse a demo build of the same clean commit left in "
                    "--work by an earlier run (its sizes are measured again; its build time is the earlier one)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    ap.add_argument("--out", type=Path, default=REPO / "eval" / "reports" / "architecture.md")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still writes the partial report
    from xinfang.machine import machine_info

    work = (args.work or Path(tempfile.mkdtemp(prefix="xf-arch-"))).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    labels = ["baseline"] + [f"candidate{i + 1}" if len(args.candidate) > 1 else "candidate"
                             for i in range(len(args.candidate))]
    trees = [Tree(lab, p, work) for lab, p in zip(labels, [args.baseline, *args.candidate], strict=True)]
    petitions, inputs = sample_petitions(400)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(petitions, ensure_ascii=False), encoding="utf-8")
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
                     "command": "python eval/bench_architecture.py " + " ".join(command_args(sys.argv[1:], trees)),
                     "inputs": inputs, "stored": args.stored, "clients": args.clients, "notes": list(args.note),
                     "trees": {t.label: t.result for t in trees}}
    t0 = time.perf_counter()
    try:
        for tree in trees:
            demo_build(tree, args.timeout, args.reuse)
        for tree in trees:
            s = time.perf_counter()
            load_copy(tree)
            subprocess.run([str(tree.path / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--populate",
                            str(tree.load_dir), str(args.stored), str(texts_file)], check=True, cwd=tree.path)
            tree.result["populate_s"] = round(time.perf_counter() - s, 1)
        serve_loaded(trees, args, petitions)
    finally:
        from bench_service import LIVE

        for server in list(LIVE):
            server.stop()
        results["seconds"] = round(time.perf_counter() - t0)
        write_report(results, args.out)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out} in {results['seconds']} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--populate"]:
        populate(Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
