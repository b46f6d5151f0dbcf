"""The request body limit, enforced while the body streams in (a missing Content-Length can't dodge it)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loramill.gateway.api.errors import error_body


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Answer 413 naming ``LORAMILL_MAX_BODY_BYTES`` as soon as a body is known to be over it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # 1. Declared too large: refuse before reading a byte
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        # 2. Otherwise count while the app reads. FastAPI turns any error raised while it reads the
        #    body into its own 400, so the answer the app then sends is replaced by the 413.
        seen, over, refused = 0, False, False

        async def counting_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            if not over:
                await send(message)
            elif not refused:
                refused = True
                await self._refuse(send, seen)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not refused:
                await self._refuse(send, seen)

    async def _refuse(self, send: Send, size: int) -> None:
        body = json.dumps(error_body(
            "body_too_large", f"the request body is {size}+ bytes; the limit is {self.max_bytes} bytes "
            "(LORAMILL_MAX_BODY_BYTES); send fewer or smaller images")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
