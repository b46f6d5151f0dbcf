"""Request dependencies: who is calling (API key → user) and the gateway they act through.

A key arrives as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; both are declared as
security schemes so the OpenAPI document (and the docs page's "Authorize" button) knows about them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from loramill.gateway.api.errors import Forbidden, Unauthorized
from loramill.gateway.api.service import Gateway, Principal

_bearer = HTTPBearer(auto_error=False, description="an API key from `loramill keys create --user U`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, as a header")


async def get_gateway(request: Request) -> Gateway:
    """The app's ``Gateway`` (built once in ``create_app``).

    ``async`` although it awaits nothing: FastAPI runs a plain ``def`` dependency in its thread pool, and
    that hop, on every request, cost a tenth of a status poll.
    """
    gateway: Gateway = request.app.state.gateway
    return gateway


def get_principal(
    gateway: Annotated[Gateway, Depends(get_gateway)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> Principal:
    """The user owning the presented key; 401 without a valid one."""
    key = bearer.credentials if bearer is not None else header
    if not key:
        raise Unauthorized("no API key; send 'Authorization: Bearer <key>' (create one with "
                           "`loramill keys create --user NAME`)")
    user = gateway.store.verify_api_key(key.strip())
    if user is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)")
    return Principal(user_id=user.id, is_admin=user.is_admin)


def get_admin(who: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """The caller, if their key is an admin's; 403 otherwise."""
    if not who.is_admin:
        raise Forbidden("this needs an admin key (`loramill keys create --user NAME --admin`)")
    return who


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(get_admin)]
