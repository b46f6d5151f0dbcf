"""``GET /v1/files/{key}``: a stored image or LoRA of yours, streamed or by presigned redirect."""

from __future__ import annotations

import mimetypes
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, RedirectResponse

from loramill.gateway.api.deps import GatewayDep, PrincipalDep
from loramill.gateway.api.schemas import ErrorBody

router = APIRouter(prefix="/v1/files", tags=["files"])
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}


@router.get("/{key:path}", response_class=Response, responses={
    200: {"content": {"image/png": {}, "application/octet-stream": {}}, "description": "the file (local storage)"},
    307: {"description": "redirect to a presigned URL (S3 storage)"}, **ERRORS})
def get_file(key: str, gateway: GatewayDep, who: PrincipalDep) -> Response:
    """Download a file under ``users/{yourUserId}/``."""
    key = gateway.file_key(who, key)
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    # Local storage: stream the file itself (its url() may point back here). S3: send the client there.
    path_of = getattr(gateway.storage, "path_of", None)
    if path_of is not None:
        return FileResponse(path_of(key), media_type=media_type, filename=key.rsplit("/", 1)[-1])
    url = gateway.storage.url(key, expires_in=gateway.settings.file_url_expires)
    if url:
        return RedirectResponse(url, status_code=307)
    return Response(gateway.storage.get_bytes(key), media_type=media_type)
