"""``/v1/jobs``: create with a client-chosen id (idempotent), read, list, follow events, cancel."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from loramill.domain.status import JobStatus
from loramill.gateway.api.deps import GatewayDep, PrincipalDep
from loramill.gateway.api.events import parse_last_event_id, stream_job_events
from loramill.gateway.api.schemas import (
    ErrorBody,
    GenerationCreate,
    JobPage,
    JobPublic,
    PublicKind,
    TrainingCreate,
)
from loramill.gateway.api.views import job_public

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}
CREATE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 409: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody},
    429: {"model": ErrorBody, "description": "the queue is full; retry after the Retry-After header's seconds"}}
# A POST repeated with the same Idempotency-Key answers 200 with the job the first one made.
REPEATED: dict[int | str, dict[str, Any]] = {
    200: {"model": JobPublic, "description": "the job already existed (a repeated Idempotency-Key)"}}


async def _body_task_id(request: Request) -> object:
    """The ``taskId`` of a JSON body, if it has one (FastAPI has read and cached the body already)."""
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError):
        return None
    return data.get("taskId") if isinstance(data, dict) else None


def created(response: Response, job: JobPublic, is_new: bool) -> JobPublic:
    """202 + Location for a new job; 200 + Location when an idempotent repeat found it."""
    response.status_code = 202 if is_new else 200
    response.headers["Location"] = job.links.self
    return job


@router.put("/{job_id}", response_model=JobPublic, status_code=202, responses={200: {"model": JobPublic,
            "description": "the job already existed (a repeated PUT)"}, **CREATE_ERRORS})
def put_job(job_id: str, body: Annotated[TrainingCreate | GenerationCreate, Body()], gateway: GatewayDep,
            who: PrincipalDep, response: Response,
            body_task_id: Annotated[object, Depends(_body_task_id)] = None) -> JobPublic:
    """Create a job under your own id; repeating the request returns the same job (Replicate Cog style).

    Your ids are yours alone: another user may use the same id for a job of theirs. ``GET``, ``/events``
    and ``/cancel`` take your id or the job's ``id`` the answer gives.

    The body is a training job (``images`` as storage keys) or a generation job (``prompt``); a ``taskId``
    in it, if any, must be the id in the path.
    """
    fields = body.model_dump(by_alias=True, exclude_none=True)
    if body_task_id is not None:
        fields["taskId"] = body_task_id  # the schemas have no taskId: it would be dropped, unchecked
    record, is_new = gateway.put_job(who, job_id, fields)
    return created(response, job_public(record), is_new)


@router.get("", response_model=JobPage, responses=ERRORS)
def list_jobs(gateway: GatewayDep, who: PrincipalDep,
              kind: PublicKind | None = None, status: JobStatus | None = None,
              cursor: Annotated[str | None, Query(max_length=512)] = None,
              limit: Annotated[int | None, Query(ge=1, le=200)] = None) -> JobPage:
    """Your jobs, newest first; follow ``nextCursor`` for older ones."""
    page = gateway.jobs(who, kind=kind, status=status.value if status else None, cursor=cursor,
                        limit=limit or gateway.settings.page_size)
    return JobPage(items=[job_public(j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
def get_job(job_id: str, gateway: GatewayDep, who: PrincipalDep) -> JobPublic:
    """One job: status, progress, result files, error."""
    return job_public(gateway.job(who, job_id))


@router.get("/{job_id}/events", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {"example": 'id: 7\nevent: progress\ndata: {"taskId":"…",'
                                            '"status":"processing","progress":{"step":3,"totalSteps":30}}\n\n'}},
          "description": "status and progress events until the job ends"}, **ERRORS})
async def job_events(job_id: str, request: Request, gateway: GatewayDep, who: PrincipalDep,
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                     after: Annotated[int | None, Query(ge=0, description="same as Last-Event-ID")] = None,
                     ) -> StreamingResponse:
    """Server-sent events of the job; reconnect with ``Last-Event-ID`` to get only what you missed."""
    job = await run_in_threadpool(gateway.job, who, job_id)  # 404 before the stream starts
    start = after if after is not None else parse_last_event_id(last_event_id)
    stream = stream_job_events(gateway.store, job.id, start, poll_seconds=gateway.settings.sse_poll_seconds,
                               keepalive_seconds=gateway.settings.sse_keepalive_seconds,
                               disconnected=request.is_disconnected)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/{job_id}/cancel", response_model=JobPublic, status_code=202,
             responses={**ERRORS, 409: {"model": ErrorBody, "description": "the job has already ended"}})
def cancel_job(job_id: str, gateway: GatewayDep, who: PrincipalDep) -> JobPublic:
    """Cancel this job only: a queued one is withdrawn at once, a running one stops at its next step."""
    return job_public(gateway.cancel(who, job_id))
