"""Slim bundles and the shared base run: bundle size on disk, classify latency/throughput, same answers.

    python eval/bench_bundles.py --models DIR [DIR ...] [--old DIR ...] [--reference predictions.json]

For the given (slim) bundles, measured in one run on the demo petitions (datasets/demo/petitions.jsonl) with the
torch backend and 1 thread: p50 of one-petition classify calls and throughput in batches of 32, for the pipeline
as served (bundles on one base share one run of its layers, models.classifier.bundle_logits) and, as the
baseline of the same run, each bundle run on its own (the base's layers once per task, as before). `--old`: the
format-1 bundles the slim ones were converted from (sizes); `--reference`: their predictions (JSON list of
classify rows), checked label for label. Writes eval/reports/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPORTS = Path(__file__).resolve().parent / "reports"


def shown(path: Path) -> str:
    """A path as the report shows it: relative to the working directory, else its last two parts."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return "/".join(Path(path).parts[-2:])


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def timed(classify, petitions: list[dict]) -> dict:
    classify(petitions[:8])  # warm-up
    single = []
    for p in petitions[:60]:
        t0 = time.perf_counter()
        classify([p])
        single.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    rows = []
    for s in range(0, len(petitions), 32):
        rows += classify(petitions[s:s + 32])
    return {"p50_ms_one_petition": round(statistics.median(single), 2),
            "petitions_per_s_batch32": round(len(petitions) / (time.perf_counter() - t0), 2), "rows": rows}


def main() -> None:
    import torch

    from xinfang.machine import machine_info
    from xinfang.models.pipeline import ClassificationPipeline
    from xinfang.records import load_records
    from xinfang.settings import DEMO_DATA_DIR

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", type=Path, required=True)
    ap.add_argument("--old", nargs="*", type=Path, default=[])
    ap.add_argument("--reference", type=Path, default=None)
    ap.add_argument("--report-name", default="bundles")
    args = ap.parse_args()
    torch.set_num_threads(1)
    petitions = [{"id": r["id"], "title": r.get("title"), "text": r.get("text")}
                 for r in load_records(DEMO_DATA_DIR / "petitions.jsonl")]
    t0 = time.perf_counter()
    pipe = ClassificationPipeline.from_paths(args.models)
    load_s = time.perf_counter() - t0
    shared = timed(pipe.classify, petitions)

    def separate(batch: list[dict]) -> list[dict]:  # baseline: the base's layers once per task
        from xinfang.models.classifier import petition_input

        texts = [petition_input(p) for p in batch]
        for b in pipe.bundles.values():
            b.proba_texts(texts)
        return []

    alone = timed(separate, petitions)
    report = {"machine": machine_info(), "load_seconds": round(load_s, 2),
              "bundles": {t: {"path": b.path.name, "bytes": dir_size(b.path), "shared_layers": b.shared_layers,
                              "max_length": b.max_length, "prefix": b.prefix} for t, b in pipe.bundles.items()},
              "old_bundles": {shown(p): dir_size(p) for p in args.old},
              "shared_run": {k: v for k, v in shared.items() if k != "rows"},
              "separate_runs_same_process": {k: v for k, v in alone.items() if k != "rows"}}
    if args.reference:
        ref = json.loads(args.reference.read_text(encoding="utf-8"))
        rows = shared["rows"]
        same = {t: int(sum(a[t]["label"] == b[t]["label"] for a, b in zip(rows, ref, strict=True)))
                for t in pipe.bundles if t in ref[0]}
        diff = {t: float(max(abs(a[t]["score"] - b[t]["score"]) for a, b in zip(rows, ref, strict=True)))
                for t in same}
        report["same_answers"] = {"n": len(ref), "same_label": same, "max_score_difference": diff,
                                  "same_needs_review": int(sum(a["needs_review"] == b["needs_review"]
                                                               for a, b in zip(rows, ref, strict=True)))}
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / f"{args.report_name}.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), "utf-8")
    m = report["machine"]
    lines = [f"# Slim bundles and the shared base run ({m.get('date', '')}, {m.get('cpu', '')}, "
             f"{m.get('nproc', '')} cores, commit {m.get('commit', '')})", "",
             f"Command: `python eval/bench_bundles.py --models {' '.join(shown(p) for p in args.models)}"
             + (f" --old {' '.join(shown(p) for p in args.old)}" if args.old else "")
             + (f" --reference {shown(args.reference)}" if args.reference else "") + "`; torch backend, 1 thread, "
             f"{len(petitions)} demo petitions; load average at start {m.get('loadavg_at_start')}.", "",
             "| bundle | bytes on disk | shared layers | max length |", "|---|---|---|---|"]
    for t, b in report["bundles"].items():
        lines.append(f"| {t} ({b['path']}) | {b['bytes']:,} | {b['shared_layers']} | {b['max_length']} |")
    for name, size in report["old_bundles"].items():
        lines.append(f"| format-1 {name} | {size:,} | – | – |")
    lines += ["", "| run | p50 one petition (ms) | petitions/s in batches of 32 |", "|---|---|---|",
              f"| shared base run (served) | {shared['p50_ms_one_petition']} | {shared['petitions_per_s_batch32']} |",
              f"| each task alone (baseline, same run) | {alone['p50_ms_one_petition']} | "
              f"{alone['petitions_per_s_batch32']} |"]
    if "same_answers" in report:
        sa = report["same_answers"]
        lines += ["", f"Same answers as the reference on {sa['n']} petitions: labels {sa['same_label']}, "
                  f"max score difference {sa['max_score_difference']}, needs_review {sa['same_needs_review']}."]
    (REPORTS / f"{args.report_name}.md").write_text("\n".join(lines) + "\n", "utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
