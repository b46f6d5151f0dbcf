"""The outbound pacing: its schedule on a fake clock, and 429 handling through the real Bot API client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import GetMe, SendMessage

from loramill.errors import Overloaded
from loramill.gateway.bot.sender import Pacer, Sender
from tests.gateway.bot.conftest import Services, running_bot, stand_in
from tests.gateway.bot.standin import Person


class FakeClock:
    """A clock that only moves when told to (or when the code under test sleeps)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def _send_all(sender: Sender, clock: FakeClock, chat_ids: list[int]) -> list[tuple[int, float]]:
    """Send one message to each chat in turn; returns (chat, clock time) of each send."""
    sent: list[tuple[int, float]] = []

    async def make_request(bot: Any, method: Any) -> bool:
        sent.append((method.chat_id, clock.now))
        return True

    for chat_id in chat_ids:
        await sender(make_request, None, SendMessage(chat_id=chat_id, text="hi"))  # type: ignore[arg-type]
    return sent


def test_send_spaces_one_chat_by_interval() -> None:
    clock = FakeClock()
    sender = Sender(Pacer(per_chat_interval=1.0, clock=clock), sleep=clock.sleep)
    sent = asyncio.run(_send_all(sender, clock, [7, 7, 7, 7]))
    assert [at for _, at in sent] == [100.0, 101.0, 102.0, 103.0]


def test_send_lets_other_chats_go_at_once() -> None:
    clock = FakeClock()
    sender = Sender(Pacer(per_chat_interval=1.0, clock=clock), sleep=clock.sleep)
    sent = asyncio.run(_send_all(sender, clock, [1, 2, 3, 4]))
    assert [at for _, at in sent] == [100.0] * 4


def test_global_slots_never_exceed_rate_in_any_second() -> None:
    clock = FakeClock()
    pacer = Pacer(global_rate=30, clock=clock)
    starts = [pacer.take_global_slot() for _ in range(90)]  # 90 messages wanted at the same moment
    assert starts == [100.0] * 30 + [101.0] * 30 + [102.0] * 30
    for i in range(len(starts) - 30):
        assert starts[i + 30] - starts[i] >= 1.0  # the 31st message after any one is a second later


def test_chat_ready_after_idle_is_immediate() -> None:
    clock = FakeClock()
    pacer = Pacer(per_chat_interval=1.0, clock=clock)
    pacer.sent(7, clock())
    clock.now += 5
    assert pacer.chat_ready_at(7) == 105.0


def test_delay_holds_only_that_chat() -> None:
    clock = FakeClock()
    pacer = Pacer(per_chat_interval=1.0, clock=clock)
    pacer.delay(7, 12)
    assert pacer.chat_ready_at(7) == 112.0
    assert pacer.chat_ready_at(8) == 100.0


def _flood(method: Any, retry_after: int) -> TelegramRetryAfter:
    return TelegramRetryAfter(method=method, message="Too Many Requests", retry_after=retry_after)


def test_send_retries_after_retry_after_seconds() -> None:
    clock = FakeClock()
    sender = Sender(Pacer(per_chat_interval=1.0, clock=clock), sleep=clock.sleep)
    attempts: list[float] = []

    async def make_request(bot: Any, method: Any) -> str:
        attempts.append(clock.now)
        if len(attempts) == 1:
            raise _flood(method, 7)
        return "sent"

    result = asyncio.run(sender(make_request, None, SendMessage(chat_id=5, text="hi")))  # type: ignore[arg-type]
    assert result == "sent"
    assert attempts == [100.0, 107.0]


def test_send_gives_up_after_max_attempts() -> None:
    clock = FakeClock()
    sender = Sender(Pacer(clock=clock), max_attempts=3, sleep=clock.sleep)

    async def make_request(bot: Any, method: Any) -> str:
        raise _flood(method, 2)

    with pytest.raises(Overloaded, match="after 3 attempts"):
        asyncio.run(sender(make_request, None, SendMessage(chat_id=5, text="hi")))  # type: ignore[arg-type]


def test_send_passes_methods_without_chat_straight_through() -> None:
    clock = FakeClock()
    sender = Sender(Pacer(clock=clock), sleep=clock.sleep)

    async def make_request(bot: Any, method: Any) -> str:
        return "me"

    for _ in range(3):
        assert asyncio.run(sender(make_request, None, GetMe())) == "me"  # type: ignore[arg-type]
    assert clock.sleeps == []


def test_reply_arrives_after_telegram_429(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            api.fail_next("sendMessage", retry_after=1)
            ann = Person(api, 3003)
            ann.says("/help")
            reply = (await api.wait_for(ann.id, "sendmessage", timeout=20))[0]
            assert "/txt2img" in (reply.text or "")
            refused_at = api.refused[0][1]
            assert reply.at - refused_at >= 0.95  # waited the second Telegram asked for

    asyncio.run(scenario())


def test_replies_to_one_chat_keep_interval(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api, per_chat_interval=0.4):
            ann = Person(api, 3004)
            for _ in range(4):
                ann.says("/help")
            replies = await api.wait_for(ann.id, "sendmessage", count=4, timeout=20)
            gaps = [b.at - a.at for a, b in zip(replies, replies[1:], strict=False)]
            # Sent 0.4 s apart (the exact schedule is tested on a fake clock above); unpaced, all four
            # would arrive within milliseconds. Half the interval leaves room for arrival jitter.
            assert min(gaps) >= 0.2, gaps

    asyncio.run(scenario())
