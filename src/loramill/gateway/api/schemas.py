"""API schemas, split by direction: what clients send (``*Create``) and what they get back (``*Public``).

The job contracts themselves (docs/contracts.md) stay in ``loramill.jobs.contracts``; these are the HTTP
shapes around them. Field names are camelCase on the wire like the contracts'.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.alias_generators import to_camel

from loramill.domain.status import JobStatus
from loramill.jobs.contracts import GenerationJob, TrainingConfig

PublicKind = Literal["training", "generation"]  # JobKind.public of each kind


class _Schema(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


# ---- in: what clients send ------------------------------------------------------------------------


class _Create(_Schema):
    # What clients send is checked as strictly as a queue message: ``true`` is not 1 and ``"10"`` is not 10
    # (schemathesis found ``"guidanceScale": false`` accepted as 0).
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True,
                              strict=True, allow_inf_nan=False)


class _GenerationExample(_Create):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "prompt": "tsuki_advtr, a samoyed dog smiling, white background", "negativePrompt": "blurry",
        "width": 512, "height": 512, "steps": 30, "guidanceScale": 7.5, "seed": 50, "numImages": 1,
        "loras": [{"id": "3f1c2a9e-5b7d-4e0f-9a61-2c4d8e7f1a3b", "weight": 0.8}]}]})


class GenerationCreate(create_model(  # type: ignore[misc]
        "_GenerationFields", __base__=_GenerationExample,
        **cast(dict[str, Any], {name: (info.annotation, info) for name, info in GenerationJob.model_fields.items()
                                if name not in ("task_id", "user_id")}))):
    """A generation job (the queue's ``GenerationJob``) without ``taskId``/``userId``: the API assigns those.
    Its fields are the job contract's, so the two cannot drift."""


class TrainingCreate(_Schema):
    """A training job (docs/contracts.md) by storage keys, for ``PUT /v1/jobs/{id}`` (uploads: POST /v1/trainings)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True,
        json_schema_extra={"examples": [{
            "images": ["users/alice/images/set1/1.jpg", "users/alice/images/set1/2.jpg"],
            "configurationParams": {"epochs": 10, "learningRate": 8e-4, "networkDim": 4,
                                    "triggerWord": "sks", "subjectType": "face"}}]})

    images: list[str] = Field(min_length=1, description="storage keys under users/{yourUserId}/")
    configuration_params: TrainingConfig = Field(default_factory=TrainingConfig)
    priority: int = Field(default=0, ge=0, le=10, strict=True)


class _Form(BaseModel):
    # Form fields arrive as text, so numbers are parsed here (lax); the limits are the contract's own.
    model_config = ConfigDict(strict=False, allow_inf_nan=False, extra="ignore", validate_by_name=True,
                              validate_by_alias=True)


class TrainingForm(create_model(  # type: ignore[misc]
        "_TrainingFormFields", __base__=_Form,
        **cast(dict[str, Any], {name: (info.annotation, info) for name, info in TrainingConfig.model_fields.items()}))):
    """``configurationParams`` as form fields (POST /v1/trainings)."""


class PublicFlag(_Schema):
    """Whether every user may apply the LoRA."""

    public: bool = True


# ---- out: what clients get back --------------------------------------------------------------------


class ProgressPublic(_Schema):
    step: int
    total_steps: int
    stage: str | None = None


class ErrorPublic(_Schema):
    code: str = Field(examples=["invalid_input"])
    message: str = Field(examples=["images[0]: no object stored under 'users/alice/images/x.jpg'"])
    field: str | None = None


class ErrorBody(_Schema):
    """Every 4xx/5xx answer."""

    error: ErrorPublic


class FilePublic(_Schema):
    key: str = Field(examples=["users/alice/generations/7d1e/0.png"])
    url: str = Field(description="GET it with your API key", examples=["/v1/files/users/alice/generations/7d1e/0.png"])


class JobResult(_Schema):
    model_path: str | None = None
    lora_id: str | None = None
    image_paths: list[str] = Field(default_factory=list)
    files: list[FilePublic] = Field(default_factory=list)
    metrics: dict[str, Any] | None = None


class JobLinks(_Schema):
    self: str
    events: str
    cancel: str


class JobPublic(_Schema):
    """A job as its owner sees it."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True,
        json_schema_extra={"examples": [{
            "id": "7d1e0c7a-2f4b-4a8e-b3c1-1f2e3d4c5b6a", "kind": "generation", "status": "processing",
            "userId": "alice", "createdAt": "2026-01-01T12:00:00Z", "updatedAt": "2026-01-01T12:00:03Z",
            "progress": {"step": 12, "totalSteps": 30, "stage": "generate"}, "cancelRequested": False,
            "request": {"prompt": "a dog", "seed": 50}, "result": None, "error": None,
            "links": {"self": "/v1/jobs/7d1e0c7a-2f4b-4a8e-b3c1-1f2e3d4c5b6a",
                      "events": "/v1/jobs/7d1e0c7a-2f4b-4a8e-b3c1-1f2e3d4c5b6a/events",
                      "cancel": "/v1/jobs/7d1e0c7a-2f4b-4a8e-b3c1-1f2e3d4c5b6a/cancel"}}]})

    id: str
    kind: PublicKind
    status: JobStatus
    user_id: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
    progress: ProgressPublic | None = None
    cancel_requested: bool = False
    request: dict[str, Any] = Field(default_factory=dict, description="the job as published (docs/contracts.md)")
    result: JobResult | None = None
    error: ErrorPublic | None = None
    links: JobLinks


class JobPage(_Schema):
    items: list[JobPublic]
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= for the next page; null at the end")


class LoraPublic(_Schema):
    """A trained LoRA in the registry."""

    id: str
    user_id: str
    name: str | None = None
    trigger_word: str | None = None
    base_model: str | None = None
    public: bool = False
    model_path: str
    file: FilePublic | None = None
    created_at: datetime | None = None
    # what the training measured (trainingTime, finalLoss, …; with evaluation: consistency, preservation,
    # evaluations per step and the sample grids' storage keys in samples)
    metrics: dict[str, Any] | None = None


class LoraPage(_Schema):
    items: list[LoraPublic]


class Health(_Schema):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class Me(_Schema):
    """Whose key this is."""

    user_id: str = Field(examples=["alice"])
    is_admin: bool = False
