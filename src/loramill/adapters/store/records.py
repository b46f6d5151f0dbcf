"""Rows → the domain's frozen records (``loramill.domain.records``)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

from sqlalchemy.engine import Row

from loramill.domain.status import JobStatus

T = TypeVar("T")


def to_record(cls: type[T], row: Row[Any]) -> T:
    """Build ``cls`` from the row's columns of the same names (extra columns are ignored)."""
    mapping = row._mapping
    values = {name: mapping[name] for name in _field_names(cls)}  # type: ignore[arg-type]
    if "status" in values:
        values["status"] = JobStatus(values["status"])
    return cls(**values)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    # dataclasses.fields() builds its tuple on every call; a status poll reads a record every few ms.
    return tuple(f.name for f in dataclasses.fields(cls))
