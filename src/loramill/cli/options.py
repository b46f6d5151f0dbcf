"""CLI flags derived from a job kind's spec: one flag per option, named, typed and explained by its declaration."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loramill.engine.options import OptionInfo, Spec, options_of, rename_field
from loramill.errors import LoramillError


def add_option_flags(parser: argparse.ArgumentParser, spec: type[Spec], *, skip: Iterable[str] = ()) -> None:
    """One flag per option of ``spec``. Every flag defaults to ``None`` (not given), so the spec's default
    applies and a TOML file's value is not overridden by an argparse default."""
    for info in options_of(spec).values():
        if info.name in skip:
            continue
        kind, is_list = _scalar_type(info)
        help_text = info.help + (f" (default: {info.default})" if info.default not in (None, [], "") else "")
        if kind is bool:
            parser.add_argument(info.flag, dest=info.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif is_list:
            parser.add_argument(info.flag, dest=info.name, action="append", type=kind, default=None,
                                metavar=info.name.upper(), help=help_text)
        else:
            parser.add_argument(info.flag, dest=info.name, type=kind, default=None, choices=info.choices,
                                metavar=None if info.choices else info.name.upper(), help=help_text)


def option_values(args: argparse.Namespace, spec: type[Spec]) -> dict[str, Any]:
    """The options given on the command line, as the spec's field ids (lists split where declared)."""
    values = {}
    for info in options_of(spec).values():
        value = getattr(args, info.name, None)
        if value is None:
            continue
        if info.split and isinstance(value, list):
            value = [part.strip() for item in value for part in item.split(info.split) if part.strip()]
        values[info.name] = value
    return values


def as_flags(exc: LoramillError, spec: type[Spec], custom: dict[str, str] | None = None) -> LoramillError:
    """``exc`` with an option named as its flag (``lr: …`` → ``--lr: …``), for the person at the terminal;
    ``custom`` names the flags a command declares itself."""
    flags = {name: info.flag for name, info in options_of(spec).items()} | (custom or {})
    return rename_field(exc, flags.get)


def _scalar_type(info: OptionInfo) -> tuple[type, bool]:
    """The argparse ``type`` of an option and whether it is a list (``int | None`` → int; ``list[str]``)."""
    annotation: Any = info.field.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    is_list = typing.get_origin(annotation) is list
    if is_list:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation not in (int, float, str, bool, Path):
        raise TypeError(f"option {info.name}: no CLI flag type for {annotation!r}")
    return annotation, is_list
