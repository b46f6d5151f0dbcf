"""Job contracts on the wire (docs/contracts.md): camelCase JSON in, camelCase JSON out.

Selfix's training message and result event, and the Prompt2Pic / inference-worker generation job, are
accepted and produced exactly as written. Everything a client sends is hostile until checked here:
types are strict (``"10"`` is not a number, ``true`` is not 1), numbers are finite and bounded,
text has no control characters and a length cap, storage keys cannot leave their prefix. A job that
fails becomes one ``InvalidInput`` whose ``field`` and message name the field at fault and the fix.
Unknown fields are ignored with a warning (and listed in ``job.ignored_fields``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

import pydantic_core
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from loramill.domain.keys import validate_key
from loramill.domain.status import JobKind, JobStatus
from loramill.engine.generation.request import GenerateRequest
from loramill.engine.generation.request import LoraRef as EngineLoraRef
from loramill.engine.options import (
    MISSING_HINTS,
    Name,
    describe_validation_error,
    options_of,
)
from loramill.engine.training.config import TrainConfig
from loramill.errors import InvalidInput, LoramillError
from loramill.jobs.wire import wire_model, wire_type

logger = logging.getLogger("loramill.jobs")

MAX_JOB_BYTES = 4 * 1024 * 1024  # far above any real job; a 1 MB prompt still gets its field's error
MAX_IMAGES = 200
MAX_LORAS = 8

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=-]{0,127}")
_NON_JSON_NUMBER = re.compile(r"\b(NaN|Infinity)\b")


def _id_from_int(value: Any) -> Any:
    # Telegram and numeric user ids arrive as JSON numbers; booleans are not ids.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise PydanticCustomError(
            "invalid_id", "must be 1-128 characters from A-Z a-z 0-9 . _ - @ + = starting with a letter or "
            "digit (it becomes part of storage keys); a UUID works")
    return value


def _check_key(value: str) -> str:
    try:
        return validate_key(value)
    except InvalidInput as exc:
        raise PydanticCustomError("invalid_storage_key", "{reason}", {"reason": exc.message}) from None


def _cap(limit: int, what: str) -> Any:
    # Checked before the items are, so 10,000 images fail fast with a count instead of 10,000 checks.
    def check(value: Any) -> Any:
        if isinstance(value, list) and len(value) > limit:
            raise PydanticCustomError("too_many", "has {count} {what}; at most {limit} are accepted",
                                      {"count": len(value), "what": what, "limit": limit})
        return value

    return BeforeValidator(check)


Identifier = Annotated[str, BeforeValidator(_id_from_int), AfterValidator(_check_id)]
StorageKey = Annotated[str, AfterValidator(_check_key)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Priority = Annotated[int, Field(ge=0, le=10)]
Size = Annotated[int, Field(ge=64, le=2048, multiple_of=8)]
MISSING_HINTS.update({
    "taskId": "give every job a unique id, e.g. a UUID",
    "userId": "give the id of the user the job belongs to",
    "images": "list the storage keys of the training images, e.g. users/<userId>/images/1.jpg",
    "prompt": "describe the image to generate",
    "id": "give the registry id of the LoRA",
})


class _Wire(BaseModel):
    """Shared wire rules: camelCase aliases, strict types, finite numbers, unknown keys set aside."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              strict=True, allow_inf_nan=False, extra="allow", use_enum_values=True)
    # A default, not default_factory=list: pydantic inspects a factory's signature on every instance
    # (a third of parsing a job). The tuple is immutable, so sharing it is safe.
    _ignored: Sequence[str] = PrivateAttr(default=())

    def model_post_init(self, context: Any) -> None:
        # extra="allow" (not "ignore") so the names can be reported; the values are dropped here.
        if self.__pydantic_extra__:
            self._ignored = sorted(self.__pydantic_extra__)
            self.__pydantic_extra__.clear()

    @property
    def ignored_fields(self) -> list[str]:
        """Unknown fields that were dropped, as dotted paths (``configurationParams.foo``)."""
        found = list(self._ignored)
        for name in type(self).model_fields:
            child = getattr(self, name)
            items = child if isinstance(child, list) else [child]
            for i, item in enumerate(items):
                if isinstance(item, _Wire):
                    where = f"{to_camel(name)}[{i}]" if isinstance(child, list) else to_camel(name)
                    found += [f"{where}.{sub}" for sub in item.ignored_fields]
        return found

    def to_payload(self) -> dict[str, Any]:
        """The camelCase dict sent on the wire (unset optional fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)


_TrainingWire = wire_model(
    TrainConfig, "_TrainingWire", _Wire, "TrainConfig's wire options.",
    service_defaults=("trigger",),  # LORAMILL_DEFAULT_TRIGGER (jobs/handlers/train.py worker_defaults)
    # service-only: a name in the worker's model registry (LORAMILL_MODELS), resolved to the engine's ``model``
    base_model=(Name | None, Field(None, description="base model by name; default: the worker's")),
)


class TrainingConfig(_TrainingWire):  # type: ignore[misc,valid-type]
    """``configurationParams`` of a training job: ``TrainConfig``'s wire options; ``None`` = the default."""


