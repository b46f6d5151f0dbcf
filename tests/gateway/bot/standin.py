"""A local stand-in of the Telegram Bot API: the methods loramill's bot calls, over real HTTP.

Scripted updates are served by ``getUpdates`` (long polling included), files by ``getFile`` and
``/file/bot<token>/<path>``; everything the bot sends is recorded with the time it arrived, uploaded
photo bytes included. ``fail_next(method, retry_after)`` makes the next call of a method answer 429
the way Telegram does, to prove the bot waits as told.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_ID = 4242


@dataclass
class Sent:
    """One call the bot made: method, chat, text or caption, uploaded file bytes, arrival time."""

    method: str
    chat_id: int | None
    text: str | None
    data: bytes | None
    at: float
    fields: dict[str, Any] = field(default_factory=dict)


class BotApiStandIn:
    """The Bot API on 127.0.0.1:``port`` for one bot ``token``."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.sent: list[Sent] = []
        self.calls: list[tuple[str, float]] = []
        self.refused: list[tuple[str, float]] = []
        self._failures: dict[str, list[int | None]] = {}
        self._new_update = asyncio.Event()
        self._sent_event = asyncio.Event()
        self._ids = itertools.count(1)
        self._messages = itertools.count(1000)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> str:
        """Serve on a free port; returns the base URL to give the bot."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- scripting ----------------------------------------------------------------------------------

    def push(self, message: dict[str, Any]) -> None:
        """Queue a message update for the bot's next getUpdates."""
        self.updates.append({"update_id": next(self._ids), "message": message})
        self._new_update.set()

    def add_file(self, data: bytes) -> str:
        """Make ``data`` downloadable; returns its file_id."""
        file_id = f"file{len(self.files) + 1}"
        self.files[file_id] = data
        return file_id

    def fail_next(self, method: str, retry_after: int | None = None) -> None:
        """Answer the next call of ``method`` with 429 and ``retry_after`` as flood control does, or with
        500 Internal Server Error when no ``retry_after`` is given."""
        self._failures.setdefault(method.lower(), []).append(retry_after)

    def sent_to(self, chat_id: int, method: str | None = None) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id and (method is None or s.method == method)]

    async def wait_for(self, chat_id: int, method: str, count: int = 1, *, timeout: float = 60,
                       contains: str | None = None) -> list[Sent]:
        """Wait until ``count`` ``method`` calls reached ``chat_id`` (with ``contains`` in the text)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.sent_to(chat_id, method) if contains is None or contains in (s.text or "")]
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(s.method, s.text) for s in self.sent_to(chat_id)]
                raise AssertionError(f"{count} {method} {contains or ''} to chat {chat_id} never arrived; "
                                     f"got {seen}")
            self._sent_event.clear()
            try:
                await asyncio.wait_for(self._sent_event.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    # ---- HTTP ---------------------------------------------------------------------------------------

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"].lower()
        params, uploads = await self._params(request)
        now = time.monotonic()
        self.calls.append((method, now))
        if self._failures.get(method):
            retry_after = self._failures[method].pop(0)
            self.refused.append((method, now))
            if retry_after is None:
                return web.json_response({"ok": False, "error_code": 500, "description": "Internal Server Error"},
                                         status=500)
            return web.json_response({"ok": False, "error_code": 429, "parameters": {"retry_after": retry_after},
                                      "description": f"Too Many Requests: retry after {retry_after}"}, status=429)
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found: method not found"},
                                     status=404)
        result = await handler(params, uploads, now)
        return web.json_response({"ok": True, "result": result})

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        file_id = request.match_info["path"].rsplit("/", 1)[-1].removesuffix(".jpg")
        if file_id not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[file_id], content_type="image/jpeg")

    @staticmethod
    async def _params(request: web.Request) -> tuple[dict[str, str], dict[str, bytes]]:
        params: dict[str, str] = dict(request.query)
        uploads: dict[str, bytes] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.filename:  # type: ignore[union-attr]
                    uploads[part.name or ""] = bytes(await part.read())  # type: ignore[union-attr]
                else:
                    params[part.name or ""] = await part.text()  # type: ignore[union-attr]
        elif request.can_read_body:
            params.update({k: str(v) for k, v in (await request.post()).items()})
        # aiogram uploads a file under a random field and names it in the parameter: photo=attach://<field>.
        for name, value in list(params.items()):
            if value.startswith("attach://") and value[len("attach://"):] in uploads:
                uploads[name] = uploads.pop(value[len("attach://"):])
        return params, uploads

    # ---- methods ------------------------------------------------------------------------------------

    async def _getme(self, params: dict[str, str], uploads: dict[str, bytes], now: float) -> dict[str, Any]:
        return {"id": BOT_ID, "is_bot": True, "first_name": "loramill", "username": "loramill_test_bot"}

    async def _deletewebhook(self, params: dict[str, str], uploads: dict[str, bytes], now: float) -> bool:
        return True

    async def _getupdates(self, params: dict[str, str], uploads: dict[str, bytes], now: float) -> list[Any]:
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), 0.25)  # short polls keep test shutdown quick
        pending = [u for u in self.updates if u["update_id"] >= offset]
        if not pending and timeout > 0:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), timeout)
            except TimeoutError:
                pass
            pending = [u for u in self.updates if u["update_id"] >= offset]
        return pending

    async def _getfile(self, params: dict[str, str], uploads: dict[str, bytes], now: float) -> dict[str, Any]:
        file_id = params["file_id"]
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(self.files.get(file_id, b"")),
                "file_path": f"photos/{file_id}.jpg"}

    async def _sendmessage(self, params: dict[str, str], uploads: dict[str, bytes], now: float) -> dict[str, Any]:
        return self._record("sendmessage", params, None, now, text=params.get("text"))

    async def _sendphoto(self, params: dict[str, str], uploads: dict[str, bytes], now: float) -> dict[str, Any]:
        message = self._record("sendphoto", params, uploads.get("photo"), now, text=params.get("caption"))
        message["photo"] = [{"file_id": f"sent{message['message_id']}", "file_unique_id": f"s{message['message_id']}",
                             "width": 64, "height": 64}]
        return message

    def _record(self, method: str, params: dict[str, str], data: bytes | None, now: float,
                text: str | None) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        self.sent.append(Sent(method, chat_id, text, data, now, dict(params)))
        self._sent_event.set()
        message: dict[str, Any] = {"message_id": next(self._messages), "date": int(time.time()),
                                   "chat": {"id": chat_id, "type": "private"},
                                   "from": {"id": BOT_ID, "is_bot": True, "first_name": "loramill"}}
        if text is not None:
            message["text" if method == "sendmessage" else "caption"] = text
        return message


class Person:
    """A Telegram user writing to the bot in a private chat (their chat id is their user id)."""

    def __init__(self, api: BotApiStandIn, user_id: int, name: str = "Ann") -> None:
        self.api = api
        self.id = user_id
        self.name = name
        self._messages = itertools.count(1)

    def _message(self, **fields: Any) -> dict[str, Any]:
        return {"message_id": next(self._messages), "date": int(time.time()),
                "chat": {"id": self.id, "type": "private", "first_name": self.name},
                "from": {"id": self.id, "is_bot": False, "first_name": self.name}, **fields}

    def says(self, text: str, *, in_group: int | None = None) -> None:
        """Send a text message (commands included), in the private chat or in group ``in_group``."""
        entities = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}] if text.startswith("/") else []
        message = self._message(text=text, entities=entities)
        if in_group is not None:
            message["chat"] = {"id": in_group, "type": "group", "title": "friends"}
        self.api.push(message)

    def sends_files(self, images: list[bytes]) -> None:
        """Send pictures one by one as files ("send without compression")."""
        for data in images:
            file_id = self.api.add_file(data)
            self.api.push(self._message(document={"file_id": file_id, "file_unique_id": f"u{file_id}",
                                                  "file_name": f"{file_id}.jpg", "mime_type": "image/jpeg"}))

    def sends_album(self, images: list[bytes], *, group: str, caption: str | None = None) -> None:
        """Send photos as one album (one message per photo, sharing a media_group_id)."""
        for i, data in enumerate(images):
            file_id = self.api.add_file(data)
            extra = {"caption": caption} if caption and i == 0 else {}
            self.api.push(self._message(media_group_id=group, photo=[
                {"file_id": file_id, "file_unique_id": f"u{file_id}", "width": 96, "height": 80}], **extra))
