"""The bot's commands. Each one parses the message, calls a function of ``jobs`` in a thread, answers.

Nothing here generates or trains: jobs are queued and the answer comes at once with the place in
line; results arrive later through ``results.ResultLoop``. Every command acts as the loramill user
mapped to the sender's Telegram account, so nobody sees or cancels another person's jobs.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import Message

from loramill.domain.status import JobKind
from loramill.errors import LoramillError, Overloaded, TransientError
from loramill.gateway.bot import jobs
from loramill.gateway.bot.albums import AlbumCollector, PhotoSet
from loramill.gateway.bot.jobs import BotServices, Queued
from loramill.logs import redact

logger = logging.getLogger("loramill.bot")
T = TypeVar("T")

HELP = (
    "I make pictures and train your personal avatar.\n\n"
    "/txt2img <description> - a picture from a description\n"
    "/train - then send 5-20 photos of your face (albums or one by one) to train your avatar\n"
    "/avatar <description> - a picture of you, with your newest avatar\n"
    "/status - your recent jobs\n"
    "/cancel [job id] - stop your newest (or that) job\n"
    "/help - this message"
)


async def _call(message: Message, func: Callable[..., T], *args: Any) -> T | None:
    """Run a blocking ``jobs`` function in a thread; a loramill error becomes the reply."""
    try:
        return await asyncio.to_thread(func, *args)
    except Overloaded as exc:
        wait = getattr(exc, "retry_after", None)
        await message.answer(f"I'm busy right now; try again in {wait} seconds." if wait else exc.message)
    except LoramillError as exc:
        await message.answer(exc.message)
    return None


def _queued(queued: Queued, what: str) -> str:
    ahead = "nobody is ahead of you" if queued.ahead == 0 else f"{queued.ahead} ahead of you"
    return f"Queued, position {queued.ahead + 1} ({ahead}). I'll send {what} here when it's ready. Job {queued.task_id}"


async def _user_id(message: Message, svc: BotServices) -> str | None:
    """The loramill user behind the sender (created on first contact)."""
    sender = message.from_user
    if sender is None:  # channel posts have no sender: nobody to own a job
        return None
    user = await _call(message, svc.store.get_or_create_telegram_user, sender.id, sender.full_name)
    return user.id if user else None


async def on_help(message: Message) -> None:
    """/start and /help: what the bot does."""
    await message.answer(HELP)


async def on_txt2img(message: Message, command: CommandObject, svc: BotServices) -> None:
    """/txt2img <prompt>: queue a picture (Prompt2Pic)."""
    # 1. The prompt is everything after the command.
    prompt = (command.args or "").strip()
    if not prompt:
        await message.answer("Describe the picture after the command, e.g. /txt2img a red fox in the snow")
        return
    # 2. Queue it as the sender's job and say where it stands.
    user_id = await _user_id(message, svc)
    if user_id is None:
        return
    key = jobs.request_key(message.chat.id, message.message_id)
    queued = await _call(message, jobs.submit_generation, svc, user_id, message.chat.id, prompt, key)
    if queued is not None:
        await message.answer(_queued(queued, "the picture"))


async def on_avatar(message: Message, command: CommandObject, svc: BotServices) -> None:
    """/avatar <prompt>: queue a picture with the sender's newest LoRA."""
    prompt = (command.args or "").strip()
    if not prompt:
        await message.answer("Describe the picture after the command, e.g. /avatar portrait as an astronaut")
        return
    user_id = await _user_id(message, svc)
    if user_id is None:
        return
    lora = await _call(message, jobs.newest_lora, svc, user_id)
    if lora is None:
        await message.answer("You have no avatar yet: send /train, then 5-20 photos of your face.")
        return
    key = jobs.request_key(message.chat.id, message.message_id)
    queued = await _call(message, jobs.submit_generation, svc, user_id, message.chat.id, prompt, key, lora)
    if queued is not None:
        await message.answer(_queued(queued, "your picture"))


async def on_train(message: Message, svc: BotServices, albums: AlbumCollector) -> None:
    """/train: start collecting photos for an avatar (Selfix's flow, face mode)."""
    if message.from_user is None:
        return
    # Open the set before the first await: the other photos of an album captioned /train are being
    # handled concurrently and must find it open.
    albums.start(message.from_user.id, message.chat.id, message.message_id)
    picture = _picture(message)
    if picture:  # an album captioned /train: its first photo is this very message
        albums.add(message.from_user.id, *picture)
    if await _user_id(message, svc) is None or picture:  # registers a newcomer under their name
        return
    await message.answer(f"Send {albums.min_photos}-{albums.max_photos} photos of your face: one person, "
                         "different angles and light. Albums or one by one; I start when you stop.")


def _picture(message: Message) -> tuple[str, str] | None:
    """``(file_unique_id, file_id)`` of the picture in the message: a photo, or an image sent as a file."""
    if message.photo:
        largest = message.photo[-1]  # Telegram lists the sizes smallest first
        return largest.file_unique_id, largest.file_id
    document = message.document
    if document is not None and (document.mime_type or "").startswith("image/"):
        return document.file_unique_id, document.file_id  # "send as file": full quality, worth keeping
    return None


