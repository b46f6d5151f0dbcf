"""``/v1/loras``: the LoRAs you trained (and public ones), deleting yours, sharing (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from loramill.gateway.api.deps import AdminDep, GatewayDep, PrincipalDep
from loramill.gateway.api.schemas import ErrorBody, LoraPage, LoraPublic, PublicFlag
from loramill.gateway.api.views import lora_public

router = APIRouter(prefix="/v1/loras", tags=["loras"])
ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}}


@router.get("", response_model=LoraPage, responses=ERRORS)
def list_loras(gateway: GatewayDep, who: PrincipalDep) -> LoraPage:
    """Your LoRAs and the public ones, newest first."""
    return LoraPage(items=[lora_public(lora) for lora in gateway.loras(who)])


@router.get("/{lora_id}", response_model=LoraPublic, responses=ERRORS)
def get_lora(lora_id: str, gateway: GatewayDep, who: PrincipalDep) -> LoraPublic:
    """One LoRA you own or may use."""
    return lora_public(gateway.usable_lora(who, lora_id))


@router.delete("/{lora_id}", status_code=204, response_class=Response, responses=ERRORS)
def delete_lora(lora_id: str, gateway: GatewayDep, who: PrincipalDep) -> Response:
    """Delete one of your LoRAs; generations can no longer use it."""
    gateway.delete_lora(who, lora_id)
    return Response(status_code=204)


@router.post("/{lora_id}/public", response_model=LoraPublic, responses={**ERRORS, 403: {"model": ErrorBody}})
def set_public(lora_id: str, gateway: GatewayDep, who: AdminDep,
               body: Annotated[PublicFlag | None, Body()] = None) -> LoraPublic:
    """Admin only: let every user apply this LoRA (``{"public": false}`` to stop)."""
    return lora_public(gateway.set_public(lora_id, body.public if body else True))