class TrainingJob(_Wire):
    """Train a LoRA from a user's images (Selfix's input; docs/contracts.md, "Training job")."""

    kind: ClassVar[JobKind] = JobKind.TRAIN

    task_id: Identifier
    user_id: Identifier
    images: Annotated[list[StorageKey], _cap(MAX_IMAGES, "images"), Field(min_length=1)]
    configuration_params: TrainingConfig = Field(default_factory=TrainingConfig)
    priority: Priority = 0


class LoraRef(_Wire):
    """A trained LoRA to apply during generation, by registry id, with its strength (the engine's is a file)."""

    id: Identifier
    weight: wire_type(options_of(EngineLoraRef)["weight"]) = Field(  # type: ignore[valid-type]
        1.0, description=options_of(EngineLoraRef)["weight"].help)


_GenerationWire = wire_model(
    GenerateRequest, "_GenerationWire", _Wire, "GenerateRequest's wire options.",
    task_id=(Identifier, ...), user_id=(Identifier, ...),
    # service-only: a name in the worker's model registry (LORAMILL_MODELS)
    base_model=(Name | None, Field(None, description="base model by name; default: the worker's")),
    # service-only: by registry id (the engine takes files); a job may not make a worker juggle more than
    # this many adapters
    loras=(Annotated[list[LoraRef], _cap(MAX_LORAS, "LoRAs")], Field(default_factory=list)),
    priority=(Priority, 0),
)


class GenerationJob(_GenerationWire):  # type: ignore[misc,valid-type]
    """Generate images from a prompt, optionally with LoRAs (docs/contracts.md, "Generation job"); ``None`` = family default."""

    kind: ClassVar[JobKind] = JobKind.GENERATE


Job = TrainingJob | GenerationJob


def parse_job(raw: bytes | str | Mapping[str, Any]) -> Job:
    """Parse a job message; raise ``InvalidInput`` (with ``code`` and ``field``) for anything else.

    A message with ``prompt`` is a generation job, one with ``images`` a training job. Never raises
    anything but ``InvalidInput``, whatever the bytes (property-tested in tests/jobs).
    """
    # 1. Bytes → JSON object
    data = _load_object(raw)
    # 2. Which contract
    if ("prompt" in data) == ("images" in data):
        both = "prompt" in data
        raise InvalidInput(
            "job has both 'prompt' and 'images'; send one job per message" if both else
            "job has neither 'images' (a training job) nor 'prompt' (a generation job); add one",
            code="unknown_job_kind", field="prompt" if both else "images")
    model: type[TrainingJob] | type[GenerationJob] = GenerationJob if "prompt" in data else TrainingJob
    # 3. Validate every field
    try:
        job = model.model_validate(data)
    except ValidationError as exc:
        field, message, code = describe_validation_error(exc)
        raise InvalidInput(message, code=code, field=field) from None
    # 4. Report what was dropped
    if job.ignored_fields:
        hints = [f"{n} (did you mean configurationParams.{n}?)" if n in TrainingConfig.model_fields
                 or to_snake(n) in TrainingConfig.model_fields else n for n in job.ignored_fields]
        logger.warning("ignoring unknown job fields: %s", ", ".join(hints), extra={"task_id": job.task_id})
    return job


