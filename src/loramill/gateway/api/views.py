"""Store records → public schemas: what a client sees of a job or a LoRA, with links it can follow."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from loramill.domain.records import JobRecord, LoraRecord
from loramill.domain.status import JobKind
from loramill.gateway.api.schemas import (
    ErrorPublic,
    FilePublic,
    JobLinks,
    JobPublic,
    JobResult,
    LoraPublic,
    ProgressPublic,
)


def file_public(key: str) -> FilePublic:
    """A stored file and the API URL that serves it to its owner."""
    return FilePublic(key=key, url=f"/v1/files/{quote(key)}")


def _get(data: dict[str, Any], *names: str) -> Any:
    # results are written by the worker in camelCase; tolerate snake_case too
    return next((data[n] for n in names if data.get(n) is not None), None)


def job_public(job: JobRecord) -> JobPublic:
    """The job as its owner sees it."""
    progress = None
    if job.progress and _get(job.progress, "totalSteps", "total_steps", "total") is not None:
        progress = ProgressPublic(step=int(_get(job.progress, "step") or 0),
                                  total_steps=int(_get(job.progress, "totalSteps", "total_steps", "total")),
                                  stage=_get(job.progress, "stage"))
    result = None
    if job.result:
        model_path = _get(job.result, "modelPath", "model_path")
        images = list(_get(job.result, "imagePaths", "image_paths") or [])
        files = [file_public(k) for k in ([model_path] if model_path else []) + images]
        lora_id = _get(job.result, "loraId", "lora_id") or (job.id if model_path else None)
        result = JobResult(model_path=model_path, lora_id=lora_id, image_paths=images, files=files,
                           metrics=_get(job.result, "metrics"))
    error = ErrorPublic(code=str(job.error.get("code", "failed")), message=str(job.error.get("message", "")),
                        field=job.error.get("field")) if job.error else None
    base = f"/v1/jobs/{quote(job.id)}"
    return JobPublic(id=job.id, kind=JobKind(job.kind).public, status=job.status, user_id=job.user_id,
                     created_at=job.created_at, updated_at=job.updated_at, progress=progress,
                     cancel_requested=job.cancel_requested, request=job.payload, result=result, error=error,
                     links=JobLinks(self=base, events=f"{base}/events", cancel=f"{base}/cancel"))


def lora_public(lora: LoraRecord) -> LoraPublic:
    """A LoRA in the registry as the API shows it."""
    return LoraPublic(id=lora.id, user_id=lora.user_id, name=lora.name, trigger_word=lora.trigger_word,
                      base_model=lora.base_model or lora.family, public=lora.public, model_path=lora.storage_key,
                      file=file_public(lora.storage_key), created_at=lora.created_at, metrics=lora.metrics)
