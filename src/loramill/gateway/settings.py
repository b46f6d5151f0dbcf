"""Gateway settings (HTTP API, web page, ``loramill serve``) from ``LORAMILL_*`` environment variables.

Every limit here is named in the 4xx answer a client gets when it hits it, so a person who reads the
error knows which setting an operator would change. Documented in docs/configuration.md.
"""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from loramill.adapters.storage.quota import QuotaSettings
from loramill.errors import InvalidInput


class GatewaySettings(QuotaSettings):
    """Where the API listens, what it accepts, and when it pushes back."""

    model_config = SettingsConfigDict(env_prefix="LORAMILL_", extra="ignore", populate_by_name=True)

    host: str = Field(default="127.0.0.1", description="address the API listens on (0.0.0.0 in containers)")
    port: int = Field(default=8080, ge=0, le=65535, description="port of the API and the web page")
    public_url: str | None = Field(default=None, description="URL clients reach the API at, if behind a proxy")

    # limits: each one is reported by name when exceeded
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="largest request body")
    max_images: int = Field(default=50, ge=1, le=200, description="most images in one training request")
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="largest single image file")
    max_image_pixels: int = Field(default=4096 * 4096, ge=64 * 64, description="most pixels (width x height) per image")
    min_image_side: int = Field(default=64, ge=8, description="smallest width or height of a training image")
    max_prompt_chars: int = Field(default=1000, ge=1, le=2000, description="longest prompt or negative prompt")

    # backpressure
    queue_limit: int = Field(default=100, ge=1, description="queued jobs above which new jobs get 429")
    retry_after_seconds: int = Field(default=30, ge=1, description="Retry-After sent with 429")
    # fair share between users (keys): one user's flood must not lock the others out
    user_queue_limit: int = Field(default=20, ge=1, description="waiting (queued) jobs one user may have; above "
                                  "it that user's new jobs get 429 user_queue_full, others are unaffected")
    user_rate_limit: float = Field(default=2.0, gt=0, description="job submissions per second one user may make "
                                   "on average; above it 429 rate_limited with Retry-After")
    user_rate_burst: int = Field(default=20, ge=1, description="submissions one user may make at once before "
                                 "LORAMILL_USER_RATE_LIMIT applies")

    # listing and streaming
    page_size: int = Field(default=20, ge=1, le=500, description="default number of jobs per page")
    sse_poll_seconds: float = Field(default=0.25, gt=0, le=10, description="how often a stream checks for events")
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, description="comment line sent on a quiet stream")
    file_url_expires: int = Field(default=900, ge=1, le=7 * 24 * 3600,
                                  description="lifetime in seconds of presigned URLs /v1/files redirects to")

    # loramill serve
    workers: int = Field(default=1, ge=0, le=64, description="worker threads `loramill serve` starts (0: API only)")
    shutdown_grace_seconds: int = Field(default=5, ge=0, le=600,
                                        description="on SIGTERM, how long open requests (event streams) may "
                                        "finish before they are closed")


def load_gateway_settings(**overrides: object) -> GatewaySettings:
    """Read the settings from the environment; a bad value becomes ``InvalidInput`` naming the variable."""
    try:
        return GatewaySettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        name = f"LORAMILL_{str(first['loc'][0]).upper()}" if first["loc"] else "gateway settings"
        raise InvalidInput(f"{name}: {first['msg']}", code="invalid_setting", field=name) from None
