"""Job options, declared once: name, type, default, limits, choices and help of every option of a job kind.

A job kind's spec (``TrainConfig``, ``GenerateRequest``) is a ``Spec``: a strict pydantic model whose fields
are declared with ``option(...)``. Everything else is derived from it, never re-typed: the CLI flags
(``--`` + the name, dashes for underscores, unless ``cli=`` says otherwise), the TOML keys (the names), the
queue contract and the API schemas (``wire=`` gives the camelCase name clients send; a field without one is
not on the wire). ``wire_cap=`` narrows a limit for the services only, with its reason beside it.

The engine's errors name the option by its field id (``lr``, ``num_images``) in ``InvalidInput.field`` and
as the first word of the message; each entry renames it into its caller's vocabulary (``--lr``,
``learningRate``, ``configurationParams.learningRate``) with ``InvalidInput.renamed``-style helpers
(``rename_field``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from loramill.errors import InvalidInput, LoramillError

E = TypeVar("E", bound=LoramillError)
_META = "loramill"  # key of an option's facts inside its FieldInfo.json_schema_extra


@dataclass(frozen=True)
class WireCap:
    """A limit only the services apply (a shared GPU worker allows less than a local run); ``reason`` says why."""

    reason: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    multiple_of: int | None = None
    max_length: int | None = None

    def constraints(self) -> dict[str, Any]:
        """The cap as pydantic ``Field`` keyword arguments."""
        names = ("ge", "gt", "le", "lt", "multiple_of", "max_length")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def option(default: Any = PydanticUndefined, *, help: str, wire: str | None = None, cli: str | None = None,
           choices: Iterable[str] | None = None, wire_cap: WireCap | None = None, split: str | None = None,
           families: Iterable[str] | None = None, why: str | None = None, **constraints: Any) -> Any:
    """Declare one option of a ``Spec``: its default, limits (``ge``/``gt``/``le``/``lt``/``multiple_of``/
    ``max_length``), ``choices`` (an engine table's names), ``help``, and its names in the other entries.

    ``split``: on the CLI, one value holds several list items separated by it (``--target-modules a,b``).
    ``families``: the model families the option applies to; another value than the default on another family
    is refused as soon as the family is known, with ``why``.
    """
    facts: Any = {"wire": wire, "cli": cli, "choices": tuple(choices) if choices is not None else None,
                  "wire_cap": wire_cap, "split": split, "families": tuple(families) if families else None,
                  "why": why}
    return Field(default, description=help, json_schema_extra={_META: facts}, **constraints)


@dataclass(frozen=True)
class OptionInfo:
    """What ``option(...)`` declared for one field, read back for the entries that derive from it."""

    name: str
    field: FieldInfo
    wire: str | None
    cli: str | None
    choices: tuple[str, ...] | None
    wire_cap: WireCap | None
    split: str | None
    families: tuple[str, ...] | None
    why: str | None

    @property
    def flag(self) -> str:
        """The CLI flag."""
        return self.cli or "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.field.is_required()

    @property
    def default(self) -> Any:
        return None if self.field.is_required() else self.field.get_default(call_default_factory=True)

    @property
    def help(self) -> str:
        return self.field.description or ""


def options_of(spec: type[BaseModel]) -> dict[str, OptionInfo]:
    """Every option ``spec`` declares, by field id, in declaration order."""
    found = {}
    for name, info in spec.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        facts: Any = extra.get(_META)
        if facts is None:
            raise TypeError(f"{spec.__name__}.{name} is not declared with option(...)")
        found[name] = OptionInfo(name=name, field=info, **facts)
    return found


class Spec(BaseModel):
    """Base of a job kind's spec: strict types (``"10"`` is not a number, ``true`` is not 1), finite numbers,
    unknown options refused, choices checked against the engine's tables (case-insensitive); any problem
    raises ``InvalidInput`` whose ``field`` is the option's id."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", validate_default=False,
                              arbitrary_types_allowed=True)
    error_code: ClassVar[str] = "invalid_option"

    def __init__(self, *args: Any, **data: Any) -> None:
        # Leading fields may be given by position (``GenerateRequest("a cat")``), as with a dataclass.
        names = list(type(self).model_fields)
        data.update(zip(names, args, strict=False))
        try:
            super().__init__(**data)
        except ValidationError as exc:
            field, message, _ = describe_validation_error(exc)
            raise InvalidInput(message, code=self.error_code, field=field) from None

    @model_validator(mode="after")
    def _check_families(self) -> Spec:
        family = getattr(self, "family", None)
        if family:
            self.check_family(family)
        return self

    def check_family(self, family: str) -> None:
        """Refuse an option set on a model family it does not apply to (``option(families=…)``)."""
        for name, info in options_of(type(self)).items():
            value = getattr(self, name)
            if info.families and family not in info.families and value != info.default:
                raise option_error(name, f"applies to {', '.join(info.families)} only, not {family}"
                                   f"{' (' + info.why + ')' if info.why else ''}; leave it at {info.default!r}")

    @field_validator("*", mode="before")
    @classmethod
    def _lower_choice(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and _choices(cls, info.field_name):
            return value.lower()
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _check_choice(cls, value: Any, info: ValidationInfo) -> Any:
        allowed = _choices(cls, info.field_name)
        if allowed and value is not None:
            check_choice(value, allowed)
        return value


def _choices(spec: type[BaseModel], name: str | None) -> tuple[str, ...] | None:
    info = spec.model_fields.get(name or "")
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    facts: Any = extra.get(_META) or {}
    return facts.get("choices")


def check_choice(value: Any, allowed: tuple[str, ...]) -> Any:
    """``value`` if it is one of ``allowed``; otherwise an error that lists them."""
    if value not in allowed:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise PydanticCustomError("unknown_choice", "unknown value {value}; choose one of: {allowed}",
                                  {"value": shown, "allowed": ", ".join(map(repr, allowed))})
    return value


def option_error(field: str, text: str, *, code: str = "invalid_option") -> InvalidInput:
    """An engine error about option ``field``: the message starts with the field id, ``field`` holds it."""
    return InvalidInput(f"{field}: {text}", code=code, field=field)


def rename_field(exc: E, name_of: Callable[[str], str | None]) -> E:
    """``exc`` with its option named in another entry's vocabulary (``lr`` → ``--lr``); the leading field id in
    the message is replaced, or the new name prefixed where the message did not start with it."""
    if not exc.field:
        return exc
    head, _, rest = exc.field.partition(".")
    renamed = name_of(head)
    if renamed is None:
        return exc
    new = renamed + ("." + rest if rest else "")
    message = exc.message
    if message.startswith(exc.field + ": "):
        message = message[len(exc.field) + 2:]
    return type(exc)(f"{new}: {message}", code=exc.code, field=new)


# ---- text: length caps and no control characters, for prompts, names and trigger words --------------

# C0 and C1 controls, DEL and lone surrogates; prompts may keep tab and newlines.
_CONTROL_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text_check(max_chars: int, *, multiline: bool, required: bool) -> Callable[[str], str]:
    """A validator: at most ``max_chars`` characters, no control characters, not blank when ``required``."""
    control = _CONTROL_MULTILINE if multiline else _CONTROL_LINE

    def check(value: str) -> str:
        if len(value) > max_chars:
            raise PydanticCustomError("text_too_long", "is {length} characters long; the limit is {limit}, "
                                      "shorten it", {"length": len(value), "limit": max_chars})
        bad = control.search(value)
        if bad:
            raise PydanticCustomError("control_character", "contains the control character {char} at "
                                      "position {pos}; remove it",
                                      {"char": f"U+{ord(bad.group()):04X}", "pos": bad.start()})
        if required and not value.strip():
            raise PydanticCustomError("blank_text", "is empty; give some text")
        return value

    return check


MAX_PROMPT_CHARS = 2000
Prompt = Annotated[str, AfterValidator(text_check(MAX_PROMPT_CHARS, multiline=True, required=True))]
NegativePrompt = Annotated[str, AfterValidator(text_check(MAX_PROMPT_CHARS, multiline=True, required=False))]
Name = Annotated[str, AfterValidator(text_check(256, multiline=False, required=True))]


# ---- wording of validation errors (shared by the engine, the queue contract and the API) ------------

_JSON_TYPES = {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "a string",
               list: "an array", dict: "an object"}
MISSING_HINTS: dict[str, str] = {}  # field -> what to give when it is missing (entries add theirs)


def describe_validation_error(exc: ValidationError) -> tuple[str, str, str]:
    """``(field, message, code)`` for the first problem in ``exc``, worded for the person who sent it."""
    errors = exc.errors(include_url=False, include_context=True, include_input=True)
    first = errors[0]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    message = f"{field or 'job'}: {describe_error(first)}"
    if len(errors) > 1:
        others = ", ".join(sorted({str(e["loc"][0]) for e in errors[1:] if e["loc"]}))
        message += f" (and {len(errors) - 1} more problem(s){' in ' + others if others else ''})"
    return field, message, "missing_field" if first["type"] == "missing" else "invalid_field"


def describe_error(error: Mapping[str, Any]) -> str:
    """What is wrong with one value and the fix, from one pydantic error dict."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = _JSON_TYPES.get(type(value), type(value).__name__)
    shown = repr(value) if isinstance(value, int | float) and len(repr(value)) <= 24 else got
    if isinstance(value, int) and not isinstance(value, bool) and len(repr(value)) > 24:
        shown = f"a {len(str(abs(value)))}-digit number"
    elif isinstance(value, float) and not math.isfinite(value):
        shown = "a number too large to represent"
    if kind == "missing":
        last = str(error["loc"][-1]) if error["loc"] else ""
        return f"is required; {MISSING_HINTS.get(last, 'add it')}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, not {shown}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, not {got}"
    if kind in ("string_type", "bool_type", "list_type", "model_type", "dict_type", "model_attributes_type"):
        wanted = {"string_type": "a string", "bool_type": "true or false", "list_type": "an array"}
        return f"must be {wanted.get(kind, 'an object')}, not {got}"
    if kind == "finite_number":
        return "must be a finite number; NaN and Infinity are not accepted"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        words = {"greater_than_equal": ("at least", "ge"), "less_than_equal": ("at most", "le"),
                 "greater_than": ("greater than", "gt"), "less_than": ("less than", "lt")}[kind]
        return f"must be {words[0]} {ctx.get(words[1])}, not {shown}"
    if kind == "multiple_of":
        step = ctx.get("multiple_of", 1)
        near = int(value // step * step) if isinstance(value, int | float) else None
        return f"must be a multiple of {step}, not {shown}" + (f"; try {near}" if near else "")
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"has {ctx.get('actual_length')} items; at most {ctx.get('max_length')} are accepted"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, not {shown if got == 'a number' else repr(value)[:40]}"
    if kind == "extra_forbidden":
        return "is not an option here; check its spelling"
    return str(error["msg"])
