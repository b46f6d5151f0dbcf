"""``POST /v1/trainings``: upload photos (or name stored ones) and queue a LoRA training."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Response, UploadFile

from loramill.errors import InvalidInput
from loramill.gateway.api.deps import GatewayDep, PrincipalDep
from loramill.gateway.api.routes.jobs import CREATE_ERRORS, REPEATED, created
from loramill.gateway.api.schemas import JobPublic, TrainingForm
from loramill.gateway.api.uploads import MAX_CAPTION_BYTES, attach_captions, check_image, check_image_count
from loramill.gateway.api.views import job_public

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post("/trainings", response_model=JobPublic, status_code=202, responses={**REPEATED, **CREATE_ERRORS})
def create_training(
    gateway: GatewayDep, who: PrincipalDep, response: Response,
    form: Annotated[TrainingForm, Form(description="any training option as its own form field")],
    images: Annotated[list[UploadFile] | None, File(description="JPEG, PNG or WebP photos")] = None,
    captions: Annotated[list[UploadFile] | None, File(description="optional UTF-8 caption per photo, named "
                                                      "like it: star1.png + star1.txt (or .caption)")] = None,
    image_keys: Annotated[list[str] | None, Form(alias="imageKeys", description="storage keys of "
                                                 "images already under users/{yourUserId}/")] = None,
    configuration_params: Annotated[str | None, Form(alias="configurationParams", max_length=65536,
                                                     description="JSON object with training options (form "
                                                     "fields of the same name win)")] = None,
    priority: Annotated[int, Form(ge=0, le=10)] = 0,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JobPublic:
    """Start a training from uploaded photos; watch it at the ``Location`` it answers with.

    Repeating a request with the same ``Idempotency-Key`` returns the first one's job.
    """
    # 1. Cheap checks first: how many images, and the options' shape
    uploads, keys = images or [], image_keys or []
    check_image_count(len(uploads) + len(keys), gateway.settings)
    options = _options(configuration_params) | form.model_dump(by_alias=True, exclude_none=True)
    # 2. Each upload is an image within the limits
    checked = [check_image(u.file.read(gateway.settings.max_image_bytes + 1), i, u.filename, gateway.settings)
               for i, u in enumerate(uploads)]
    # 3. Captions, each matched to its photo by file name; stored beside it as .txt
    if captions:
        checked = attach_captions(checked, [u.filename for u in uploads],
                                  [(c.filename, c.file.read(MAX_CAPTION_BYTES + 1)) for c in captions])
    # 4. Store and queue
    task_id = gateway.task_id_for(who, idempotency_key)
    record, is_new = gateway.submit_training(who, task_id, checked, keys, options, priority=priority,
                                             idempotency_key=idempotency_key)
    return created(response, job_public(record), is_new)


MAX_OPTION_DEPTH = 8  # options are flat values, a list or a small object (validationPrompts, loras)


def _options(text: str | None) -> dict[str, object]:
    if not text:
        return {}
    # Counted before parsing: 3,000 nested brackets would recurse through every later step (and did: a 500).
    depth = _bracket_depth(text)
    if depth > MAX_OPTION_DEPTH:
        raise InvalidInput(f"configurationParams is nested {depth} levels deep; options are nested at most "
                           f"{MAX_OPTION_DEPTH}, e.g. {{\"networkAlpha\": 4}}", code="invalid_field",
                           field="configurationParams")
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidInput("configurationParams must be a JSON object, e.g. {\"networkAlpha\": 4}",
                           code="invalid_field", field="configurationParams")
    return value


def _bracket_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in ``text``, outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), in_string and (escaped or char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
