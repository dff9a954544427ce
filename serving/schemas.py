"""Request and response models of the HTTP API (the OpenAPI document is generated from these).

Every string a client sends is checked here: length limits (from serving.config.LIMITS), no lone surrogates,
no control characters other than tab/newline/carriage return. A failure is a 422 naming the field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from xinfang.models.channel import CHANNELS
from xinfang.models.feedback import FEEDBACK_KINDS
from xinfang.serving.config import LIMITS

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$"
# Documented in the OpenAPI document (enforced by the validators below, with clearer messages).
_CC = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f"
NO_CONTROL = f"^[^{_CC}]*$"
NOT_BLANK = f"^[^{_CC}]*[^\\s{_CC}][^{_CC}]*$"
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _clean(value: str) -> str:
    if _SURROGATE.search(value):
        raise ValueError("contains a lone surrogate (invalid Unicode)")
    m = _CONTROL.search(value)
    if m:
        raise ValueError(f"contains control character U+{ord(m.group()):04X}")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain a non-space character")
    return value


def _blank_to_none(value: str | None) -> str | None:
    """Surrounding whitespace dropped; blank -> None."""
    return value.strip() or None if value is not None else None


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime (no zone: taken as UTC); ValueError when the instant is outside years 1..9999."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("date out of range: in UTC it must fall within years 1..9999") from exc


UTCDateTime = Annotated[datetime, AfterValidator(to_utc)]


PetitionId = Annotated[str, StringConstraints(pattern=ID_PATTERN),
                       Field(description="Client id: 1-128 of A-Z a-z 0-9 . _ : - (starting alphanumeric)",
                             examples=["2024-000123"])]
Text = Annotated[str, StringConstraints(min_length=1, max_length=LIMITS.max_text_chars), AfterValidator(_clean),
                 AfterValidator(_not_blank),
                 Field(description=f"Petition text (1..{LIMITS.max_text_chars} characters, not blank, no control "
                                   "characters but tab/newline)", json_schema_extra={"pattern": NOT_BLANK})]
Title = Annotated[str, StringConstraints(max_length=LIMITS.max_title_chars), AfterValidator(_clean),
                  Field(description=f"Title (at most {LIMITS.max_title_chars} characters)",
                        json_schema_extra={"pattern": NO_CONTROL})]
Short = Annotated[str, StringConstraints(max_length=200), AfterValidator(_clean),
                  Field(json_schema_extra={"pattern": NO_CONTROL})]
Label = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_clean),
                  AfterValidator(_not_blank), Field(json_schema_extra={"pattern": NOT_BLANK})]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- classification
class PetitionInput(_In):
    id: PetitionId | None = None
    title: Title | None = None
    text: Text

    @model_validator(mode="after")
    def _title(self) -> PetitionInput:
        self.title = _blank_to_none(self.title)
        return self


class ClassifyRequest(_In):
    petitions: list[PetitionInput] = Field(min_length=1, max_length=LIMITS.max_batch,
                                           description=f"1..{LIMITS.max_batch} petitions")

    @model_validator(mode="after")
    def _unique_ids(self) -> ClassifyRequest:
        seen: set[str] = set()
        for p in self.petitions:
            if p.id is None:
                continue
            if p.id in seen:
                raise ValueError(f"petitions: id {p.id!r} appears twice")
            seen.add(p.id)
        return self


class LabelScore(BaseModel):
    label: str
    score: float


class TopicPrediction(BaseModel):
    label: str
    score: float
    top: list[LabelScore]


class RoutingEvidence(BaseModel):
    decided_by: str = Field(description="The evidence with the largest part of the winner's margin: model, "
                                        "keywords, patterns or remit")
    margin: dict[str, float] = Field(description="Each evidence term's part of the margin over the runner-up")
    keywords: list[str] = Field(description="Duty-list keywords of the chosen department found in the petition")


class DepartmentPrediction(BaseModel):
    label: str
    score: float
    top: list[LabelScore]
    jurisdiction: str | None = Field(None, description="Level or area responsible (e.g. 市级, A3区)")
    display: str | None = Field(None, description="Human-readable department name")
    evidence: RoutingEvidence | None = Field(None, description="Why this department (bundles with a routing "
                                                               "model; see models/routing.py)")


class ChannelPrediction(BaseModel):
    label: str = Field(description="Legal channel (诉访分离): 信访, 依法履职, 诉讼仲裁复议, 纪检监察 or 其他")
    score: float
    top: list[LabelScore]
    reason: str = Field(description="Why: the model's score and the channel keywords seen in the petition")
    procedure: str = Field(description="The procedure the channel starts (from the channel table)")
    body: str = Field(description="The body it points to (法院, 劳动人事争议仲裁委员会, 行政复议机关, the "
                                  "department for 依法履职, 纪检监察机关 ...)")


class Labels(BaseModel):
    topic: TopicPrediction | None = Field(None, description="None only when no topic model is served")
    department: DepartmentPrediction | None = Field(None, description="None only when no department model "
                                                                      "or duty list is served")
    channel: ChannelPrediction | None = Field(None, description="Legal channel; None only when no channel "
                                                                "model is served")
    needs_review: bool


class Classification(Labels):
    id: str | None = None


class ModelVersion(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str


class ClassifyResponse(BaseModel):
    results: list[Classification]
    models: dict[str, ModelVersion] = Field(description="Model name/version per task that produced the results")


# ---------------------------------------------------------------------------- petitions
class PetitionCreate(_In):
    id: PetitionId | None = Field(None, description="Client id; a retry with the same id and body gets the "
                                                    "same answer (200), a different body gets 409")
    title: Title | None = None
    text: Text
    petitioner: Short | None = Field(None, description="Name or id of the petitioner (never logged)")
    received_at: UTCDateTime | None = Field(None, description="ISO 8601; without a zone it is taken as UTC")
    channel: Annotated[str, StringConstraints(max_length=64), AfterValidator(_clean)] | None = None

    @model_validator(mode="after")
    def _blanks(self) -> PetitionCreate:
        self.title = _blank_to_none(self.title)
        self.petitioner = _blank_to_none(self.petitioner)
        self.channel = _blank_to_none(self.channel)
        return self


class RepeatCandidate(BaseModel):
    id: str
    similarity: float = Field(description="Cosine similarity of the embeddings")
    probability: float = Field(description="Probability that both petitions are about the same matter")
    is_repeat: bool = Field(description="probability >= the scorer's operating threshold")
    reasons: list[str] = Field(description="Why the pair looks alike (同一信访人, 同一地点, 相似度 ...)")


class MatterJoin(BaseModel):
    id: str = Field(description="The matter (信访事项) the petition belongs to")
    joined: bool = Field(description="True: joined an existing matter; False: opened a new one")
    via: str | None = Field(None, description="The stored petition it was linked to")
    probability: float | None = Field(None, description="That link's repeat probability")
    reason: str


class PetitionCreated(BaseModel):
    id: str
    labels: Labels
    repeats: list[RepeatCandidate]
    models: dict[str, ModelVersion]
    created_at: datetime
    matter: MatterJoin | None = None
    index_version: int | None = Field(None, description="Change-feed sequence number the repeat index had "
                                      "applied up to when it was searched (also the X-Xinfang-Index-Version "
                                      "header)")


class PetitionSummary(BaseModel):
    id: str
    title: str | None
    received_at: datetime | None
    channel: str | None
    labels: Labels
    repeat_count: int = Field(description="Likely repeats found when the petition was stored")
    created_at: datetime


class PetitionOut(PetitionSummary):
    text: str
    petitioner: str | None
    models: dict[str, ModelVersion]
    matter: str | None = Field(None, description="The matter (信访事项) it belongs to: GET /v1/matters/{id}")


class PetitionPage(BaseModel):
    items: list[PetitionSummary]
    total: int
    limit: int
    offset: int


class RepeatsResponse(BaseModel):
    id: str | None = Field(None, description="The petition searched for (None for a free-text search)")
    candidates: list[RepeatCandidate]
    index_version: int | None = Field(None, description="Change-feed sequence number the repeat index had "
                                      "applied up to when it was searched (also the X-Xinfang-Index-Version "
                                      "header)")


class RepeatSearchRequest(_In):
    title: Title | None = None
    text: Text
    petitioner: Short | None = None
    k: int = Field(5, ge=1, le=LIMITS.max_k)


class Deleted(BaseModel):
    id: str
    deleted: bool


# ---------------------------------------------------------------------------- feedback
FeedbackKind = Literal[FEEDBACK_KINDS]  # models/feedback.py


class FeedbackIn(_In):
    kind: FeedbackKind
    target_id: PetitionId | None = Field(None, description="The suggested repeat (repeat_confirm/repeat_reject)")
    label: Label | None = Field(None, description="The correct label (topic/department/channel_correction)")

    @model_validator(mode="after")
    def _shape(self) -> FeedbackIn:
        if self.kind.startswith("repeat_"):
            if not self.target_id:
                raise ValueError(f"target_id is required for {self.kind}")
            if self.label is not None:
                raise ValueError(f"label is not allowed for {self.kind}")
        else:
            if not self.label:
                raise ValueError(f"label is required for {self.kind}")
            if self.target_id is not None:
                raise ValueError(f"target_id is not allowed for {self.kind}")
            if self.kind == "channel_correction" and self.label not in CHANNELS:
                raise ValueError(f"label for channel_correction must be one of {', '.join(CHANNELS)}")
        return self


class FeedbackOut(BaseModel):
    id: int
    petition_id: str
    kind: FeedbackKind
    target_id: str | None
    label: str | None
    who: str = Field(description="Name of the API key that gave it")
    created_at: datetime


class FeedbackList(BaseModel):
    items: list[FeedbackOut]


# ---------------------------------------------------------------------------- models and health
class ReloadRequest(_In):
    model_dirs: list[Annotated[str, StringConstraints(min_length=1, max_length=1000), AfterValidator(_clean)]] | None = (
        Field(None, min_length=1, max_length=8, description="Bundle directories on the server; "
                                                             "default: the configured ones, re-read"))
    duty_list: Annotated[str, StringConstraints(min_length=1, max_length=1000), AfterValidator(_clean)] | None = None


class ModelsResponse(BaseModel):
    runtime: str = Field(description="torch, onnx or onnx-int8")
    models: dict[str, Any] = Field(description="The classification pipeline's info(): name/version per task")
    model_dirs: list[str]
    embedder: dict[str, Any]
    repeat_scorer: dict[str, Any] | None
    index: dict[str, Any]
    loaded_at: datetime
    generation: int = Field(description="Increases with every successful reload")
    registry: dict[str, Any] | None = Field(None, description="The registry's promoted versions, those this "
                                            "replica serves, and the last promotion it refused (and why)")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    checks: dict[str, bool]


class FieldError(BaseModel):
    field: str = Field(description="Dotted location, e.g. body.petitions.0.text or query.limit")
    message: str


class ErrorBody(BaseModel):
    error: str = Field(description="Short machine-readable code")
    message: str
    fields: list[FieldError] | None = None
    request_id: str | None = None
