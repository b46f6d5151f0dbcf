"""``GET /v1/me``: whose key this is (the web page checks a pasted key with it)."""

from __future__ import annotations

from fastapi import APIRouter

from loramill.gateway.api.deps import PrincipalDep
from loramill.gateway.api.schemas import ErrorBody, Me

router = APIRouter(prefix="/v1", tags=["users"])


@router.get("/me", response_model=Me, responses={401: {"model": ErrorBody}})
def me(who: PrincipalDep) -> Me:
    """The user the presented API key belongs to."""
    return Me(user_id=who.user_id, is_admin=who.is_admin)
