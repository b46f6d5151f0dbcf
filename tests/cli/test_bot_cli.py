"""``loramill bot`` runs the Telegram bot alone, as compose's bot service does, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.gateway.bot.conftest import TOKEN, stand_in
from tests.gateway.bot.standin import Person


def test_bot_command_answers_people_alone_and_stops_on_sigterm(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str, str]:
        async with stand_in() as api:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "KAFKA_", "S3_"))}
            env.update(LORAMILL_HOME=str(tmp_path), LORAMILL_TELEGRAM_TOKEN=TOKEN, LORAMILL_LOG_FORMAT="text",
                       LORAMILL_TELEGRAM_API_URL=f"http://127.0.0.1:{api.port}", LORAMILL_TELEGRAM_POLLING_TIMEOUT="1")
            bot = await asyncio.create_subprocess_exec(sys.executable, "-m", "loramill", "bot", env=env,
                                                       stderr=asyncio.subprocess.PIPE)
            ann = Person(api, 5001)
            ann.says("/txt2img")
            reply = (await asyncio.wait_for(api.wait_for(ann.id, "sendmessage"), 60))[0]
            bot.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(bot.communicate(), 30)
            return bot.returncode or 0, reply.text or "", err.decode()

    code, reply, log = asyncio.run(scenario())

    assert "/txt2img a red fox" in reply
    assert code == 0, log[-2000:]
    assert "Telegram bot started" in log and "Telegram bot stopped" in log and TOKEN not in log
