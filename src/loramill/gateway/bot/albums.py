"""Gather the photos of a ``/train``: one or more albums, taken once the person stops sending.

Telegram delivers an album as separate messages sharing a ``media_group_id`` and holds at most ten
photos, so 11-20 photos arrive as two albums (or loose photos). After ``/train`` (or an album whose
caption is ``/train``) every photo the person sends joins their set; each new photo restarts a short
wait, and when ``wait`` seconds pass without one the set is handed on, whatever albums it came in.
Too few photos keep the set open (people pick photos in more than one go) with a reply saying how
many more to send; too many close it with a reply saying to start again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

logger = logging.getLogger("loramill.bot.albums")


@dataclass
class PhotoSet:
    """The photos one person sent for one ``/train``, in the order they arrived (as file ids)."""

    telegram_id: int
    chat_id: int
    message_id: int  # of the /train that opened the set: names the training job (idempotency)
    started: float
    file_ids: dict[str, str] = field(default_factory=dict)  # file_unique_id -> file_id (drops resends)
    timer: asyncio.TimerHandle | None = None


OnReady = Callable[[PhotoSet], Awaitable[None]]
OnReject = Callable[[PhotoSet, str], Awaitable[None]]


def count_problem(count: int, min_photos: int, max_photos: int) -> str | None:
    """Why ``count`` photos cannot train an avatar, worded for the person; ``None`` if they can."""
    if count < min_photos:
        more = min_photos - count
        return (f"I have {count} photo{'s' if count != 1 else ''} so far; an avatar needs {min_photos}-{max_photos}. "
                f"Send {more} more photo{'s' if more != 1 else ''} of your face, or /cancel.")
    if count > max_photos:
        return (f"I got {count} photos; at most {max_photos} are used. "
                f"Send /train again with {min_photos}-{max_photos} photos.")
    return None


class AlbumCollector:
    """Per-person photo sets with a quiet-period debounce."""

    def __init__(self, *, on_ready: OnReady, on_reject: OnReject, min_photos: int = 5, max_photos: int = 20,
                 wait: float = 3.0, ttl: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.on_ready = on_ready
        self.on_reject = on_reject
        self.min_photos = min_photos
        self.max_photos = max_photos
        self.wait = wait
        self.ttl = ttl
        self.clock = clock
        self._sets: dict[int, PhotoSet] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, telegram_id: int, chat_id: int, message_id: int) -> None:
        """``/train``: open a new, empty set for this person (dropping any unfinished one)."""
        self.cancel(telegram_id)
        self._sets[telegram_id] = PhotoSet(telegram_id, chat_id, message_id, self.clock())

    def waiting(self, telegram_id: int) -> bool:
        """Whether this person has an open ``/train`` (not expired)."""
        photo_set = self._sets.get(telegram_id)
        if photo_set is not None and self.clock() - photo_set.started > self.ttl:
            self.cancel(telegram_id)
            return False
        return photo_set is not None

    def add(self, telegram_id: int, file_unique_id: str, file_id: str) -> bool:
        """Add a photo to the person's open set and restart the wait; ``False`` if no set is open."""
        if not self.waiting(telegram_id):
            return False
        photo_set = self._sets[telegram_id]
        photo_set.file_ids.setdefault(file_unique_id, file_id)
        if photo_set.timer is not None:
            photo_set.timer.cancel()
        photo_set.timer = asyncio.get_running_loop().call_later(self.wait, self._close, telegram_id)
        return True

    def cancel(self, telegram_id: int) -> bool:
        """Forget the person's open set; ``True`` if there was one."""
        photo_set = self._sets.pop(telegram_id, None)
        if photo_set is not None and photo_set.timer is not None:
            photo_set.timer.cancel()
        return photo_set is not None

    async def drain(self) -> None:
        """Wait for hand-offs already under way (for shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _close(self, telegram_id: int) -> None:
        photo_set = self._sets.get(telegram_id)
        if photo_set is None:
            return
        photo_set.timer = None
        problem = count_problem(len(photo_set.file_ids), self.min_photos, self.max_photos)
        if not (problem and len(photo_set.file_ids) < self.min_photos):
            del self._sets[telegram_id]  # taken, or too many: either way this set is finished
        handoff = self.on_reject(photo_set, problem) if problem else self.on_ready(photo_set)
        task = asyncio.get_running_loop().create_task(self._run(handoff, photo_set))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run(handoff: Awaitable[None], photo_set: PhotoSet) -> None:
        try:
            await handoff
        except Exception:  # the callbacks answer the person themselves; this only keeps the loop alive
            logger.exception("handing on the /train photos of chat %s failed", photo_set.chat_id)
