"""The option mechanism itself: strict types, choices from a table, family-only options, field renaming."""

from __future__ import annotations

import pytest

from loramill.engine.options import Spec, WireCap, option, options_of, rename_field
from loramill.errors import InvalidInput

TABLE = {"fast": object(), "slow": object()}


class Toy(Spec):
    name: str = option(help="a required name")
    speed: str = option("fast", choices=TABLE, help="from TABLE")
    family: str | None = option(None, help="model family")
    boost: float = option(0.0, ge=0, le=1, families=("sd15", "sdxl"), why="flow matching has no use for it",
                          wire="boost", wire_cap=WireCap(le=0.5, reason="a test cap"), help="family-only")


def test_spec_takes_leading_fields_by_position_and_choices_case_insensitively() -> None:
    toy = Toy("a", "SLOW")

    assert (toy.name, toy.speed) == ("a", "slow")


@pytest.mark.parametrize(("values", "field", "words"), [
    ({"speed": "medium"}, "speed", "choose one of: 'fast', 'slow'"),
    ({"boost": "0.5"}, "boost", "must be a number, not a string"),
    ({"boost": True}, "boost", "must be a number"),
    ({"boost": 2.0}, "boost", "must be at most 1"),
    ({"boost": float("nan")}, "boost", "finite"),
    ({"colour": "red"}, "colour", "not an option"),
])
def test_spec_refuses_bad_value_naming_field_id(values: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        Toy(name="a", **values)

    assert caught.value.field == field and caught.value.message.startswith(f"{field}: ") and words in caught.value.message


def test_family_only_option_is_refused_on_another_family_once_known() -> None:
    assert Toy(name="a", boost=0.1, family="sdxl").boost == 0.1
    toy = Toy(name="a", boost=0.1)  # family not known yet: accepted, checked when it is

    with pytest.raises(InvalidInput, match=r"^boost: applies to sd15, sdxl only, not flux \(flow matching"):
        toy.check_family("flux")
    with pytest.raises(InvalidInput, match="leave it at 0.0"):
        Toy(name="a", boost=0.1, family="flux")
    Toy(name="a", family="flux").check_family("flux")  # the default is fine everywhere


def test_rename_field_puts_the_entry_name_in_front() -> None:
    error = InvalidInput("boost: must be at most 1, not 2", field="boost")

    renamed = rename_field(error, {"boost": "--boost"}.get)

    assert (renamed.field, renamed.message) == ("--boost", "--boost: must be at most 1, not 2")
    assert rename_field(InvalidInput("x", field="other"), {}.get).message == "x"


def test_options_of_reads_back_every_declaration() -> None:
    infos = options_of(Toy)

    assert list(infos) == ["name", "speed", "family", "boost"]
    assert infos["name"].required and infos["speed"].choices == ("fast", "slow")
    assert infos["boost"].wire_cap == WireCap(le=0.5, reason="a test cap") and infos["boost"].flag == "--boost"
