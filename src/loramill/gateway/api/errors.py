"""The one place errors become HTTP answers: ``{"error": {"code", "message"}}`` with a fitting status.

Below the API layer nothing knows about HTTP: flows raise ``loramill.errors`` classes and this module
maps them. Validation errors from FastAPI get the same body shape, worded the way the job contracts
word theirs (the field, what is wrong, what to do).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from loramill.errors import (
    Canceled,
    Conflict,
    DependencyMissing,
    InvalidInput,
    LoramillError,
    NotFound,
    Overloaded,
    QuotaExceeded,
    TransientError,
)

logger = logging.getLogger("loramill.gateway")


class Unauthorized(LoramillError):
    """No API key, or one the store does not know."""

    code = "unauthorized"


class Forbidden(LoramillError):
    """The key is valid but this action needs an admin key."""

    code = "forbidden"


class PayloadTooLarge(InvalidInput):
    """The request body (or one file in it) is over a configured limit."""

    code = "body_too_large"


# most specific first: PayloadTooLarge and QuotaExceeded are InvalidInputs
STATUS: list[tuple[type[LoramillError], int]] = [
    (Unauthorized, 401),
    (Forbidden, 403),
    (PayloadTooLarge, 413),
    (QuotaExceeded, 413),
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Canceled, 409),
    (Overloaded, 429),
    (TransientError, 503),
    (DependencyMissing, 501),
]


def status_of(exc: LoramillError) -> int:
    """The HTTP status for ``exc``; anything unplanned is a 500."""
    return next((status for cls, status in STATUS if isinstance(exc, cls)), 500)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON every error answer carries."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


def _loramill_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LoramillError)
    status = status_of(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status in (429, 503):
        headers["Retry-After"] = str(getattr(exc, "retry_after", None) or request.app.state.settings.retry_after_seconds)
    if status >= 500:
        logger.error("%s %s failed: [%s] %s", request.method, request.url.path, exc.code, exc.message)
    return JSONResponse(error_body(exc.code, exc.message, exc.field), status_code=status, headers=headers)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        # Its "loc" is the character position, not a field: a truncated body is not "field 13"
        position = next((p for p in first.get("loc", ()) if isinstance(p, int)), None)
        where = f" at character {position}" if position is not None else ""
        context = first.get("ctx")
        reason = str((context.get("error") if isinstance(context, dict) else None) or first.get("msg") or "invalid JSON")
        return JSONResponse(error_body("invalid_json", f"the request body is not valid JSON{where} ({reason}); "
                                       "send a complete JSON object"), status_code=422)
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
    field = ".".join(loc)
    message = f"{field or 'request'}: {first.get('msg', 'is invalid')}"
    if len(exc.errors()) > 1:
        message += f" (and {len(exc.errors()) - 1} more problem(s))"
    code = "missing_field" if first.get("type") == "missing" else "invalid_field"
    return JSONResponse(error_body(code, message, field or None), status_code=422)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "body_too_large"}
    status, message = exc.status_code, str(exc.detail) if exc.detail else "request failed"
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 400 and request.headers.get("content-type", "").startswith("multipart/"):
        # Starlette's own words say which limit (e.g. "Too many fields. Maximum number of fields is 1000.")
        return JSONResponse(error_body("invalid_form", f"the multipart form could not be read: {message} Send "
                                       "each image as an 'images' part, at most LORAMILL_MAX_IMAGES of them, and at "
                                       "most one 'captions' part per image"),
                            status_code=422)
    if status == 400:
        # FastAPI's answer to a body that is not JSON (or not UTF-8): the same 422 as any bad input
        return JSONResponse(error_body("invalid_json", "the request body is not valid UTF-8 JSON; send a JSON "
                                       "object"), status_code=422)
    if status == 404 and message == "Not Found":
        message = f"no route {request.url.path}; see /docs for the API"
    if status == 405:
        headers["Allow"] = ", ".join(_allowed_methods(request))
        message = f"{request.method} is not allowed here; use {headers['Allow']}"
    return JSONResponse(error_body(codes.get(status, "http_error"), message), status_code=status, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    # Starlette lists only the first matching route's methods; each method here is its own route.
    scope = {"type": "http", "path": request.url.path, "method": "", "root_path": ""}
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("%s %s crashed", request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "the server failed; the error is logged"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the translations on ``app``."""
    app.add_exception_handler(LoramillError, _loramill_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
