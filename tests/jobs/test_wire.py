"""Every option of every job kind, walked through every entry: CLI, TOML, queue, API.

Each option is declared once, in its job kind's spec (``TrainConfig``, ``GenerateRequest``). This walks each
declared limit and choice through each entry and checks that the entry refuses a value past it with a message
naming the option in that entry's own words, holds no default of its own, and that no layer declares an option
the spec does not (the derived field sets equal the spec's).
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types as at
import pytest

from loramill.cli import main
from loramill.engine.generation.request import GenerateRequest
from loramill.engine.options import OptionInfo, Spec, options_of
from loramill.engine.training.config import TrainConfig
from loramill.errors import InvalidInput
from loramill.gateway.api.routes import trainings
from loramill.gateway.api.schemas import GenerationCreate, TrainingCreate, TrainingForm
from loramill.jobs.contracts import GenerationJob, TrainingConfig, parse_job
from loramill.jobs.handlers.train import train_config, worker_defaults
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.wire import snake, wire_options, wire_type
from tests.gateway.api.conftest import Api, make_api

TRAIN_REQUIRED = {"model": "m", "images": "/nonexistent", "trigger": "sks", "out": "o.safetensors"}
# The fields a layer adds that are no engine option: who and which job, the worker's model by name, LoRAs by
# registry id (the engine takes files), queue priority.
SERVICE_ONLY = {TrainConfig: {"baseModel"}, GenerateRequest: {"taskId", "userId", "baseModel", "loras", "priority"}}
# The command line's own flags: the model, files, output, and the generator's serving settings.
CLI_OWN = {TrainConfig: {"config", "processes", "quiet"},
           GenerateRequest: {"model", "family", "lora", "out", "quiet", "precision", "openvino"}}


# ---- the cases: one per (option, limit or choice), each with a value past it ---------------------------------


def _bounds(info: OptionInfo, *, wire: bool) -> dict[str, float]:
    """The option's limits as the engine declares them, narrowed by its wire cap for the wire entries."""
    found = {}
    for m in info.field.metadata:
        for cls, key in ((at.Ge, "ge"), (at.Gt, "gt"), (at.Le, "le"), (at.Lt, "lt")):
            if isinstance(m, cls):
                found[key] = getattr(m, key)
    if wire and info.wire_cap is not None:
        cap = info.wire_cap.constraints()
        if {"le", "lt"} & set(cap):
            found = {k: v for k, v in found.items() if k not in ("le", "lt")}
        if {"ge", "gt"} & set(cap):
            found = {k: v for k, v in found.items() if k not in ("ge", "gt")}
        found |= {k: v for k, v in cap.items() if k in ("ge", "gt", "le", "lt")}
    return found


def _past(key: str, bound: float, integer: bool) -> float:
    step = 1 if integer else max(abs(bound) * 1e-3, 1e-3)
    return {"ge": bound - step, "gt": bound, "le": bound + step, "lt": bound}[key]


def _is_int(info: OptionInfo) -> bool:
    return int in (info.field.annotation, *typing.get_args(info.field.annotation))


def _cases(spec: type[Spec], *, wire: bool) -> list[tuple[str, Any]]:
    cases: list[tuple[str, Any]] = []
    for name, info in options_of(spec).items():
        if wire and not info.wire:
            continue
        for key, bound in _bounds(info, wire=wire).items():
            cases.append((name, _past(key, bound, _is_int(info))))
        if info.choices:
            cases.append((name, "nonesuch"))
    return cases


def _ids(cases: list[tuple[str, Any]]) -> list[str]:
    return [f"{name}={value!r}" for name, value in cases]


ENGINE_CASES = [(spec, *case) for spec in (TrainConfig, GenerateRequest) for case in _cases(spec, wire=False)]
WIRE_CASES = [(spec, *case) for spec in (TrainConfig, GenerateRequest) for case in _cases(spec, wire=True)]


def test_walk_covers_every_limited_option() -> None:
    limited = {n for s in (TrainConfig, GenerateRequest) for n, i in options_of(s).items()
               if i.choices or _bounds(i, wire=False)}
    assert {name for _, name, _ in ENGINE_CASES} == limited
    assert {"lr", "rank", "resolution", "num_images", "steps", "optimizer", "captioner"} <= limited


# ---- CLI and TOML: the engine's limits, named as flags and as keys of the file ------------------------------


