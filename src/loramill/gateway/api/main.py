"""The FastAPI app: ``create_app(settings, store, storage, broker)``.

The app owns none of its collaborators: ``loramill serve``, tests and deployments build the store,
storage and broker they want (SQLite or PostgreSQL, folder or S3, SQL queue, Kafka or RabbitMQ) and
hand them in, so the same routes run everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

from loramill import __version__
from loramill.adapters.broker.base import Broker
from loramill.adapters.storage.base import Storage
from loramill.domain.ports import Store
from loramill.gateway.api.docs import mount_docs
from loramill.gateway.api.errors import install_error_handlers
from loramill.gateway.api.limits import BodyLimitMiddleware
from loramill.gateway.api.metrics import MetricsMiddleware
from loramill.gateway.api.routes import files, generations, health, jobs, loras, me, trainings
from loramill.gateway.api.service import Gateway
from loramill.gateway.settings import GatewaySettings

DESCRIPTION = """\
Train LoRA adapters from a few photos and generate images with them.

Every request needs an API key (`loramill keys create --user NAME`), sent as `Authorization: Bearer <key>`.
Jobs are created with `POST /v1/trainings`, `POST /v1/generations` or, with your own id, `PUT /v1/jobs/{id}`;
each answers `202` with a `Location` to poll, and `/v1/jobs/{id}/events` streams its progress.
Errors always look like `{"error": {"code": "...", "message": "..."}}`.
This page is `/docs`; the OpenAPI document itself is `/openapi.json` (for client generators).
"""


def create_app(settings: GatewaySettings, store: Store, storage: Storage, broker: Broker) -> FastAPI:
    """The API and web page over the given store, storage and broker."""
    app = FastAPI(title="loramill", version=__version__, description=DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_tags=[{"name": "jobs", "description": "trainings and generations"},
                                {"name": "loras", "description": "the LoRA registry"},
                                {"name": "files", "description": "images and LoRA files"},
                                {"name": "users", "description": "who a key belongs to"},
                                {"name": "health", "description": "probes and metrics"}])
    app.state.settings = settings
    app.state.gateway = Gateway(settings, store, storage, broker)
    install_error_handlers(app)
    mount_docs(app)
    for router in (trainings.router, generations.router, jobs.router, loras.router, files.router, me.router,
                   health.router):
        app.include_router(router)
    # outermost last: metrics see the 413s the body limit sends
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    from loramill.gateway.web import mount_web

    mount_web(app)
    _name_generated_schemas(app)
    return app


# FastAPI names the model of a multipart body after the function; clients generated from the
# document deserve a name that says what it is.
_RENAMES = {"Body_create_training_v1_trainings_post": "TrainingUpload"}


def _name_generated_schemas(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            text = json.dumps(generate())
            for old, new in _RENAMES.items():
                text = text.replace(old, new)  # the generated names are unique words
            app.openapi_schema = json.loads(text)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
