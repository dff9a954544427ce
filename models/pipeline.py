"""The classification pipeline the CLI and the service call: topic model, department model, duty list.

`ClassificationPipeline.from_paths([topic_dir, department_dir], duty_list=yaml)` loads (and verifies) the
bundles once; `.classify(petitions)` returns one dict per petition, in input order:

    {"id": ..., "topic": {"label", "score", "top"},
     "department": {"label", "score", "top", "jurisdiction", "display"},   # with a department model or duty list
     "channel": {"label", "score", "top", "reason", "procedure", "body"},  # with a channel model
     "needs_review": bool}

`needs_review` is True when any model-based answer is under its bundle's review threshold (a department
decided by a duty-list pattern counts as sure; the channel by models/channel.py, its procedure and body from
the channel table). The bundles share one loaded base and, when they read the same tokens (same prefix and
max length), one run of its layers per petition (models.classifier.bundle_logits). Inference is thread-safe:
the bundles are read-only after loading, each call works on its own tensors, and tokenizer calls are locked.
"""

from __future__ import annotations

from pathlib import Path

from xinfang.errors import DataError, ModelError
from xinfang.models.channel import ChannelDecider, ChannelTable
from xinfang.models.classifier import ClassifierBundle, bundle_logits, petition_input
from xinfang.models.duty_list import DutyList
from xinfang.models.petition import Petition
from xinfang.models.router import Router

__all__ = ["ClassificationPipeline"]

TASKS = ("topic", "department", "channel")


class ClassificationPipeline:
    def __init__(self, bundles: dict[str, ClassifierBundle], duty_list: DutyList | None = None,
                 channel_table: ChannelTable | None = None) -> None:
        if not bundles and duty_list is None:
            raise ModelError("a classification pipeline needs at least one model bundle or a duty list")
        unknown = set(bundles) - set(TASKS)
        if unknown:
            raise ModelError(f"unsupported task(s) {sorted(unknown)}; expected {', '.join(TASKS)}")
        self.bundles = bundles
        dept = bundles.get("department")
        if duty_list is None and dept is not None:
            duty_list = dept.duty_list  # the duty list the department model was trained with
        self.duty = duty_list
        self.router = Router(duty_list, dept.labels if dept else None, dept.routing if dept else None,
                             dept.neighbour_shares if dept is not None and dept.neighbours is not None else None) \
            if (dept or duty_list) else None
        self.channel = None
        if "channel" in bundles:
            from xinfang.settings import CHANNEL_TABLE

            ch = bundles["channel"]
            self.channel = ChannelDecider(channel_table or ChannelTable.load(CHANNEL_TABLE), ch.labels, ch.threshold,
                                          fuse=ch.config.get("keyword_fusion", True))
        self._prepare()

    def _prepare(self) -> None:
        """Build the base segments the shared run needs now (ONNX export/quantization), not on a request."""
        groups: dict[tuple, list[ClassifierBundle]] = {}
        for b in self.bundles.values():
            if not b.text_only:  # a text-only bundle (the channel default) runs no encoder
                groups.setdefault(b.input_key, []).append(b)
        for members in groups.values():
            depth = min(b.shared_layers for b in members)
            members[0].stack.prepare(0, depth)
            for b in members:
                if b.shared_layers > depth:
                    b.stack.prepare(depth, b.shared_layers)

    @classmethod
    def from_paths(cls, model_dirs: list[Path], duty_list: Path | None = None, channel_table: Path | None = None,
                   backend: str = "torch", cache_dir: Path | None = None, threads: int = 2) -> ClassificationPipeline:
        """Load every bundle with `backend` (torch, onnx, onnx-int8; ONNX files under `cache_dir`)."""
        bundles: dict[str, ClassifierBundle] = {}
        for d in model_dirs:
            b = ClassifierBundle.load(d, backend=backend, cache_dir=cache_dir, threads=threads)
            if b.task in bundles:
                raise ModelError(f"two models for task '{b.task}': {bundles[b.task].path} and {b.path}")
            bundles[b.task] = b
        return cls(bundles, DutyList.load(duty_list) if duty_list else None,
                   ChannelTable.load(channel_table) if channel_table else None)

    def info(self) -> dict:
        out = {task: {"name": b.name, "version": b.version, "labels": b.labels,
                      "review_threshold": b.threshold} for task, b in self.bundles.items()}
        if self.duty is not None:
            out["duty_list"] = {"path": str(self.duty.path), "departments": len(self.duty.departments)}
        if self.channel is not None:
            out["channel_table"] = {"path": str(self.channel.table.path)}
        return out

    def classify(self, petitions: list[dict | Petition], batch_size: int = 32, top_k: int = 3,
                 progress: bool = False, ids: list[str] | None = None) -> list[dict]:
        """One answer per petition (a dict with title/text, or a Petition, whose normalised text is used as it
        is), in input order; `ids` answers with other ids than the petitions' own (default: id, else position)."""
        if not petitions:
            return []
        texts = [_model_text(p, i) for i, p in enumerate(petitions)]
        if ids is None:
            ids = [_id_of(p) if _id_of(p) is not None else str(i + 1) for i, p in enumerate(petitions)]
        seen: set = set()
        for pid in ids:
            if pid in seen:
                raise DataError(f"duplicate petition id {pid!r} in one request")
            seen.add(pid)
        tasks = list(self.bundles)
        logits = bundle_logits([self.bundles[t] for t in tasks], texts, batch_size, progress)
        probs = {t: self.bundles[t].proba_from_logits(lg, texts) for t, lg in zip(tasks, logits, strict=True)}
        topic = self.bundles.get("topic")
        dept = self.bundles.get("department")
        topic_rows = topic.format(probs["topic"], top_k) if topic else None
        out = []
        for i, text in enumerate(texts):
            row: dict = {"id": ids[i]}
            review = False
            if topic_rows is not None:
                row["topic"] = topic_rows[i]
                review |= topic.needs_review(topic_rows[i]["score"])
            if self.router is not None:
                dp = probs["department"][i] if dept else None
                tp = ({lab: float(p) for lab, p in zip(topic.labels, probs["topic"][i], strict=True)}
                      if topic and dept is None else None)
                answer = self.router.route(text, dp, tp, top_k)
                if answer is not None:
                    row["department"] = answer
                    if dept is not None and dept.routing is not None:  # one decision, its own threshold
                        review |= answer["score"] < dept.routing.threshold
                    elif dept is not None and not self._pattern_decided(text):
                        review |= dept.needs_review(answer["score"])
                    elif dept is None and not self._pattern_decided(text) and answer["score"] < 0.5:
                        review = True  # a topic-prior guess that splits its mass is not sure enough
            if self.channel is not None:
                answer = self.channel.decide(probs["channel"][i], text, row.get("department"), top_k)
                review |= answer.pop("needs_review")
                row["channel"] = answer
            row["needs_review"] = bool(review)
            out.append(row)
        return out

    def _pattern_decided(self, text: str) -> bool:
        return bool(self.duty and self.duty.pattern_departments(text))


def _id_of(petition: dict | Petition):
    return petition.id if isinstance(petition, Petition) else petition.get("id")


def _model_text(petition: dict | Petition, i: int) -> str:
    """The normalised model input: a Petition's own (normalised once), else petition_input's."""
    if isinstance(petition, Petition):
        if not petition.normalized:
            raise DataError(f"petition {i + 1}{f' (id {petition.id})' if petition.id else ''}: "
                            "title and text are both empty or whitespace")
        return petition.normalized
    return petition_input(petition, 8000, f"petition {i + 1}")
