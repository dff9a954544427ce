"""Model card (markdown) and confusion-matrix figure for a classifier bundle."""

from __future__ import annotations


def confusion_png_bytes(matrix: list[list[int]], labels: list[str], title: str) -> bytes:
    """The PNG of save_confusion_png, as bytes (for ClassifierBundle.save)."""
    import io

    buf = io.BytesIO()
    save_confusion_png(matrix, labels, buf, title)
    return buf.getvalue()


def save_confusion_png(matrix: list[list[int]], labels: list[str], path, title: str) -> None:
    """Row-normalised confusion matrix with counts, written with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib import font_manager

    cjk = [f.name for f in font_manager.fontManager.ttflist
           if any(k in f.name for k in ("Noto Sans CJK", "Noto Serif CJK", "WenQuanYi", "SimHei", "Source Han"))]
    names = labels
    if cjk:
        plt.rcParams["font.sans-serif"] = [cjk[0], "DejaVu Sans"]
    else:  # no CJK font installed: index the classes and print the legend in the card
        names = [f"C{i}" for i in range(len(labels))]
    m = np.asarray(matrix, dtype=float)
    norm = m / np.clip(m.sum(axis=1, keepdims=True), 1, None)
    size = max(4.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    if len(labels) <= 12:
        for i in range(len(labels)):
            for j in range(len(labels)):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png", metadata={"Software": None, "Creation Time": None})
    plt.close(fig)


def _f(v) -> str:
    return "–" if v is None else f"{v:.4f}"


def _ensemble_line(ens: dict | None) -> str:
    if not ens:
        return "- ensemble: none (encoder + linear head only)"
    f1 = ens["validation_macro_f1"]
    return (f"- ensemble: `{ens['rule']}` with a char 1-3-gram TF-IDF + LinearSVC head (tfidf.json, "
            f"tfidf_head.safetensors); weight **{ens['weight']}** on the encoder, chosen by {ens['selection']}; "
            f"validation macro-F1: encoder {_f(f1['encoder'])}, TF-IDF {_f(f1['tfidf'])}, "
            f"ensemble {_f(f1['ensemble'])}")


def render_card(config: dict, metrics: dict, labels: list[str]) -> str:
    r = config["review"]
    rec = config["recipe"]
    lines = [
        f"# Model card: {config['name']} ({config['task']} classifier)",
        "",
        "## What it does",
        f"Predicts the **{config['task']}** of a Chinese petition (信访) from its title and text, with a calibrated "
        "confidence, top-k alternatives and a `needs_review` flag.",
        "",
        "## Model",
        f"- base encoder: `{config['base_encoder']}` (fingerprint {config['base']['fingerprint'][:16]}, its first "
        f"{config['shared_layers']} layers shared as they are); mean pooling; linear head over {len(labels)} labels",
        f"- input: `petition_text(title, text)` (normalised, max {config['normalization']['max_chars']} chars), "
        f"prefix `{config['text_prefix']!r}`, truncated to {config['max_length']} tokens",
        f"- frozen: embeddings and encoder layers {config['frozen']['layers'][:1] + ['…'] + config['frozen']['layers'][-1:] if len(config['frozen']['layers']) > 2 else config['frozen']['layers']};"  # noqa: E501
        f" fine-tuned: top {rec['trainable_layers']} layers + head",
        f"- recipe `{rec['name']}`: epochs {rec['epochs']}, batch {rec['batch_size']}, lr {rec['lr']}, "
        f"head lr {rec['head_lr']}, warmup {rec['warmup_ratio']}, weight decay {rec['weight_decay']}, seed {config['seed']}",
        f"- training time: {config['train_seconds']:.0f} s on {config['device']}",
        _ensemble_line(config.get("ensemble")),
        "",
        "## Data",
        f"- {config['n_examples']} examples, fingerprint `{config['data_fingerprint'][:16]}…` (sha256 of normalised texts + labels)",
        f"- split: {config['split']['method']}; train {config['split']['n_train']}, validation {config['split']['n_val']}",
        "- class counts: " + ", ".join(f"{k} {v}" for k, v in config["class_counts"].items()),
    ]
    if config.get("dropped_classes"):
        lines.append("- **dropped classes** (fewer than "
                     f"{rec['min_class_count']} examples; the model cannot predict them): "
                     + ", ".join(f"{k} ({v})" for k, v in config["dropped_classes"].items()))
    lines += [
        "",
        "## Validation metrics (group-aware held-out validation split)",
        f"- accuracy {_f(metrics['accuracy'])}, macro-F1 {_f(metrics['macro_f1'])}, "
        f"top-3 accuracy {_f(metrics.get('top3_accuracy'))}"
        + (" (the shipped ensemble's probabilities)" if config.get("ensemble") else ""),
        f"- calibration: temperature {config['temperature']:.3f}; ECE {_f(metrics['ece_before_calibration'])} before, "
        f"{_f(metrics['ece_after_calibration'])} after (15 bins; fitted and measured on the same validation split)",
        f"- review rule: `needs_review` when the calibrated top score < **{r['threshold']:.4f}**, chosen on validation "
        f"for a target precision of {r['target_precision']}"
        + (f" (validation precision {_f(r['validation_precision'])}, coverage {_f(r['validation_coverage'])})"
           if r["attainable"] else " — **not attainable on validation: every prediction is flagged**"),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for lab in labels:
        pc = metrics["per_class"][lab]
        lines.append(f"| {lab} | {pc['precision']:.3f} | {pc['recall']:.3f} | {pc['f1']:.3f} | {pc['support']} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", "",
              "Confusion-matrix classes (if the figure shows C0, C1, …): "
              + ", ".join(f"C{i}={lab}" for i, lab in enumerate(labels)), "",
              "## Limits",
              "- Validation figures come from a small split of the training data; the held-out benchmark is in "
              "eval/reports/classification.md.",
              "- Calibration and the review threshold assume new petitions resemble the training data.", ""]
    return "\n".join(lines)