async def on_photo(message: Message, albums: AlbumCollector, hinted_groups: deque[str]) -> None:
    """A photo (or an image sent as a file): joins the sender's open /train, else a hint to send /train first."""
    picture = _picture(message)
    if message.from_user is None or picture is None:
        return
    if albums.add(message.from_user.id, *picture) or message.chat.type != "private":
        return  # in a group, photos are people talking to each other: no hints there
    if message.media_group_id is not None:
        # Albums arrive as one message per photo: hint once per album, not once per photo.
        if message.media_group_id in hinted_groups:
            return
        hinted_groups.append(message.media_group_id)
    await message.answer("To train your avatar, send /train first, then your photos.")


async def on_status(message: Message, svc: BotServices) -> None:
    """/status: the sender's recent jobs (only theirs)."""
    user_id = await _user_id(message, svc)
    if user_id is None:
        return
    recent = await _call(message, jobs.recent_jobs, svc, user_id)
    if recent is None:
        return
    if not recent:
        await message.answer("You have no jobs yet. /help lists what I can do.")
        return
    lines = []
    for job in recent:
        what = "avatar training" if job.kind == JobKind.TRAIN else "picture"
        progress = job.progress or {}
        step = f" {progress['step']}/{progress['totalSteps']}" if {"step", "totalSteps"} <= set(progress) else ""
        lines.append(f"{job.id}: {what}, {job.status}{step}")
    await message.answer("Your recent jobs:\n" + "\n".join(lines))


async def on_cancel(message: Message, command: CommandObject, svc: BotServices, albums: AlbumCollector) -> None:
    """/cancel [job id]: stop collecting photos, or cancel the sender's newest (or named) job."""
    task_id = (command.args or "").strip() or None
    if message.from_user is not None and task_id is None and albums.cancel(message.from_user.id):
        await message.answer("Stopped collecting photos for /train.")
        return
    user_id = await _user_id(message, svc)
    if user_id is None:
        return
    job = await _call(message, jobs.cancel_job, svc, user_id, task_id)
    if job is not None:
        done = "canceled" if job.status == "canceled" else f"already {job.status}"
        await message.answer(f"Job {job.id}: {'stopping' if job.status == 'processing' else done}.")


async def on_other(message: Message) -> None:
    """Any other text: point to /help."""
    await message.answer("I don't know that one. /help lists what I can do.")


def build_router() -> Router:
    """A router with every command (a fresh one per dispatcher: aiogram attaches a router only once)."""
    router = Router(name="loramill")
    router.message.register(on_help, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_txt2img, Command("txt2img"))
    router.message.register(on_avatar, Command("avatar"))
    router.message.register(on_train, Command("train"))  # before photos: an album may be captioned /train
    router.message.register(on_status, Command("status"))
    router.message.register(on_cancel, Command("cancel"))
    router.message.register(on_photo, F.photo | F.document.mime_type.startswith("image/"))
    router.message.register(on_other, F.text, F.chat.type == "private")  # groups: only commands get answers
    return router


def train_callbacks(bot: Bot, svc: BotServices) -> dict[str, Callable[..., Any]]:
    """The ``on_ready`` / ``on_reject`` hand-offs of the /train photo collector."""

    async def on_ready(photo_set: PhotoSet) -> None:
        # 1. Fetch the photos from Telegram (the largest size of each).
        try:
            photos = [await _download(bot, file_id) for file_id in photo_set.file_ids.values()]
        except TransientError as exc:
            await bot.send_message(photo_set.chat_id, exc.message)
            return
        # 2. Queue the training as the sender's job.
        try:
            user = await asyncio.to_thread(svc.store.get_or_create_telegram_user, photo_set.telegram_id,
                                           str(photo_set.telegram_id))
            key = jobs.request_key(photo_set.chat_id, photo_set.message_id)
            queued = await asyncio.to_thread(jobs.submit_training, svc, user.id, photo_set.chat_id, photos, key)
        except LoramillError as exc:
            await bot.send_message(photo_set.chat_id, exc.message)
            return
        await bot.send_message(photo_set.chat_id, f"Got {len(photos)} photos. " + _queued(queued, "a note"))

    async def on_reject(photo_set: PhotoSet, problem: str) -> None:
        await bot.send_message(photo_set.chat_id, problem)

    return {"on_ready": on_ready, "on_reject": on_reject}


async def _download(bot: Bot, file_id: str) -> bytes:
    buffer = io.BytesIO()
    try:
        await bot.download(file_id, destination=buffer)
    except Exception as exc:
        # aiohttp's errors quote the file URL, which holds the bot token: never pass them on as they are.
        logger.warning("downloading a /train photo failed: %s", redact(f"{type(exc).__name__}: {exc}"))
        raise TransientError("I could not fetch your photos from Telegram; send /train and the photos again") \
            from None
    return buffer.getvalue()
