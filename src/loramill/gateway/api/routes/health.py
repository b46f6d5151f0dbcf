"""``/healthz`` (the process answers), ``/readyz`` (its store, storage and broker do), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from loramill.errors import LoramillError
from loramill.gateway.api import metrics
from loramill.gateway.api.deps import GatewayDep
from loramill.gateway.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process serves requests."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(gateway: GatewayDep) -> Response:
    """Readiness: the job store, storage and broker all answer."""
    checks: dict[str, str] = {}
    for name, probe in (("store", lambda: gateway.store.count_queued()),
                        ("storage", lambda: gateway.storage.exists("readyz/probe")),
                        ("broker", lambda: gateway.broker.queue_depth())):
        try:
            probe()
            checks[name] = "ok"
        except LoramillError as exc:
            checks[name] = f"{exc.code}: {exc.message}"
    ok = all(v == "ok" for v in checks.values())
    health = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(health.model_dump(by_alias=True), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics_endpoint(gateway: GatewayDep) -> Response:
    """Prometheus metrics of this process (gateway, and workers when run by ``loramill serve``)."""
    body, content_type = metrics.render(gateway.store)
    return Response(body, media_type=content_type)
