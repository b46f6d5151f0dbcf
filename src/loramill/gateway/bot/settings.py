"""Telegram bot settings from the environment (``LORAMILL_TELEGRAM_*``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loramill.engine.generation.request import GenerateRequest, LoraRef
from loramill.engine.options import options_of
from loramill.engine.training.config import TrainConfig
from loramill.errors import InvalidInput
from loramill.jobs.wire import wire_type

OFFICIAL_API_URL = "https://api.telegram.org"

# The job options' own types and limits, as the queue accepts them (static checkers see the plain types).
if TYPE_CHECKING:
    Steps: TypeAlias = int
    Width: TypeAlias = int
    Height: TypeAlias = int
    Epochs: TypeAlias = int
    MaxSteps: TypeAlias = int
    LoraWeight: TypeAlias = float
else:
    Steps, Width, Height = (wire_type(options_of(GenerateRequest)[n]) for n in ("steps", "width", "height"))
    Epochs, MaxSteps = (wire_type(options_of(TrainConfig)[n]) for n in ("epochs", "max_steps"))
    LoraWeight = wire_type(options_of(LoraRef)["weight"])


class BotSettings(BaseSettings):
    """How the bot reaches Telegram, how fast it may talk, and what it asks the worker to make."""

    model_config = SettingsConfigDict(env_prefix="LORAMILL_TELEGRAM_", extra="ignore")

    token: SecretStr = Field(description="bot token from @BotFather; never logged")
    api_url: str = Field(default=OFFICIAL_API_URL,
                         description="Bot API server; point it at a local Bot API server or a test stand-in")

    # Telegram allows about 1 message/s per chat and 30/s overall (else 429 with retry_after).
    per_chat_interval: float = Field(default=1.0, ge=0, le=60, description="seconds between messages to one chat")
    global_rate: int = Field(default=30, ge=1, le=1000, description="most messages in any one second, all chats")
    max_send_attempts: int = Field(default=5, ge=1, le=50, description="tries per message when Telegram says 429")

    # /train: Telegram albums hold at most 10 photos, so 11-20 arrive as two albums; wait for quiet.
    album_min: int = Field(default=5, ge=1, le=200, description="fewest photos /train accepts")
    album_max: int = Field(default=20, ge=1, le=200, description="most photos /train accepts")
    album_wait: float = Field(default=3.0, gt=0, le=120,
                              description="seconds of quiet after the last photo before the set is taken")
    train_session_ttl: float = Field(default=600.0, gt=0, description="seconds a /train waits for its photos")

    # What the bot asks for; the worker fills in anything left unset from the model family's defaults.
    base_model: str | None = Field(default=None, description="baseModel of jobs (default: the worker's)")
    steps: Steps | None = Field(default=None, description="generation steps (default: family's)")
    width: Width | None = Field(default=None, description="pixels (default: family's)")
    height: Height | None = Field(default=None, description="pixels (default: family's)")
    train_epochs: Epochs | None = Field(default=None, description="epochs of /train jobs")
    train_max_steps: MaxSteps | None = Field(default=None, description="maxSteps of /train jobs")
    lora_weight: LoraWeight = Field(default=1.0, description="strength of the LoRA in /avatar")

    # How often the result loop looks for finished jobs; how long one getUpdates long poll may wait.
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    polling_timeout: int = Field(default=10, ge=0, le=50)

    @model_validator(mode="after")
    def _check_album_bounds(self) -> BotSettings:
        if self.album_min > self.album_max:
            raise ValueError(f"album_min ({self.album_min}) is above album_max ({self.album_max}); lower it")
        return self


def load_bot_settings(**overrides: object) -> BotSettings:
    """Read the settings from the environment (``overrides`` win); a bad value names its variable.

    The value itself never appears in the message: it may be the token.
    """
    try:
        return BotSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        name = f"LORAMILL_TELEGRAM_{field.upper()}" if field else "LORAMILL_TELEGRAM_*"
        message = "is not set; get a token from @BotFather" if first["type"] == "missing" else first["msg"]
        raise InvalidInput(f"{name}: {message}", code="invalid_setting", field=name) from None
