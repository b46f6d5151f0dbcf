"""``POST /v1/generations``: queue images from a prompt, with your LoRAs (or public ones)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from loramill.gateway.api.deps import GatewayDep, PrincipalDep
from loramill.gateway.api.routes.jobs import CREATE_ERRORS, REPEATED, created
from loramill.gateway.api.schemas import GenerationCreate, JobPublic
from loramill.gateway.api.views import job_public

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post("/generations", response_model=JobPublic, status_code=202, responses={**REPEATED, **CREATE_ERRORS})
def create_generation(body: GenerationCreate, gateway: GatewayDep, who: PrincipalDep, response: Response,
                      idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None) -> JobPublic:
    """Generate images; list a style LoRA and a subject LoRA together to compose them.

    Repeating a request with the same ``Idempotency-Key`` returns the first one's job.
    """
    task_id = gateway.task_id_for(who, idempotency_key)
    record, is_new = gateway.submit_generation(who, task_id, body.model_dump(by_alias=True, exclude_none=True),
                                               idempotency_key=idempotency_key)
    return created(response, job_public(record), is_new)