@pytest.mark.parametrize(("spec", "name", "value"), ENGINE_CASES, ids=_ids([c[1:] for c in ENGINE_CASES]))
def test_cli_refuses_value_past_limit_naming_flag(spec: type[Spec], name: str, value: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    info = options_of(spec)[name]
    if spec is TrainConfig:
        argv = ["train", *[a for k, v in TRAIN_REQUIRED.items() if k != name for a in (f"--{k}", v)]]
    else:
        argv = ["generate", "--model", "/nonexistent", *(["--prompt", "a cat"] if name != "prompt" else [])]
    try:
        code = main([*argv, info.flag, str(value)])
    except SystemExit as exc:  # argparse refused it (a choice or a type): it names the flag too
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code != 0
    assert f"{info.flag}: " in err or f"argument {info.flag}" in err, err


@pytest.mark.parametrize(("name", "value"), _cases(TrainConfig, wire=False), ids=_ids(_cases(TrainConfig, wire=False)))
def test_toml_refuses_value_past_limit_naming_key(name: str, value: Any, tmp_path: Path) -> None:
    path = tmp_path / "train.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in (TRAIN_REQUIRED | {name: value}).items()))

    with pytest.raises(InvalidInput) as caught:
        TrainConfig.from_sources(str(path), {})

    assert caught.value.message.startswith(f"{name} in {path}: ")


# ---- queue and API: the wire limits (the engine's, narrowed by a declared cap), in camelCase ------------------


def _job(spec: type[Spec], wire: str, value: Any) -> dict[str, Any]:
    if spec is TrainConfig:
        return {"taskId": "t", "userId": "u", "images": ["users/u/images/a.jpg"], "configurationParams": {wire: value}}
    return {"taskId": "t", "userId": "u", "prompt": "a cat", wire: value}


@pytest.mark.parametrize(("spec", "name", "value"), WIRE_CASES, ids=_ids([c[1:] for c in WIRE_CASES]))
def test_queue_refuses_value_past_limit_naming_field(spec: type[Spec], name: str, value: Any) -> None:
    wire = options_of(spec)[name].wire
    field = f"configurationParams.{wire}" if spec is TrainConfig else str(wire)

    with pytest.raises(InvalidInput) as caught:
        parse_job(json.dumps(_job(spec, str(wire), value)))

    assert caught.value.field == field and caught.value.message.startswith(f"{field}: ")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    made = make_api(tmp_path_factory.mktemp("api"))
    with made.client:
        yield made
    made.broker.close()
    made.store.close()


@pytest.mark.parametrize(("spec", "name", "value"), WIRE_CASES, ids=_ids([c[1:] for c in WIRE_CASES]))
def test_api_refuses_value_past_limit_naming_field(api: Api, spec: type[Spec], name: str, value: Any) -> None:
    wire = str(options_of(spec)[name].wire)
    if spec is TrainConfig:  # the upload form: every option is a form field of its own
        response = api.client.post("/v1/trainings", data={"imageKeys": "users/alice/images/a.jpg", wire: str(value)},
                                   headers=api.auth("alice"))
    else:
        response = api.client.post("/v1/generations", json={"prompt": "a cat", wire: value}, headers=api.auth("alice"))

    error = response.json()["error"]
    assert response.status_code == 422 and error["field"] == wire and error["message"].startswith(f"{wire}: ")
    assert api.store.count_queued() == 0


def test_wire_caps_are_wire_only() -> None:
    """A value past a wire cap but inside the engine's limits is refused on the queue and accepted by the engine."""
    capped = [(s, i) for s in (TrainConfig, GenerateRequest) for i in options_of(s).values() if i.wire_cap]
    assert capped, "no option declares a wire cap"
    for spec, info in capped:
        assert info.wire_cap is not None and info.wire_cap.reason
        cap = info.wire_cap.constraints()
        if "le" not in cap:
            continue
        value = int(cap["le"]) + 8 if _is_int(info) else cap["le"] * 1.5
        with pytest.raises(InvalidInput):
            parse_job(json.dumps(_job(spec, str(info.wire), value)))
        required = TRAIN_REQUIRED if spec is TrainConfig else {"prompt": "a cat"}
        assert getattr(spec(**required, **{info.name: value}), info.name) == value


# ---- no layer declares an option of its own, and none holds a default of its own ------------------------------


def test_queue_fields_are_the_spec_wire_options() -> None:
    for spec, model in ((TrainConfig, TrainingConfig), (GenerateRequest, GenerationJob)):
        aliases = {f.alias or n for n, f in model.model_fields.items()}
        assert aliases == set(wire_options(spec)) | SERVICE_ONLY[spec]
        for wire, info in wire_options(spec).items():
            field = model.model_fields[snake(wire)]
            if info.required and (spec, info.name) != (TrainConfig, "trigger"):  # the worker's default trigger
                assert field.is_required(), f"{wire} is required by the spec but optional on the wire"
            else:
                assert field.default is None, f"{wire} holds a default of its own"
            assert _limits(field.annotation) == _limits(wire_type(info)), f"{wire} declares limits of its own"


def _shape(model: Any) -> dict[str, tuple[Any, ...]]:
    """Each field's wire name, default and limits: what a re-declaration would change."""
    return {n: (f.alias, f.default, _limits(f.annotation)) for n, f in model.model_fields.items()}


def _limits(annotation: Any) -> list[Any]:
    """The constraints (``Ge``, ``Le``, ``MultipleOf``, …) inside an ``Annotated`` type, optional or not."""
    args = typing.get_args(annotation)
    inner = next((a for a in args if a is not type(None)), annotation) if type(None) in args else annotation
    return [m for m in getattr(inner, "__metadata__", ()) if isinstance(m, at.BaseMetadata)]


@pytest.mark.parametrize("prompt", [None, ""])
def test_queue_refuses_generation_without_prompt(prompt: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_job(json.dumps({"taskId": "t", "userId": "u", "prompt": prompt}))

    assert caught.value.field == "prompt"


def test_api_schemas_are_the_queue_contract() -> None:
    assert TrainingCreate.model_fields["configuration_params"].annotation is TrainingConfig
    assert _shape(TrainingForm) == _shape(TrainingConfig)
    job = {n: f for n, f in _shape(GenerationJob).items() if n not in ("task_id", "user_id")}
    assert _shape(GenerationCreate) == job
    # the upload form declares no option itself: its option fields come from TrainingForm only
    own = {getattr(p.default, "alias", None) or n for n, p in inspect.signature(trainings.create_training).parameters.items()}
    assert not own & set(wire_options(TrainConfig))


def test_cli_flags_are_the_spec_options() -> None:
    from loramill.cli import build_parser

    for spec, command in ((TrainConfig, "train"), (GenerateRequest, "generate")):
        parser = build_parser(only=command)
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[union-attr]
        dests = {a.dest for a in sub._actions if a.dest != "help"}
        expected = set(options_of(spec)) - ({"loras"} if spec is GenerateRequest else set())
        assert dests - CLI_OWN[spec] == expected
        assert all(a.default is None for a in sub._actions if a.dest in expected), "a flag holds its own default"


def test_worker_fills_only_its_declared_defaults(tmp_path: Path) -> None:
    """A job that sets nothing trains with the spec's defaults, except the worker's declared LORAMILL_* ones."""
    job = parse_job(json.dumps({"taskId": "t", "userId": "u", "images": ["users/u/images/a.jpg"]}))
    settings = WorkerSettings(work_dir=tmp_path)
    config = train_config(job, "m", "sd15", settings, tmp_path / "d", tmp_path / "r", tmp_path / "o")  # type: ignore[arg-type]
    set_by_worker = {"model", "images", "out", "work_dir", "family", "keep_checkpoints", "epochs", "max_steps",
                     "alpha", *worker_defaults(settings, "sd15")}
    for name, info in options_of(TrainConfig).items():
        if name not in set_by_worker:
            assert getattr(config, name) == info.default, name


def test_bot_settings_for_job_options_take_the_wire_limits() -> None:
    from loramill.engine.generation.request import LoraRef
    from loramill.gateway.bot.settings import BotSettings

    pairs = {"steps": (GenerateRequest, "steps"), "width": (GenerateRequest, "width"),
             "height": (GenerateRequest, "height"), "train_epochs": (TrainConfig, "epochs"),
             "train_max_steps": (TrainConfig, "max_steps"), "lora_weight": (LoraRef, "weight")}
    for setting, (spec, name) in pairs.items():
        field = BotSettings.model_fields[setting]  # a required field's limits move into its metadata
        limits = _limits(field.annotation) + [m for m in field.metadata if isinstance(m, at.BaseMetadata)]
        assert limits == _limits(wire_type(options_of(spec)[name])), setting