def to_snake(name: str) -> str:
    """``learningRate`` → ``learning_rate`` (for hints about misplaced fields)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _load_object(raw: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    if len(raw) > MAX_JOB_BYTES:
        raise InvalidInput(f"job message is {len(raw)} bytes; the limit is {MAX_JOB_BYTES}",
                           code="job_too_large", field="")
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"job message is not valid UTF-8 (byte {exc.start}); send UTF-8 encoded JSON",
                               code="invalid_json", field="") from None
    try:
        data = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        hint = "; NaN and Infinity are not JSON numbers" if _NON_JSON_NUMBER.search(raw) else ""
        raise InvalidInput(f"job message is not valid JSON ({exc}{hint}); send one JSON object",
                           code="invalid_json", field="") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"job message must be a JSON object, not {type(data).__name__}",
                           code="invalid_json", field="")
    return data


# ---- events (docs/contracts.md, "Events") ---------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True,
                              use_enum_values=True, extra="ignore")


class Progress(_Out):
    """How far a processing job is: ``{"step": n, "totalSteps": m}``."""

    step: int
    total_steps: int
    stage: str | None = None


class ErrorInfo(_Out):
    """``error`` of a failed event: a stable code and a message naming the field or file and the fix."""

    code: str
    message: str

    @classmethod
    def from_exception(cls, exc: LoramillError) -> ErrorInfo:
        """The error of a ``LoramillError`` as it goes on the wire."""
        return cls(code=exc.code, message=exc.message)


class Metrics(_Out):
    """Training or generation metrics; families may add more keys (kept as given)."""

    model_config = ConfigDict(extra="allow")

    training_time: int | float | None = None
    final_loss: float | None = None

    def model_post_init(self, context: Any) -> None:
        # A diverged loss is NaN; JSON has no NaN, so it goes out as absent rather than as broken JSON.
        for name in ("training_time", "final_loss"):
            if not _finite(getattr(self, name)):
                setattr(self, name, None)
        extra = self.__pydantic_extra__ or {}
        for key in [k for k, v in extra.items() if not _finite(v)]:
            del extra[key]


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


class JobEvent(_Out):
    """A status or result event; keys come out in Selfix's order (taskId, userId, status, modelPath, metrics)."""

    task_id: str
    user_id: str | None = None
    status: JobStatus
    model_path: str | None = None
    metrics: Metrics | None = None
    progress: Progress | None = None
    image_paths: list[str] | None = None
    image_urls: list[str] | None = None
    error: ErrorInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a camelCase dict, absent fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True)

    def to_json(self) -> bytes:
        """The event as UTF-8 JSON bytes, ready to publish."""
        return json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8")


def parse_event(raw: bytes | str) -> JobEvent:
    """Read an event from the output topic; ``InvalidInput`` if it is not one."""
    try:
        return JobEvent.model_validate_json(raw)
    except ValidationError as exc:
        field, message, code = describe_validation_error(exc)
        raise InvalidInput(message, code=code, field=field) from None


def failed_event_for(raw: bytes | str | Mapping[str, Any], error: LoramillError) -> JobEvent | None:
    """The ``failed`` event answering a job that could not be parsed, if its ``taskId`` is readable.

    Without a usable ``taskId`` no client could match the event, so the caller dead-letters instead.
    The message is read leniently here: a job refused for ``NaN`` or a lone surrogate escape (both
    what Python's ``json.dumps`` writes) still names its task, and its sender is waiting for an answer.
    """
    try:
        data = _load_object(raw)
    except InvalidInput:
        lenient = _load_leniently(raw)
        if lenient is None:
            return None
        data = lenient
    ids = [_id_from_int(data.get(k)) for k in ("taskId", "userId")]
    task_id, user_id = [v if isinstance(v, str) and _ID.fullmatch(v) else None for v in ids]
    if task_id is None:
        return None
    return JobEvent(task_id=task_id, user_id=user_id, status=JobStatus.FAILED,
                    error=ErrorInfo.from_exception(error))


def _load_leniently(raw: bytes | str | Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON object in ``raw`` as Python's ``json`` reads it at its most lenient (NaN, Infinity, lone
    surrogates, raw control characters in strings), or None."""
    if isinstance(raw, Mapping) or len(raw) > MAX_JOB_BYTES:
        return None
    try:
        data = json.loads(raw, strict=False)
    except (ValueError, TypeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
