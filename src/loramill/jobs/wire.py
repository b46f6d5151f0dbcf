"""The queue's (and the API's) view of a job kind's spec: its ``wire=`` options under their camelCase names.

Nothing here declares an option. ``wire_model`` copies each wire option's type, limits and choices from
the engine's spec, narrows a limit where the option declares a ``WireCap`` (its reason goes into the
field's description), and makes every option optional: a field the client leaves out takes the worker's
or the engine's default. ``to_engine`` maps what a client sent back to the spec's field ids.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import annotated_types as at
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, create_model

from loramill.engine.options import OptionInfo, Spec, WireCap, check_choice, options_of

_UPPER, _LOWER = (at.Le, at.Lt), (at.Ge, at.Gt)


def wire_options(spec: type[Spec]) -> dict[str, OptionInfo]:
    """The options of ``spec`` a client may send, by wire name."""
    return {info.wire: info for info in options_of(spec).values() if info.wire}


def wire_model(spec: type[Spec], name: str, base: type[BaseModel], doc: str, *,
               service_defaults: Iterable[str] = (), **extra: Any) -> type[BaseModel]:
    """A ``base`` model holding ``spec``'s wire options plus ``extra`` service-only fields.

    An option the spec requires is required on the wire too, unless it is in ``service_defaults`` (the worker
    fills it, e.g. the trigger word from LORAMILL_DEFAULT_TRIGGER); every other option is optional, ``None``
    meaning the worker's or the engine's default.
    """
    fields: dict[str, Any] = {}
    for wire, info in wire_options(spec).items():
        if info.required and info.name not in service_defaults:
            fields[snake(wire)] = (wire_type(info), Field(..., alias=wire, description=_describe(info)))
        else:
            fields[snake(wire)] = (wire_type(info) | None, Field(None, alias=wire, description=_describe(info)))
    model = create_model(name, __base__=base, __doc__=doc, **fields, **extra)
    return model


def wire_type(info: OptionInfo) -> Any:
    """The option's type with the engine's limits, narrowed by its wire cap, and its choices check."""
    inner: Any = info.field.annotation
    args = typing.get_args(inner)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
    metadata = list(info.field.metadata)
    if info.wire_cap is not None:
        metadata = _narrowed(info, metadata, info.wire_cap)
    if info.choices:
        allowed = info.choices
        metadata += [BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
                     AfterValidator(lambda v: check_choice(v, allowed))]
    return Annotated[inner, *metadata] if metadata else inner


def to_engine(spec: type[Spec], params: BaseModel) -> dict[str, Any]:
    """The options a client set in ``params`` (a ``wire_model``), by the spec's field ids."""
    values = {}
    for wire, info in wire_options(spec).items():
        value = getattr(params, snake(wire))
        if value is not None:
            values[info.name] = value
    return values


def engine_to_wire(spec: type[Spec]) -> Mapping[str, str]:
    """Field id → wire name, for the options on the wire."""
    return {info.name: wire for wire, info in wire_options(spec).items()}


def snake(name: str) -> str:
    """``learningRate`` → ``learning_rate``."""
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _narrowed(info: OptionInfo, metadata: list[Any], cap: WireCap) -> list[Any]:
    limits = cap.constraints()
    engine_upper = next((m for m in metadata if isinstance(m, _UPPER)), None)
    cap_upper = limits.get("le", limits.get("lt"))
    if engine_upper is not None and cap_upper is not None:
        bound = engine_upper.le if isinstance(engine_upper, at.Le) else engine_upper.lt
        if cap_upper > bound:
            raise TypeError(f"option {info.name}: its wire cap ({cap_upper}) is wider than the engine's ({bound})")
    drop: tuple[type, ...] = ()
    if "le" in limits or "lt" in limits:
        drop += _UPPER
    if "ge" in limits or "gt" in limits:
        drop += _LOWER
    if "max_length" in limits:
        drop += (at.MaxLen,)
    kept = [m for m in metadata if not isinstance(m, drop)]
    names = {"ge": at.Ge, "gt": at.Gt, "le": at.Le, "lt": at.Lt, "multiple_of": at.MultipleOf,
             "max_length": at.MaxLen}
    return kept + [names[k](v) for k, v in limits.items()]


def _describe(info: OptionInfo) -> str:
    text = info.help
    if info.wire_cap is not None:
        shown = ", ".join(f"{k} {v}" for k, v in info.wire_cap.constraints().items())
        text += f" (service limit {shown}: {info.wire_cap.reason})"
    return text
